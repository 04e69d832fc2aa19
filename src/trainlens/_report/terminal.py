"""`trainlens report`: the drill in the terminal, as rich renderables.

Each part knows how to render itself (`__rich_console__`); the CLI only prints them.
Everything fits 80 columns, and all text from the run goes in as `Text`, never markup,
so a `[32, 784]` in an evidence string is printed as it is. A run dir is untrusted input
(people send them to each other): every string from it passes `terminal_safe` (control
characters escaped, one field at most a few thousand characters) on its way in.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .._drill import no_findings_text
from .._finding import DRILL_FIELDS
from .._format import FIELD_CHARS, num, terminal_safe
from .._records import Records
from .._views import param_stats
from .curves import LossMarks, loss_marks
from .sections import shape_trace

#: rows of the shape trace and the per-layer table shown in the terminal (drill.md has all)
MAX_TERMINAL_ROWS = 30
#: findings, causes per finding and file names shown (a real drill has a handful of each)
MAX_FINDINGS, MAX_CAUSES, MAX_FILES = 20, 10, 60

#: The healthy update/param ratio is ~1e-3 (Karpathy, "A Recipe for Training Neural
#: Networks", and CS231n's "ratio of weights:updates"); two orders of magnitude either way
#: is what the per-layer table highlights.
RATIO_LOW, RATIO_HIGH = 1e-5, 1e-1

#: plugins whose report sections the terminal renders natively (tables, curve) instead of
#: printing their markdown
NATIVE_SECTION_PLUGINS = frozenset({"trainlens._report.sections", "trainlens._report.curves"})

_STATUS_STYLE = {"healthy": "bold green", "warning": "bold yellow", "failed": "bold red"}
_SEVERITY_STYLE = {"error": "bold red", "warning": "bold yellow"}


#: a name in a table cell (module, layer type, parameter): real ones are far shorter
NAME_CHARS = 300


def plain(value: Any, style: str = "", limit: int = FIELD_CHARS) -> Text:
    """Text from the run dir, made safe for the terminal."""
    return Text(terminal_safe(value, limit), style=style)


def inline(text: str, style: str = "") -> Text:
    """Run text with `code` spans styled (backticks kept, so plain text reads the same)."""
    out = Text(style=style)
    for i, part in enumerate(terminal_safe(text).split("`")):
        if i % 2:
            out.append(f"`{part}`", style="cyan")
        else:
            out.append(part)
    return out


def result_summary(result: Any) -> str | None:
    """`result_after_fix` as one line: a string as is, an object by its `summary`."""
    if result is None:
        return None
    if isinstance(result, dict):
        return str(result.get("summary") or json.dumps(result))
    return str(result)


class Header:
    """Run id, status, steps, duration and how the run ended."""

    def __init__(self, drill: dict[str, Any], run_dir: Path | None = None):
        self.drill = drill
        self.run_dir = run_dir

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        d = self.drill
        status = str(d.get("status"))
        line = Text.assemble(
            ("run ", "bold"),
            (terminal_safe(d["run_id"], 200), "bold"),
            "  ",
            (terminal_safe(status, 50), _STATUS_STYLE.get(status, "bold")),
            f"  {d.get('steps', 0)} steps",
        )
        if d.get("duration_s") is not None:
            line.append(f"  {float(d['duration_s']):.1f} s")
        n = len(d.get("findings") or [])
        line.append(f"  {n} finding{'s' if n != 1 else ''}")
        body = [line]
        if d.get("created"):
            body.append(plain(f"started {terminal_safe(d['created'], 200)}", style="dim"))
        exc = d.get("exception")
        if exc:
            where = f" in {exc.get('module') or '(model)'}" if exc.get("module") is not None else ""
            phase = f" during {exc['phase']}" if exc.get("phase") else ""
            step = f" at step {exc['step']}" if exc.get("step") is not None else ""
            msg = " ".join(str(exc.get("message", "")).split())
            if len(msg) > 300:
                msg = msg[:297] + "..."
            body.append(plain(f"stopped by {exc.get('type')}{where}{phase}{step}: {msg}"))
        title = "trainlens report" + (f" · {self.run_dir}" if self.run_dir else "")
        yield Panel(Group(*body), title=plain(title), title_align="left", box=box.ROUNDED)


class FindingPanel:
    """One finding: the six drill fields, then the ranked causes with their evidence."""

    def __init__(self, index: int, run_id: str, finding: dict[str, Any]):
        self.index = index
        self.run_id = run_id
        self.finding = finding

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        f = self.finding
        where = f" in {f['module'] or '(model)'}" if f.get("module") is not None else ""
        when = f" at step {f['step']}" if f.get("step") is not None else ""
        severity = str(f.get("severity"))
        title = Text.assemble(
            f"{self.index}. ",
            (terminal_safe(f["symptom"], 200), "bold"),
            " (",
            (terminal_safe(severity, 50), _SEVERITY_STYLE.get(severity, "")),
            terminal_safe(f"){where}{when}", 400),
        )
        fields = Table.grid(padding=(0, 1))
        fields.add_column(style="bold", no_wrap=True)
        fields.add_column(overflow="fold")
        result = result_summary(f.get("result_after_fix"))
        values = {
            "run_id": plain(self.run_id),
            "symptom": plain(f["symptom"]),
            "first_check": inline(f["first_check"]),
            "likely_cause": plain(f["likely_cause"], style="bold"),
            "fix_attempt": inline(f["fix_attempt"]),
            "result_after_fix": inline(result)
            if result
            else Text("not yet: rerun with the fix, then `trainlens compare`", style="dim"),
        }
        for key in DRILL_FIELDS:
            fields.add_row(key, values[key])
        causes = Table.grid(padding=(0, 1))
        causes.add_column(no_wrap=True)
        causes.add_column(overflow="fold")
        ranked = f.get("likely_causes") or []
        for n, c in enumerate(ranked[:MAX_CAUSES], 1):
            head = Text.assemble((terminal_safe(f"{n}. {c['id']}", 200), "bold" if n == 1 else ""))
            head.append(f" ({float(c['confidence']):.2f})", style="dim")
            causes.add_row(Text(""), head)
            causes.add_row(Text(""), inline(c.get("evidence", "")))
        if len(ranked) > MAX_CAUSES:
            more = f"… {len(ranked) - MAX_CAUSES} more causes in drill.json"
            causes.add_row(Text(""), Text(more, style="dim"))
        body = Group(
            fields, Text(""), Text("likely causes, most likely first:", style="bold"), causes
        )
        border = "red" if severity == "error" else "yellow"
        yield Panel(body, title=title, title_align="left", border_style=border, box=box.ROUNDED)


class ShapeTrace:
    """The shape trace: each module once, in call order, input → output, activation size."""

    def __init__(self, trace: pd.DataFrame):
        self.trace = trace

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        df = self.trace
        raised = (
            df[df["output"].astype(str).str.startswith("raised ")] if "output" in df else df[:0]
        )
        normal = df.drop(raised.index)
        cut = len(normal) - MAX_TERMINAL_ROWS
        shown = pd.concat([normal.head(MAX_TERMINAL_ROWS), raised])
        table = Table(title="Shape trace", title_justify="left", box=box.SIMPLE_HEAD, expand=False)
        table.add_column("module", overflow="fold", ratio=3)
        table.add_column("type", overflow="fold", ratio=2)
        table.add_column("input → output", overflow="fold", ratio=5)
        extra = [c for c in df.columns if c not in ("module", "type", "input", "output")]
        for c in extra:
            table.add_column(c, overflow="fold", ratio=2)
        for _, r in shown.iterrows():
            failed = str(r.get("output", "")).startswith("raised ")
            style = "bold red" if failed else ""
            cells = [
                plain(r["module"], limit=NAME_CHARS),
                plain(r["type"], limit=NAME_CHARS),
                plain(f"{r['input']} → {r['output']}"),
                *(plain(r[c]) for c in extra),
            ]
            table.add_row(*cells, style=style)
        yield table
        if cut > 0:
            yield Text(f"  … {cut} more modules in drill.md", style="dim")


#: a training loss that ended below this fraction of its start has converged: small
#: updates on it are the end of learning, not a learning rate too low
CONVERGED_FRACTION = 0.01


def layer_stats(records: Records) -> pd.DataFrame:
    """Per trainable parameter (the shared `param_stats` view): median gradient norm, last
    norm, median update/param ratio; `attrs["converged"]` says whether the training loss
    converged."""
    stats = param_stats(records)
    if stats.empty:
        return pd.DataFrame()
    out = pd.DataFrame(
        {
            "param": stats.index,
            "grad": stats["grad"].values,
            "norm": stats["norm"].values,
            "ratio": stats["ratio"].values,
            "has_grad": stats["has_grad"].values,
            "zero_grad": stats["grad_zero"].values,
        }
    )
    out.attrs["converged"] = _converged(records.train_loss())
    return out


def _converged(train: pd.Series) -> bool:
    finite = train[train.map(math.isfinite)] if len(train) else train
    if len(finite) < 2 or not finite.iloc[0] > 0:
        return False
    tail = finite.iloc[-max(1, len(finite) // 5) :]
    return bool(tail.median() <= CONVERGED_FRACTION * finite.iloc[0])


def layer_flags(row: Any, converged: bool = False) -> list[str]:
    """Why a parameter row stands out; empty when it looks healthy.

    Update/param is not judged once the loss converged: a converged weight gets tiny
    updates, and a bias that settled near 0 huge ones relative to itself.
    """
    flags = []
    if row.has_grad == 0:
        flags.append("no gradient")
    elif row.zero_grad:
        flags.append("zero gradient")
    r = row.ratio
    if r == r and math.isfinite(r) and not row.zero_grad and row.has_grad > 0 and not converged:
        if r < RATIO_LOW:
            flags.append("tiny updates")
        elif r > RATIO_HIGH:
            flags.append("huge updates")
    if not math.isfinite(row.grad) and row.grad == row.grad:
        flags.append("non-finite gradient")
    return flags


class LayerTable:
    """Per-layer gradients and updates; outliers (update/param far from 1e-3, zero or
    missing gradients) highlighted and named in the last column."""

    def __init__(self, stats: pd.DataFrame):
        self.stats = stats

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        df = self.stats
        converged = bool(df.attrs.get("converged"))
        flagged = [layer_flags(r, converged) for r in df.itertuples(index=False)]
        table = Table(
            title="Per-layer gradients and updates (medians over sampled steps)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        table.add_column("parameter", overflow="fold", ratio=4)
        table.add_column("grad norm", justify="right", no_wrap=True)
        table.add_column("param norm", justify="right", no_wrap=True)
        table.add_column("update/param", justify="right", no_wrap=True)
        table.add_column("note", overflow="fold", ratio=2)
        rows = list(zip(df.itertuples(index=False), flagged, strict=True))
        # outliers always shown; healthy rows up to the limit
        keep = [i for i, (_, fl) in enumerate(rows) if fl][:MAX_TERMINAL_ROWS]
        for i in range(len(rows)):
            if len(keep) >= MAX_TERMINAL_ROWS:
                break
            if i not in keep:
                keep.append(i)
        keep.sort()
        for i in keep:
            r, fl = rows[i]
            style = (
                "red"
                if {"no gradient", "zero gradient", "non-finite gradient"} & set(fl)
                else ("yellow" if fl else "")
            )
            table.add_row(
                plain(r.param, limit=NAME_CHARS),
                Text(num(float(r.grad))),
                Text(num(float(r.norm))),
                Text(num(float(r.ratio))),
                Text(", ".join(fl)),
                style=style,
            )
        yield table
        if len(rows) > len(keep):
            yield Text(f"  … {len(rows) - len(keep)} more parameters in drill.md", style="dim")
        n = sum(1 for fl in flagged if fl)
        if n:
            text = (
                f"  {n} of {len(rows)} parameters stand out: update/param outside"
                f" {RATIO_LOW:.0e}..{RATIO_HIGH:.0e} (healthy ~1e-3), or "
                "zero/missing gradients"
            )
        elif converged:
            text = (
                "  no parameter stands out: gradients present; the loss converged, so "
                "small late updates are expected"
            )
        else:
            text = "  no parameter stands out (update/param near 1e-3, gradients present)"
        yield Text(text, style="dim")


class LossCurve:
    """Train and val loss against step, drawn with characters: `*` train, `o` val.

    The axis starts at 0 (log scale when the loss spans orders of magnitude), and the
    best constant prediction (`-`) is drawn across, so a flat loss looks flat and one
    sitting at that baseline shows it.
    """

    HEIGHT = 8

    def __init__(self, train: pd.Series, val: pd.Series, marks: LossMarks | None = None):
        self.train = train.astype(float)
        self.val = val.astype(float)
        self.marks = marks

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text("Loss curve", style="bold")
        for name, s in (("train", self.train), ("val", self.val)):
            if len(s):
                yield Text("  " + loss_line(name, s))
        series = [s[s.map(math.isfinite)] for s in (self.train, self.val)]
        if not any(len(s) for s in series):
            yield Text("  no finite loss to draw", style="dim")
            return
        marks = self.marks
        baseline = marks.baseline if marks else None
        if baseline is not None:
            yield Text(
                f"  best constant prediction: {num(baseline)} ({marks.baseline_what})",
                style="dim",
            )
        values = pd.concat(series)
        lo, hi = float(values.min()), float(values.max())
        log = lo > 0 and hi / lo > 100
        if not log:  # from 0 (and up to the references), so that flat looks flat
            lo = min(lo, 0.0)
            hi = max([hi, *([baseline] if baseline is not None else [])])
        f = (lambda v: math.log10(v)) if log else (lambda v: v)
        flo, fhi = f(lo), f(hi)
        span = (fhi - flo) or 1.0
        label_w = 9
        width = max(20, min(options.max_width, 80) - label_w - 3)
        everything = [s for s in (self.train, self.val) if len(s)]
        steps = pd.concat([s.index.to_series() for s in everything])
        s0, s1 = int(steps.min()), int(steps.max())
        sspan = max(1, s1 - s0)
        grid = [[" "] * width for _ in range(self.HEIGHT)]
        styles = [[""] * width for _ in range(self.HEIGHT)]

        def row_of(v: float) -> int:
            return self.HEIGHT - 1 - round((f(v) - flo) / span * (self.HEIGHT - 1))

        if baseline is not None and baseline > 0 and lo <= baseline <= hi:
            row = row_of(baseline)
            grid[row] = ["-"] * width
            styles[row] = ["dim"] * width

        def place(s: pd.Series, mark: str, style: str) -> None:
            cols = ((s.index.to_numpy() - s0) * (width - 1) // sspan).astype(int)
            for col, vals in pd.Series(s.to_numpy()).groupby(cols):
                row = row_of(float(vals.mean()))
                cur = grid[row][col]
                grid[row][col] = "+" if cur not in (" ", "-", mark) else mark
                styles[row][col] = "magenta" if grid[row][col] == "+" else style

        place(series[0], "*", "cyan")
        place(series[1], "o", "yellow")
        bad = [s[~s.map(math.isfinite)] for s in (self.train, self.val)]
        for s in bad:  # non-finite losses: a red `!` along the top
            for col in set(((s.index.to_numpy() - s0) * (width - 1) // sspan).astype(int)):
                grid[0][col], styles[0][col] = "!", "bold red"
        for i in range(self.HEIGHT):
            label = ""
            if i == 0:
                label = num(hi)
            elif i == self.HEIGHT - 1:
                label = num(lo)
            line = Text(f"{label:>{label_w}} │")
            for ch, st in zip(grid[i], styles[i], strict=True):
                line.append(ch, style=st)
            yield line
        yield Text(" " * label_w + " └" + "─" * width)
        left, right = f"step {s0}", f"step {s1}"
        yield Text(" " * (label_w + 2) + left + right.rjust(width - len(left)))
        legend = "  * train  o val  + both" + ("  ! non-finite" if any(len(b) for b in bad) else "")
        legend += "  - best constant prediction" if baseline is not None else ""
        legend += "  (log scale)" if log else ""
        yield Text(legend, style="dim")


def loss_line(name: str, s: pd.Series) -> str:
    """`train: first 2.31 (step 0), last 0.05 (step 199), best 0.04 (step 190)`."""
    s = s.astype(float)
    finite = s[s.map(math.isfinite)]
    text = (
        f"{name}: first {_loss_num(s.iloc[0])} (step {s.index[0]}), "
        f"last {_loss_num(s.iloc[-1])} (step {s.index[-1]})"
    )
    if len(finite):
        text += f", best {num(finite.min())} (step {finite.idxmin()})"
    bad = s[~s.map(math.isfinite)]
    if len(bad):
        text += f"; first non-finite at step {bad.index[0]}"
    return text


def _loss_num(x: float) -> str:
    return num(x) if math.isfinite(x) else str(x)  # nan / inf, not num()'s "-"


class RunFiles:
    """The files of the evidence pack, so the reader knows what else to open."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        names = sorted(
            p.name for p in self.run_dir.iterdir() if p.is_file() and not p.name.startswith(".")
        )
        shown = ", ".join(terminal_safe(n, 200) for n in names[:MAX_FILES])
        if len(names) > MAX_FILES:
            shown += f" and {len(names) - MAX_FILES} more"
        yield plain("Files in the run directory: " + shown, style="dim")


class DrillReport:
    """The whole report: header, findings, loss curve, shape trace, layer table, extras."""

    def __init__(
        self,
        drill: dict[str, Any],
        records: Records | None = None,
        extra_sections: Sequence[tuple[str, str]] = (),
        run_dir: Path | None = None,
        note: str | None = None,
    ):
        self.drill = drill
        self.records = records
        self.extra_sections = list(extra_sections)
        self.run_dir = run_dir
        self.note = note

    def parts(self) -> Iterable[Any]:
        d = self.drill
        yield Header(d, self.run_dir)
        if self.note:
            yield plain(self.note, style="yellow")
        findings = d.get("findings") or []
        if not findings:
            raised = bool(d.get("exception"))
            yield Text(no_findings_text(raised), style="yellow" if raised else "green")
        for i, f in enumerate(findings[:MAX_FINDINGS], 1):
            yield FindingPanel(i, str(d["run_id"]), f)
        if len(findings) > MAX_FINDINGS:
            yield Text(f"… {len(findings) - MAX_FINDINGS} more findings in drill.md", style="dim")
        rec = self.records
        if rec is not None:
            yield from _record_parts(rec)
        for title, body in self.extra_sections:
            yield Text("")
            yield plain(title, style="bold")
            # escaped like any other field; no hyperlinks (a link's text can hide its target)
            yield Markdown(terminal_safe(body, limit=4 * FIELD_CHARS), hyperlinks=False)
        if self.run_dir is not None and self.run_dir.is_dir():
            yield Text("")
            yield RunFiles(self.run_dir)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.parts()


def _record_parts(rec: Records) -> Iterable[Any]:
    """Loss curve, shape trace and layer table. The records were checked when loaded; a
    part they still cannot make (hand-edited JSON in a shape cell) is named and left out,
    the rest of the report stands."""
    makers = (
        ("loss curve", lambda: _loss_curve(rec)),
        ("shape trace", lambda: _shape_trace(rec)),
        ("per-layer table", lambda: _layer_table(rec)),
    )
    for name, make in makers:
        try:
            parts = list(make())
            Console(file=io.StringIO(), width=80).print(*parts)  # a dry run: render errors here
        except Exception as exc:  # untrusted records: never a traceback for the report
            parts = [Text(""), plain(f"{name} not shown: the records are malformed ({exc!r})")]
        yield from parts


def _loss_curve(rec: Records) -> list[Any]:
    train, val = rec.train_loss(), rec.val_loss()
    return [Text(""), LossCurve(train, val, loss_marks(rec))] if len(train) or len(val) else []


def _shape_trace(rec: Records) -> list[Any]:
    trace = shape_trace(rec)
    return [] if trace.empty else [Text(""), ShapeTrace(trace)]


def _layer_table(rec: Records) -> list[Any]:
    stats = layer_stats(rec)
    return [] if stats.empty else [LayerTable(stats)]


def extra_sections(pm: Any, drill: dict[str, Any], records: Records) -> list[tuple[str, str]]:
    """Sections of report plugins the terminal does not render natively (a team's own);
    a broken plugin shows as a section saying so, never hides the report."""
    from .._plugins import call_each

    failures: list[dict[str, str]] = []
    found = call_each(
        pm,
        "trainlens_report_sections",
        failures,
        skip=NATIVE_SECTION_PLUGINS,
        drill=drill,
        records=records,
    )
    out = [section for sections in found for section in sections]
    out += [(f"(plugin {f['plugin']} failed)", f"`{f['error']}`") for f in failures]
    return out


def load_report(run_dir: str | Path) -> DrillReport:
    """Read a run directory for `trainlens report`; RunDirError when the drill is unusable.

    Records that are missing or unreadable do not stop the report: the drill alone still
    says what happened, and a note says what is missing.
    """
    from .._errors import RunDirError
    from .._plugins import get_plugin_manager
    from .._run import load_drill, load_records

    path = Path(run_dir)
    drill = load_drill(path)
    note = None
    try:
        records: Records | None = load_records(path)
    except RunDirError as err:
        records, note = None, f"records not shown: {err}"
    sections: list[tuple[str, str]] = []
    if records is not None:
        sections = extra_sections(get_plugin_manager(), drill, records)
    return DrillReport(drill, records, sections, run_dir=path, note=note)
