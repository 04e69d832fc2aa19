"""The drill: findings and run facts as `drill.json` (machine) and `drill.md` (human)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._errors import RunDirError
from ._finding import Finding, finding_markdown
from ._io import atomic_write_text

SCHEMA_VERSION = 1


def run_status(failed: bool, findings: Sequence[Any]) -> str:
    """`failed` on an error or a crash, `warning` when findings are only warnings."""
    if failed:
        return "failed"
    return "warning" if findings else "healthy"


def no_findings_text(raised: bool) -> str:
    """What a drill without findings says: nothing wrong, or (the run raised) nothing known
    that explains the exception."""
    if raised:
        return (
            "No finding explains this exception: the records match none of the failure "
            "patterns trainlens knows. Read the traceback from the bottom up; the last frame "
            "in your own code is the line to print shapes and values around first."
        )
    return (
        "No problems found: the recorded shapes, gradients, updates and losses match "
        "none of the failure patterns trainlens knows."
    )


def build_drill(
    run_id: str,
    findings: Sequence[Finding],
    meta: dict[str, Any],
) -> dict[str, Any]:
    exc = meta.get("exception")
    ended = meta.get("ended")
    if isinstance(ended, dict) and "how" in ended:
        crashed = ended["how"] == "raised" or (
            ended["how"] == "exited" and ended.get("exit_code") not in (0, None)
        )
    else:  # a run written before `ended` existed
        crashed = exc is not None and exc.get("type") != "KeyboardInterrupt"
    failed = crashed or any(f.severity == "error" for f in findings)
    drill = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": run_status(failed, findings),
        "steps": int(meta.get("steps", 0)),
        "findings": [f.to_dict() for f in findings],
        "exception": None
        if exc is None
        else {k: exc.get(k) for k in ("type", "message", "phase", "module", "step")},
        "duration_s": meta.get("duration_s"),
        "created": meta.get("started_at"),
        "trainlens_version": meta.get("trainlens_version"),
    }
    if isinstance(ended, dict):
        drill["ended"] = ended
    if meta.get("probes_stopped"):  # what trainlens stopped recording, and why
        drill["probes_stopped"] = meta["probes_stopped"]
    return drill


#: how a run ended (`drill["ended"]["how"]`): the words `drill.md` and the report use
ENDINGS = {
    "completed": "completed: the block ended normally",
    "raised": "raised an exception",
    "interrupted": "interrupted (KeyboardInterrupt)",
    "exited": "stopped early with sys.exit",
    "terminated": "terminated by a signal",
    "rebuilt": "rebuilt from the records streamed by a process that died before its block "
    "ended (killed, os._exit, a crash)",
}


def ended_text(ended: Any) -> str | None:
    """One line on how the run ended, or None when the drill does not say."""
    if not isinstance(ended, dict) or ended.get("how") not in ENDINGS:
        return None
    how = ended["how"]
    text = ENDINGS[how]
    if how == "terminated" and ended.get("signal"):
        text = f"terminated by {ended['signal']}"
    if how == "exited":
        text += f" (exit code {ended.get('exit_code')!r})"
    if isinstance(ended.get("step"), int):
        text += f" at step {ended['step']}"
    return text


def read_drill(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "drill.json"
    if not Path(run_dir).is_dir():
        raise RunDirError(f"{run_dir} does not exist or is not a folder; give a run directory")
    try:
        drill = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if (Path(run_dir) / "stream" / "run.json").is_file():
            raise RunDirError(
                f"{run_dir} has no drill.json: its process ended before the watch block did "
                f"(killed?); `trainlens diagnose {run_dir}` builds the drill from the records "
                "it streamed"
            ) from None
        raise RunDirError(
            f"{run_dir} has no drill.json: not a finished trainlens run directory"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} is unreadable or corrupt ({exc}); rerun the training") from None
    if not isinstance(drill, dict) or not {"run_id", "status", "findings"} <= drill.keys():
        raise RunDirError(f"{path} is not a trainlens drill (missing run_id/status/findings)")
    version = drill.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RunDirError(
            f"{path} uses drill schema version {version}, newer than this trainlens "
            f"understands ({SCHEMA_VERSION}); upgrade trainlens"
        )
    problem = _structure_problem(drill)
    if problem:
        raise RunDirError(f"{path} is not a valid trainlens drill ({problem}); rerun the training")
    return drill


#: keys every finding of a drill carries (drill.schema.json), so readers can rely on them
_FINDING_KEYS = (
    "symptom",
    "severity",
    "first_check",
    "likely_causes",
    "likely_cause",
    "fix_attempt",
)


def _structure_problem(drill: dict[str, Any]) -> str | None:
    """What makes a parsed drill unusable for report/compare, or None."""
    if not isinstance(drill["run_id"], str) or not drill["run_id"]:
        return "run_id is not a non-empty string"
    if drill["status"] not in ("healthy", "warning", "failed"):
        return f"status is {drill['status']!r}, not healthy/warning/failed"
    if not isinstance(drill.get("steps", 0), int):
        return "steps is not an integer"
    if not isinstance(drill["findings"], list):
        return "findings is not a list"
    for i, f in enumerate(drill["findings"]):
        if not isinstance(f, dict):
            return f"finding {i} is not an object"
        missing = [k for k in _FINDING_KEYS if k not in f]
        if missing:
            return f"finding {i} lacks {', '.join(missing)}"
        causes = f["likely_causes"]
        if not isinstance(causes, list) or not causes:
            return f"finding {i} has no likely_causes"
        for c in causes:
            if not isinstance(c, dict) or not {"id", "confidence", "evidence"} <= c.keys():
                return f"a cause of finding {i} lacks id/confidence/evidence"
            if not isinstance(c["confidence"], (int, float)):
                return f"a cause of finding {i} has a non-numeric confidence"
        f.setdefault("module", None)
        f.setdefault("step", None)
        f.setdefault("result_after_fix", None)
        f.setdefault("evidence", {})
    return None


def write_drill(run_dir: Path, drill: dict[str, Any], sections: Sequence[tuple[str, str]]) -> None:
    atomic_write_text(run_dir / "drill.json", json.dumps(drill, indent=2) + "\n")
    atomic_write_text(run_dir / "drill.md", render_markdown(drill, sections))


def render_markdown(drill: dict[str, Any], sections: Sequence[tuple[str, str]] = ()) -> str:
    """drill.md: plain CommonMark, readable on any viewer and in a text editor."""
    lines = [
        f"# Failure drill — run `{drill['run_id']}`",
        "",
        f"**Status:** {drill['status']} · **Steps:** {drill['steps']}"
        + (f" · **Duration:** {drill['duration_s']:.1f} s" if drill.get("duration_s") else ""),
        "",
    ]
    how = ended_text(drill.get("ended"))
    if how and drill["ended"].get("how") != "completed":
        lines += [f"**Ended:** {how}.", ""]
    exc = drill.get("exception")
    if exc:
        where = f" in `{exc['module'] or '(model)'}`" if exc.get("module") is not None else ""
        lines += [
            f"The run stopped with `{exc['type']}`{where} during {exc.get('phase') or 'the run'}:",
            "",
            "```",
            str(exc.get("message", ""))[:2000],
            "```",
            "",
        ]
    findings = drill["findings"]
    lines += ["## Findings", ""]
    if not findings:
        lines += [no_findings_text(bool(exc)), ""]
    for i, f in enumerate(findings, 1):
        lines += finding_markdown(i, drill["run_id"], f)
    for title, body in sections:
        lines += [f"## {title}", "", body.rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"
