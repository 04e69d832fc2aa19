"""Loads tests/factories/recipes/ while recipes/flat_loss.toml lacks `bad_initial_loss`.

Registered in-process with `plugins=[...]`, and for the console script through a
`trainlens` entry point in a throwaway dist-info folder put on PYTHONPATH.
"""

from __future__ import annotations

from pathlib import Path

import trainlens
from trainlens._catalogue import load_catalogue
from trainlens._resources import data_dir

HERE = Path(__file__).resolve().parent


def needed() -> bool:
    cat = load_catalogue([data_dir("recipes")])
    return "flat_loss" not in cat or "bad_initial_loss" not in cat["flat_loss"].causes


@trainlens.hookimpl
def trainlens_catalogue_dirs():
    return [HERE / "recipes"] if needed() else []


def install_entry_point(folder: Path) -> dict[str, str]:
    """A folder that, on PYTHONPATH, makes the console script load this plugin."""
    dist = folder / "trainlens_test_recipes-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: trainlens-test-recipes\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text("[trainlens]\ntest_recipes = recipe_plugin\n")
    return {"PYTHONPATH": f"{folder}:{HERE}"}
