"""`drill.html`: the whole drill on one self-contained page, pictures embedded.

A learner attaches it to a question or hands it in: no other file needed, no script, no
network. It is drill.md rendered (markdown-it, the CommonMark parser rich already uses)
with every picture of the run directory inlined as a `data:` URI. Raw HTML in the drill's
strings (module names, exception messages come from the user's program) is escaped, never
passed through.

The same rendering, without the page around it, is what a notebook shows for a `Lens`,
a `Finding`, a loaded `Run` and `trainlens.report(run_dir)`.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._hookspecs import hookimpl
from .._io import atomic_write_text
from .._records import Records

FILENAME = "drill.html"

#: `![alt](name.png)` links to a picture beside drill.md
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([A-Za-z0-9_.\-]+\.(?:png|jpe?g|svg|gif))\)")
_MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif"}
_MIME["svg"] = "image/svg+xml"

_STATUS_COLOUR = {"healthy": "#1a7f37", "warning": "#9a6700", "failed": "#cf222e"}

_CSS = """
.trainlens-drill { font-family: system-ui, -apple-system, "Segoe UI", sans-serif;
  line-height: 1.45; max-width: 60rem; color: #1f2328; }
.trainlens-drill code { font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 0.9em; background: #f6f8fa; padding: 0 0.2em; border-radius: 3px; }
.trainlens-drill pre { background: #f6f8fa; padding: 0.6em; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.trainlens-drill table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
.trainlens-drill th, .trainlens-drill td { border: 1px solid #d0d7de; padding: 2px 6px;
  text-align: left; vertical-align: top; }
.trainlens-drill img { max-width: 100%; height: auto; }
.trainlens-drill .status { font-weight: bold; padding: 0 0.4em; border-radius: 4px;
  color: white; }
"""


@hookimpl(trylast=True)
def trainlens_artifacts(run_dir: Path, drill: dict[str, Any], records: Records) -> list[str]:
    """Written after the pictures (`trylast`, registered before the run dir's README)."""
    from .._plugins import get_plugin_manager, report_sections

    run_dir = Path(run_dir)
    sections = report_sections(get_plugin_manager(), drill, records)
    atomic_write_text(run_dir / FILENAME, drill_html(drill, sections, run_dir))
    return [FILENAME]


def drill_html(
    drill: dict[str, Any],
    sections: Sequence[tuple[str, str]],
    run_dir: Path | None,
    *,
    standalone: bool = True,
) -> str:
    """The drill as HTML: a whole page (`standalone`) or a fragment for a notebook."""
    from .._drill import render_markdown

    fragment = _fragment(inline_images(render_markdown(drill, sections), run_dir), drill)
    status = str(drill.get("status"))
    if not standalone:
        return fragment
    title = html.escape(f"trainlens drill: run {drill.get('run_id')} ({status})")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n</head>\n<body>\n{fragment}</body>\n</html>\n"
    )


def inline_images(markdown: str, run_dir: Path | None) -> str:
    """Replace links to pictures beside drill.md by `data:` URIs of their bytes; a picture
    that is not there keeps its link (its alt text says what it showed)."""
    if run_dir is None:
        return markdown

    def embed(m: re.Match[str]) -> str:
        path = Path(run_dir) / m.group(2)
        try:
            data = path.read_bytes()
        except OSError:
            return m.group(0)
        mime = _MIME[path.suffix.lower().lstrip(".")]
        return f"![{m.group(1)}](data:{mime};base64,{base64.b64encode(data).decode('ascii')})"

    return _IMAGE.sub(embed, markdown)


def inline_markdown(run_dir: Path) -> str:
    """drill.md of a run dir with its pictures inlined: shows whole where it is displayed."""
    text = (Path(run_dir) / "drill.md").read_text(encoding="utf-8")
    return inline_images(text, Path(run_dir))


def run_dir_html(run_dir: Path) -> str:
    """A finished run directory's drill.md, rendered with its pictures inlined."""
    from .._drill import read_drill

    drill = read_drill(Path(run_dir))
    return _fragment(inline_markdown(Path(run_dir)), drill)


def finding_html(finding: dict[str, Any], run_id: str | None = None) -> str:
    """One finding (its six drill fields and ranked causes) as an HTML fragment."""
    from .._finding import finding_markdown

    lines = finding_markdown(1, run_id or "-", finding)
    lines[0] = lines[0].replace("### 1. ", "### ", 1)
    return _fragment("\n".join(lines), None)


def _fragment(markdown: str, drill: dict[str, Any] | None) -> str:
    body = _markdown_to_html(markdown)
    if drill is not None:
        # the status word as a coloured badge, so `warning` reads as a warning at a glance
        status = html.escape(str(drill.get("status")))
        colour = _STATUS_COLOUR.get(status, "#57606a")
        badge = f'<span class="status" style="background:{colour}">{status}</span>'
        body = body.replace(
            f"<strong>Status:</strong> {status}", f"<strong>Status:</strong> {badge}", 1
        )
    return f'<div class="trainlens-drill">\n<style>{_CSS}</style>\n{body}</div>\n'


def _markdown_to_html(markdown: str) -> str:
    from markdown_it import MarkdownIt

    # "html": False escapes raw HTML: the drill quotes strings from the user's program
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.validateLink = _allow_data_images  # type: ignore[method-assign]
    return md.render(markdown)


def _allow_data_images(url: str) -> bool:
    """markdown-it refuses `data:` links by default; allow only our inlined images."""
    lowered = url.strip().lower()
    if lowered.startswith("data:"):
        return lowered.startswith(tuple(f"data:{m};base64," for m in _MIME.values()))
    return not lowered.startswith(("javascript:", "vbscript:", "file:"))
