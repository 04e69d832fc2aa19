"""What a person sees outside the terminal: curves.png, drill.html in a real browser, the
run dir's README, and the notebook displays (`trainlens.report`, `Lens`, `Finding`)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import trainlens
from report_runs import regression_run
from trainlens._report.curves import curves_png, grad_norm_by_group, loss_marks
from trainlens._report.html import drill_html
from trainlens._report.terminal import load_report

PNG = b"\x89PNG\r\n\x1a\n"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG)
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _scheduled_run(run_dir: Path, *, scheduled: bool) -> trainlens.Lens:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, :4].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(30):
            loss = nn.functional.cross_entropy(model(x), y)
            lens.log_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if scheduled:
                sched.step()
    return lens


# --- curves.png --------------------------------------------------------------------------
def test_curves_mark_the_best_val_step_and_the_constant_prediction_baseline(run_dir):
    lens = regression_run(run_dir, fixed=True)
    marks = loss_marks(lens.records)
    val = lens.records.val_loss()
    assert marks.best_val_step == int(val.idxmin())
    # MSELoss on a [N] target: the best constant prediction costs the target variance
    torch.manual_seed(0)  # the same draw regression_run made
    targets = torch.randn(64, 4).sum(1)
    assert marks.baseline == pytest.approx(float(targets.var(unbiased=False)), rel=1e-3)
    assert marks.start == pytest.approx(float(lens.records.train_loss().iloc[0]))
    assert marks.first_nonfinite_step is None


def test_a_constant_learning_rate_gets_no_panel_and_a_schedule_does(tmp_path):
    constant = _scheduled_run(tmp_path / "constant", scheduled=False)
    scheduled = _scheduled_run(tmp_path / "scheduled", scheduled=True)
    _, h_constant = _png_size(curves_png(constant.records))
    _, h_scheduled = _png_size(curves_png(scheduled.records))
    # one panel (2.6 in at 90 dpi) more for the schedule
    assert h_scheduled - h_constant == pytest.approx(2.6 * 90, abs=2)
    assert (tmp_path / "constant" / "curves.png").read_bytes() == curves_png(constant.records)


def test_gradient_groups_are_layers_not_top_level_children():
    import pandas as pd

    records = trainlens.Records(
        {
            "params": pd.DataFrame(
                {
                    "step": [0] * 24,
                    "param": [
                        f"encoder.layer.{i}.{part}.{kind}"
                        for i in range(6)
                        for part in ("attention", "output")
                        for kind in ("weight", "bias")
                    ],
                    "module": [""] * 24,
                    "has_grad": [True] * 24,
                    "grad_norm": [1.0] * 24,
                    "param_norm": [1.0] * 24,
                    "update_norm": [0.001] * 24,
                }
            )
        },
        {},
    )
    wide = grad_norm_by_group(records)
    names = list(wide.columns)
    assert len(names) == 8 and wide.attrs["layers"] == 12
    assert names[0] == "encoder.layer.0.attention" and names[-1] == "encoder.layer.5.output"
    assert wide.iloc[0, 0] == pytest.approx(2**0.5)  # weight and bias of one layer


def test_a_healthy_converged_run_raises_no_alarm_in_its_report(tmp_path):
    from trainlens._demo import run_example

    example = next(e for e in trainlens._demo.examples() if e.symptom is None)
    lens, _, _ = run_example(example, tmp_path / "linear")
    assert lens.drill["status"] == "healthy"
    from rich.console import Console

    console = Console(record=True, width=80, color_system=None)
    console.print(load_report(tmp_path / "linear"))
    text = console.export_text()
    assert "stand out:" not in text and "tiny updates" not in text and "huge" not in text
    assert "No problems found" in text


# --- the run directory -------------------------------------------------------------------
def test_run_dir_holds_only_tables_with_rows_and_describes_every_file(run_dir):
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 1)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True):
        for _ in range(10):
            loss = nn.MSELoss()(model(x), 2 * x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    import pandas as pd

    for path in run_dir.glob("*.parquet"):
        assert len(pd.read_parquet(path)), f"{path.name} is an empty table"
    assert not (run_dir / "attention.parquet").exists()
    readme = (run_dir / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    listed = sorted(line.split("`")[1] for line in rows)
    assert listed == sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    for line in rows:
        text = line.split("|")[2]
        assert not text.strip().startswith(("records,", "written by")), line
    assert "drill.html" in listed
    assert trainlens.load_run(run_dir).records.attention.empty  # absent reads as empty


# --- drill.html --------------------------------------------------------------------------
def _self_contained(page: str) -> None:
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page)
    assert refs, "the page shows no picture"
    for ref in refs:
        assert ref.startswith("data:image/"), f"drill.html refers to another file: {ref[:60]}"


def test_drill_html_is_one_self_contained_page_with_findings_and_pictures(run_dir):
    lens = regression_run(run_dir, fixed=False)
    page = (run_dir / "drill.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    _self_contained(page)
    for f in lens.drill["findings"]:
        assert f["symptom"] in page and f["likely_cause"] in page
    assert "Shape trace" in page and "<table>" in page
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)[1])
    assert png == (run_dir / "curves.png").read_bytes()
    assert 'class="status" style="background:#cf222e">failed<' in page


def test_untrusted_strings_in_the_drill_stay_text(run_dir):
    lens = regression_run(run_dir, fixed=True)
    drill = json.loads(json.dumps(lens.drill))
    drill["exception"] = {"type": "RuntimeError", "message": "<script>alert(1)</script>"}
    drill["findings"] = [
        {
            "symptom": "flat_loss",
            "severity": "warning",
            "module": "<img src=x onerror=alert(1)>",
            "step": 1,
            "first_check": "<b>bold</b> [link](javascript:alert(1))",
            "likely_causes": [{"id": "x", "confidence": 0.5, "evidence": "<iframe>"}],
            "likely_cause": "x",
            "fix_attempt": "-",
            "result_after_fix": None,
        }
    ]
    page = drill_html(drill, [], run_dir)
    for raw in ("<script>", "<img src=x", "<b>bold", "<iframe>", 'href="javascript:'):
        assert raw not in page, raw


def test_compare_fills_result_after_fix_in_drill_html_too(tmp_path):
    from trainlens._report.compare import compare_runs

    failed = regression_run(tmp_path / "failed", fixed=False)
    regression_run(tmp_path / "fixed", fixed=True)
    before = (tmp_path / "failed" / "drill.html").read_text()
    assert "not yet: rerun with the fix" in before
    compare_runs(tmp_path / "failed", tmp_path / "fixed")
    page = (tmp_path / "failed" / "drill.html").read_text()
    summary = json.loads((tmp_path / "failed" / "drill.json").read_text())["findings"][0]
    assert failed.drill["findings"][0]["symptom"] == summary["symptom"]
    assert "not yet: rerun with the fix" not in page
    assert " ".join(str(summary["result_after_fix"]["summary"]).split())[:40] in page


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_drill_html_opens_in_a_real_browser_with_its_pictures_and_findings(tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(
            "no Chromium on this machine (`make test` installs it with apt-get where it "
            "runs as root): drill.html was not opened in a browser"
        )
    from trainlens._demo import run_example

    example = next(e for e in trainlens._demo.examples() if e.filename == "attention.py")
    lens, _, _ = run_example(example, tmp_path / "attention")
    page = (tmp_path / "attention" / "drill.html").read_text()
    # the page itself has no script; a copy gets one that reports what the browser loaded
    probe = (
        "<script>window.addEventListener('load', () => { document.body.setAttribute("
        "'data-images', [...document.images].map(i => i.complete && i.naturalWidth > 0 ? "
        "i.naturalWidth : 0).join(',')); document.body.setAttribute('data-text', "
        "document.body.innerText.length); });</script>"
    )
    copy = tmp_path / "probe.html"
    copy.write_text(page.replace("</body>", probe + "</body>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", copy.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    widths = re.search(r'data-images="([^"]*)"', dom)
    assert widths, dom[:500]
    loaded = [int(w) for w in widths[1].split(",")]
    assert len(loaded) == 2 and all(w > 300 for w in loaded), loaded  # curves, attention
    for f in lens.drill["findings"]:
        assert f["symptom"] in dom and f["likely_cause"] in dom


# --- notebooks ---------------------------------------------------------------------------
def test_report_lens_and_finding_display_themselves(run_dir):
    lens = regression_run(run_dir, fixed=False)
    report = trainlens.report(run_dir)
    html = report._repr_html_()
    assert "data:image/png;base64," in html and "shape_mismatch" in html
    md = report._repr_markdown_()
    assert "](data:image/png;base64," in md and "](curves.png)" not in md
    assert "shape_mismatch" in str(report) and "Loss curve" in str(report)
    assert repr(report).startswith("<trainlens report of run ") and "failed" in repr(report)
    assert "data:image/png;base64," in lens._repr_html_()
    assert trainlens.load_run(run_dir)._repr_html_() == html
    assert "](data:image/png" in lens._repr_markdown_()
    assert repr(lens) == f"<trainlens.Lens run {lens.run_id} failed ({run_dir})>"
    finding = lens.findings[0]
    assert repr(finding).startswith("<Finding error: shape_mismatch")
    assert "first_check" in finding._repr_html_() and "likely_cause" in finding._repr_markdown_()
    with pytest.raises(trainlens.RunDirError, match=r"drill\.json|does not exist"):
        trainlens.report(run_dir / "nowhere")


def test_a_notebook_shows_the_run_and_prints_no_widget_warnings(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    src = str(Path(trainlens.__file__).parents[1])
    monkeypatch.setenv("PYTHONPATH", src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cells = [
        "import torch\nfrom torch import nn\nimport trainlens\ntorch.manual_seed(0)\n"
        "x = torch.randn(64, 4); y = x.sum(1, keepdim=True)\n"
        "model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.05)",
        "with trainlens.watch(model, opt, run_dir='run') as lens:\n"
        "    for _ in range(40):\n"
        "        loss = nn.MSELoss()(model(x), y.squeeze(1))  # broadcasts [64, 1] vs [64]\n"
        "        opt.zero_grad(); loss.backward(); opt.step()\n"
        "lens",
        "lens.findings[0]",
        "trainlens.report('run')",
        "r = trainlens.overfit_one_batch(nn.Linear(4, 1), (x[:16], y[:16]), nn.MSELoss(), "
        "quiet=False, steps=20, run_dir='overfit')",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [cell.outputs for cell in nb.cells]
    results = [o for out in outputs for o in out if o["output_type"] == "execute_result"]
    html = [o["data"].get("text/html", "") for o in results]  # lens, finding, report
    assert len(html) == 3, [list(o.get("data", {})) for o in results]
    assert "data:image/png;base64," in html[0] and "Failure drill" in html[0], html[0][:300]
    assert "shape_mismatch" in html[1] and "first_check" in html[1]
    assert "data:image/png;base64," in html[2]
    # rich prints to a notebook as display data; warnings come as stream text
    shown = "".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "") for out in outputs for o in out
    )
    assert "ipywidgets" not in shown, shown
    assert "overfitting one batch: 20 steps" in shown or "overfitting one batch: " in shown
    errors = [o for out in outputs for o in out if o["output_type"] == "error"]
    assert not errors, errors


def test_the_first_non_finite_loss_is_marked():
    import pandas as pd

    losses = pd.DataFrame(
        {"step": [0, 1, 2], "split": ["train"] * 3, "source": ["x"] * 3,
         "value": [1.0, float("nan"), 0.5]}
    )  # fmt: skip
    records = trainlens.Records({"losses": losses}, {})
    assert loss_marks(records).first_nonfinite_step == 1
    assert _png_size(curves_png(records))[0] > 600
