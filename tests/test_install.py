"""The distribution name, the version, and a console script that starts fast."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import trainlens

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    # the trainlens under test, wherever the test runs from
    env = {**os.environ, "PYTHONPATH": str(Path(trainlens.__file__).parents[1])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_version_and_help_do_not_import_torch():
    result = _python(
        """
        import contextlib, io, sys
        import trainlens._cli
        for argv in (["--version"], ["--help"], ["report", "--help"]):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    trainlens._cli.main(argv)
                except SystemExit as exit:
                    assert exit.code == 0, (argv, exit.code)
            assert out.getvalue().strip(), argv
        heavy = sorted({"torch", "pandas", "matplotlib"} & set(sys.modules))
        assert not heavy, f"--version/--help imported {heavy}"
        """
    )
    assert result.returncode == 0, result.stderr


def test_public_names_load_on_first_use():
    result = _python(
        """
        import sys
        import trainlens
        assert "torch" not in sys.modules
        assert set(trainlens.__all__) <= set(dir(trainlens))
        assert callable(trainlens.watch) and trainlens.Lens.__name__ == "Lens"
        assert "torch" in sys.modules
        from trainlens import *  # every name of __all__ resolves
        try:
            trainlens.no_such_name
        except AttributeError as err:
            assert "no_such_name" in str(err)
        else:
            raise AssertionError("unknown attribute resolved")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "report" in trainlens.__all__


def test_distribution_name_is_ours_in_pyproject_and_readme():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert name == trainlens.DISTRIBUTION == "trainlens-debugger"
    readme = (ROOT / "README.md").read_text()
    installs = [line for line in readme.splitlines() if line.lstrip().startswith("pip install")]
    assert installs, "the README says how to install"
    for line in installs:  # this project (by name or from the checkout), never `trainlens`
        target = line.split()[2].strip('"')
        assert target.startswith((".", "trainlens-debugger")), line
    assert "trainlens-debugger" in readme
