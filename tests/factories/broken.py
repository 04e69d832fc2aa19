"""Broken overfit-one-batch factories, one planted bug each, and bad factories (exit 2)."""

from __future__ import annotations

import torch
from torch import nn

import trainlens


def _data(n: int = 16, d: int = 8, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _mlp(d_in: int = 8, out: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, 32), nn.ReLU(), nn.Linear(32, out))


def layer_mismatch() -> trainlens.Setup:
    """The first layer was sized for 10 features; the data has 8."""
    x, y = _data()
    return trainlens.Setup(model=_mlp(d_in=10), batch=(x, y), loss_fn=nn.CrossEntropyLoss())


def silent_broadcast() -> trainlens.Setup:
    """MSELoss on a [N, 1] output against a [N] target: broadcast to [N, N]."""
    x, _ = _data()
    y = x.sum(1)  # [16], while the model outputs [16, 1]
    return trainlens.Setup(model=_mlp(out=1), batch=(x, y), loss_fn=nn.MSELoss())


class ViewForPermute(nn.Module):
    """Wants [seq, batch, d] for a seq-first encoder; `view` scrambles the samples."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0)  # batch_first=False
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = nn.Linear(32, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)  # [batch, seq, d]
        h = h.view(h.shape[1], h.shape[0], h.shape[2])  # meant: h.permute(1, 0, 2)
        return self.out(self.encoder(h).mean(dim=0))


def view_for_permute() -> trainlens.Setup:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (16, 10), generator=g)
    return trainlens.Setup(
        model=ViewForPermute(), batch=(ids, ids[:, 0] % 4), loss_fn=nn.CrossEntropyLoss()
    )


def nll_on_probabilities() -> trainlens.Setup:
    """NLLLoss wants log-probabilities; the model ends in a plain Softmax."""
    x, y = _data()
    model = nn.Sequential(_mlp(), nn.Softmax(dim=1))
    return trainlens.Setup(model=model, batch=(x, y), loss_fn=nn.NLLLoss())


class Scaled(nn.Module):
    def __init__(self, body: nn.Module, scale: float):
        super().__init__()
        self.body, self.scale = body, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale


def logits_times_100() -> trainlens.Setup:
    """Logits 100x too large from the start: the loss at init is far above ln(4)."""
    x, y = _data()
    return trainlens.Setup(model=Scaled(_mlp(), 100.0), batch=(x, y), loss_fn=nn.CrossEntropyLoss())


def lr_too_low() -> trainlens.Setup:
    """SGD at lr 1e-7: the parameters barely move."""
    x, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)
    return trainlens.Setup(model=model, batch=(x, y), loss_fn=nn.CrossEntropyLoss(), optimizer=opt)


class DetachedFeatures(nn.Module):
    """`.detach()` left in forward: no gradient reaches the feature layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).detach())


def detached_features() -> trainlens.Setup:
    x, y = _data()
    return trainlens.Setup(model=DetachedFeatures(), batch=(x, y), loss_fn=nn.CrossEntropyLoss())


def dead_relu() -> trainlens.Setup:
    """A bias of -10 before the ReLU: every unit outputs zero, for every sample."""
    x, y = _data()
    model = _mlp()
    with torch.no_grad():
        model[0].bias.fill_(-10.0)
    return trainlens.Setup(model=model, batch=(x, y), loss_fn=nn.CrossEntropyLoss())


# --- factories the CLI must reject with exit 2 -------------------------------------------
def raises() -> trainlens.Setup:
    raise RuntimeError("could not open the dataset")


def returns_a_number() -> int:
    return 42


def batch_not_a_pair() -> dict:
    x, y = _data()
    return {"model": _mlp(), "batch": (x, y, y), "loss_fn": nn.CrossEntropyLoss()}


def model_not_a_module() -> dict:
    x, y = _data()
    return {"model": lambda t: t, "batch": (x, y), "loss_fn": nn.CrossEntropyLoss()}


NOT_CALLABLE = 3
