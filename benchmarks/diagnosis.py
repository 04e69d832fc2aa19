"""How often the drill is right on the program collection (issue 18, "Show it").

    python benchmarks/diagnosis.py            # every program in tests/programs/
    python benchmarks/diagnosis.py --only gpt # programs whose file name contains "gpt"
    python benchmarks/diagnosis.py --json out.json

Each file of `tests/programs/` is a training program with a planted bug (its `EXPECT`
says the symptom, the first cause and the module to blame) or a healthy one (`EXPECT =
None`, or `{"healthy": True, "allow": [...]}`). Every program runs under `trainlens.watch`
in a fresh run directory; its drill.json is read back and judged:

- symptom right: a finding of the expected symptom;
- cause first / top three: the expected cause ranks first / among the first three there;
- module named: the finding names the expected module (programs that expect one);
- healthy clean: a healthy program's drill has no error finding, and no finding at all
  beyond the symptoms it allows;
- false errors: error findings whose symptom or first cause is not the expected one
  (every error finding of a healthy program). A confident wrong answer, the worst kind.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "tests" / "programs"


def program_files(folder: Path = PROGRAMS) -> list[Path]:
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def load_program(path: Path) -> ModuleType:
    folder = str(path.parent)
    if folder not in sys.path:  # as for a script run from there: `_sibling` is importable
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(f"trainlens_program_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Verdict:
    program: str
    expected: str
    drill_says: str
    healthy: bool
    symptom_right: bool | None = None
    cause_first: bool | None = None
    cause_top3: bool | None = None
    module_named: bool | None = None
    clean: bool | None = None
    false_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    crashed: str | None = None

    @property
    def right(self) -> bool:
        if self.crashed:
            return False
        if self.healthy:
            return bool(self.clean)
        return bool(self.symptom_right and self.cause_first and self.module_named is not False)


def judge(name: str, expect: dict[str, Any] | None, drill: dict[str, Any]) -> Verdict:
    """Score one drill against what the program planted."""
    findings = drill.get("findings", [])
    says = (
        "; ".join(
            f"{f['severity']} {f['symptom']}/{'>'.join(c['id'] for c in f['likely_causes'][:3])}"
            + (f" @{f['module']}" if f.get("module") else "")
            for f in findings
        )
        or "healthy"
    )
    if expect is None or expect.get("healthy"):
        allow = set((expect or {}).get("allow", []))
        errors = [f for f in findings if f["severity"] == "error"]
        extra = [f for f in findings if f["symptom"] not in allow]
        return Verdict(
            name,
            "healthy" + (f" (allows {', '.join(sorted(allow))})" if allow else ""),
            says,
            healthy=True,
            clean=not errors and not extra,
            false_errors=[f"{f['symptom']}/{f['likely_cause']}" for f in errors],
        )
    symptom, cause, module = expect["symptom"], expect["cause"], expect.get("module")
    match = next((f for f in findings if f["symptom"] == symptom), None)
    ids = [c["id"] for c in match["likely_causes"]] if match else []
    named = None
    if module is not None:
        named = match is not None and module in (
            match.get("module"),
            *(c.get("module") for c in match["likely_causes"][:1]),
        )
    false = [
        f"{f['symptom']}/{f['likely_cause']}"
        for f in findings
        if f["severity"] == "error" and (f["symptom"] != symptom or f["likely_cause"] != cause)
    ]
    return Verdict(
        name,
        f"{symptom}/{cause}" + (f" @{module}" if module else ""),
        says,
        healthy=False,
        symptom_right=match is not None,
        cause_first=bool(ids) and ids[0] == cause,
        cause_top3=cause in ids[:3],
        module_named=named,
        false_errors=false,
    )


def run_program(path: Path, run_dir: Path) -> Verdict:
    module = load_program(path)
    expect = getattr(module, "EXPECT", None)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.main(run_dir)
        drill = json.loads((run_dir / "drill.json").read_text())
    except Exception as exc:  # a program that crashes is a wrong answer, not the end
        v = judge(path.stem, expect, {"findings": []})
        v.crashed = f"{type(exc).__name__}: {exc}"[:200]
        v.drill_says = f"CRASHED {v.crashed}"
        v.clean = False if v.healthy else v.clean
        return v
    v = judge(path.stem, expect, drill)
    v.seconds = time.perf_counter() - t0
    return v


def totals(verdicts: list[Verdict]) -> dict[str, str]:
    bugs = [v for v in verdicts if not v.healthy]
    healthy = [v for v in verdicts if v.healthy]
    with_module = [v for v in bugs if v.module_named is not None]

    def count(vs: list[Verdict], attr: str) -> str:
        return f"{sum(bool(getattr(v, attr)) for v in vs)}/{len(vs)}"

    return {
        "symptom right": count(bugs, "symptom_right"),
        "cause first": count(bugs, "cause_first"),
        "cause in top 3": count(bugs, "cause_top3"),
        "module named": count(with_module, "module_named"),
        "healthy clean": count(healthy, "clean"),
        "false errors": str(sum(len(v.false_errors) for v in verdicts)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="substrings of program names")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    files = program_files()
    if args.only:
        files = [p for p in files if any(s in p.stem for s in args.only)]
    if not files:
        print(f"no programs in {PROGRAMS}", file=sys.stderr)
        return 2
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            verdicts.append(run_program(path, Path(tmp) / path.stem))
    _print(verdicts)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"programs": [asdict(v) for v in verdicts], "totals": totals(verdicts)}, indent=2
            )
        )
    return 0


def _print(verdicts: list[Verdict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="trainlens diagnosis on tests/programs/")
    for col in ("program", "expected", "the drill says", "right", "s"):
        table.add_column(col, overflow="fold")
    for v in verdicts:
        mark = "yes" if v.right else "NO"
        if v.false_errors:
            mark += f" ({len(v.false_errors)} false error)"
        table.add_row(v.program, v.expected, v.drill_says, mark, f"{v.seconds:.1f}")
    console = Console(width=180)
    console.print(table)
    for name, value in totals(verdicts).items():
        console.print(f"{name:>16}: {value}")


if __name__ == "__main__":
    sys.exit(main())
