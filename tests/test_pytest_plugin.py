"""The pytest plugin: an `overfit_one_batch` fixture that passes a model that memorises its
batch and fails one that cannot, with the drill's summary as the message."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

MODELS = """
import torch
from torch import nn


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
"""


# In a subprocess: an in-process run unloads the torch modules it imported, and torch
# cannot register its operator libraries twice.
@pytest.fixture
def project(pytester):
    pytester.makepyfile(models=MODELS)
    pytester.syspathinsert()
    return pytester


def test_the_fixture_is_registered_through_the_entry_point(project):
    result = project.runpytest_subprocess("--fixtures")
    result.stdout.fnmatch_lines(["overfit_one_batch*", "*fails the test when the batch*"])


def test_a_model_that_memorises_its_batch_passes(project):
    project.makepyfile(
        test_model="""
        from torch import nn
        from models import data, mlp

        def test_memorises(overfit_one_batch, tmp_path):
            result = overfit_one_batch(mlp(), data(), nn.CrossEntropyLoss(), lr=1e-2)
            assert result.passed and result.accuracy == 1.0
            assert result.run_dir.parent == tmp_path.resolve()
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_model_that_cannot_memorise_fails_with_the_drill_summary(project):
    project.makepyfile(
        test_model="""
        import torch
        from torch import nn
        from models import data, mlp

        class ViewForPermute(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = mlp()

            def forward(self, x):
                n, d = x.shape
                return self.body(x.reshape(d, n).t())  # meant: x.t().t()

        def test_memorises(overfit_one_batch):
            overfit_one_batch(ViewForPermute(), data(), nn.CrossEntropyLoss(), steps=10)
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*model cannot overfit one batch*",
            "*FAILED: the batch of 16 was not memorised in 10 steps*",
            "*- error: shape_mismatch*likely cause batch_dim_mixing (output of sample*",
            "*first check: Feed the model two batches that differ only in sample 1*",
        ]
    )
    assert "Traceback" not in result.stdout.str()  # the summary, not a stack of frames


def test_a_usage_error_fails_with_one_clear_line_not_trainlens_source(project):
    project.makepyfile(
        test_model="""
        from torch import nn
        from models import data, mlp

        def test_memorises(overfit_one_batch):
            overfit_one_batch(mlp(), data(), nn.CrossEntropyLoss(), steps=0)
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*overfit_one_batch: steps must be a positive integer, got 0*"])
    out = result.stdout.str()
    assert "_overfit/" not in out and "_overfit.py" not in out
    assert "pytest_plugin.py" not in out
    assert "raise UsageError" not in out
