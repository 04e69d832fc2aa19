"""The hot path reads no tensor value back to the host per step (SPEC §6, issue 9).

On CUDA a value read (`.item()`, `bool(t)`, `nonzero`) stalls the host until the GPU
has caught up. Those reads all pass the dispatcher as the ops below, on the CPU too, so
a dispatch mode counts them here without a GPU: under `watch`, every step after the
first (whose once-a-run batch checks may read) must make exactly the reads the plain
loop makes (Adam's own step counters), dense steps, sampled steps and read-back steps
alike. `benchmarks/cuda_sync.py` checks the device-to-host copies on a GPU.
"""

from __future__ import annotations

import collections
import contextlib

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import trainlens
from models import SmallCNN, TinyTransformer, classification_data, image_data, mlp, token_data

HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), float(t), bool(t), if t: ...
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.nonzero.default,  # boolean-mask indexing, torch.where(cond)
    torch.ops.aten.masked_select.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.allclose.default,
}


class _HostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _reads_per_step(make_model, data, watched: bool, steps: int, tmp_path) -> list[dict]:
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x, y = data
    per_step = []
    block = (
        trainlens.watch(model, opt, run_dir=tmp_path / "run", quiet=True)
        if watched
        else contextlib.nullcontext()
    )
    with block as lens:
        for _ in range(steps):
            spy = _HostReads()
            with spy:
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            per_step.append(dict(spy.ops))
    if watched:  # the watched loop was a real, healthy run
        assert lens.drill["steps"] == steps
        assert lens.drill["status"] == "healthy", lens.findings
    return per_step


@pytest.mark.parametrize(
    ("make_model", "data"),
    [
        (mlp, classification_data(n=16)),
        (SmallCNN, image_data(n=8)),
        (TinyTransformer, token_data(n=8)),
    ],
    ids=["mlp", "cnn", "transformer"],
)
def test_no_value_is_read_back_per_step(make_model, data, tmp_path):
    # the first steps sampled, thinning out to one in 20, and read-backs (every 50)
    steps = 125
    plain = _reads_per_step(make_model, data, False, steps, tmp_path)
    watched = _reads_per_step(make_model, data, True, steps, tmp_path)
    extra = {
        i: (w, p) for i, (w, p) in enumerate(zip(watched, plain, strict=True)) if w != p and i > 0
    }
    first = dict(list(extra.items())[:3])
    assert not extra, (
        f"{len(extra)} of {steps} steps read values back under watch beyond the plain loop; "
        f"the first (watched, plain): {first}"
    )
