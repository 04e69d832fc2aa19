"""Healthy training programs of many kinds. Every rule must stay silent on all of them.

Each takes a run dir and returns the finished Lens. They are real, small training loops
the way users write them, including the things that look odd to a naive rule: train/eval
differences, schedules and warm-up, clipping, weight decay, accumulation, frozen
backbones, losses that sit at zero or at a label-smoothing floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import trainlens
from attention_models import EncoderClassifier, TinyGPT, train_encoder, train_gpt
from models import SmallCNN, classification_data, image_data
from trainlens._demo import load_example

Program = Callable[[Path], trainlens.Lens]


def _loop(model, opt, batches, loss_fn, run_dir, *, epochs, sched=None, clip=None, val=None):
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(epochs):
            model.train()
            for xb, yb in batches:
                loss = loss_fn(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                if clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                if sched is not None:
                    sched.step()
            if val is not None:
                model.eval()
                with torch.no_grad():
                    loss_fn(model(val[0]), val[1])
    return lens


def _batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def linear_regression(run_dir: Path) -> trainlens.Lens:
    """The course's first loop (examples/linear_regression.py): loss ends at zero."""
    return load_example("linear_regression.py").main(run_dir=run_dir)


def mlp_batchnorm_dropout_with_val(run_dir: Path) -> trainlens.Lens:
    # one draw split in two: another seed would draw another labelling rule, and a
    # validation set of another task is a bad split, not a healthy run
    x, y = classification_data(n=384, d_in=10, classes=4)
    x, y, xv, yv = x[:256], y[:256], x[256:], y[256:]
    model = nn.Sequential(
        nn.Linear(10, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 4)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return _loop(model, opt, _batches(x, y, 32), nn.CrossEntropyLoss(), run_dir,
                 epochs=8, val=(xv, yv))  # fmt: skip


def cnn_warmup_cosine(run_dir: Path) -> trainlens.Lens:
    x, y = image_data(n=96)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    total, warm = 60, 10

    def warmup_cosine(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)
    return _loop(model, opt, _batches(x, y, 16), nn.CrossEntropyLoss(), run_dir,
                 epochs=10, sched=sched, val=image_data(n=32, seed=1))  # fmt: skip


def adamw_step_schedule_clipping(run_dir: Path) -> trainlens.Lens:
    x, y = classification_data(n=200, d_in=16, classes=5)
    model = nn.Sequential(
        nn.Linear(16, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 5)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.3)
    return _loop(model, opt, _batches(x, y, 20), nn.CrossEntropyLoss(), run_dir,
                 epochs=6, sched=sched, clip=1.0)  # fmt: skip


def tiny_model_large_updates(run_dir: Path) -> trainlens.Lens:
    """A 3-parameter model takes update/param ratios near 0.1 early on, and converges."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 2, generator=g)
    y = x @ torch.tensor([[1.5], [-0.7]]) + 0.3
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    return _loop(model, opt, _batches(x, y, 32), nn.MSELoss(), run_dir, epochs=10)


def lstm_sequence_classifier(run_dir: Path) -> trainlens.Lens:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 10, 4, generator=g)
    y = (x[:, :, 0].sum(dim=1) > 0).long()  # sign of a running sum

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 32, batch_first=True)
            self.head = nn.Linear(32, 2)

        def forward(self, seq):
            out, _ = self.rnn(seq)
            return self.head(out[:, -1])

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return _loop(model, opt, _batches(x, y, 32), nn.CrossEntropyLoss(), run_dir, epochs=8)


def causal_transformer_lm(run_dir: Path) -> trainlens.Lens:
    """Next-token prediction on a repeating pattern, with a causal mask."""
    vocab, seq = 12, 16
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, vocab, (64, 1), generator=g)
    ids = (starts + torch.arange(seq + 1)) % vocab

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, 32)
            self.pos = nn.Embedding(seq, 32)
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(32, vocab)

        def forward(self, t):
            n = t.shape[1]
            mask = nn.Transformer.generate_square_subsequent_mask(n)
            h = self.embed(t) + self.pos(torch.arange(n))
            return self.head(self.blocks(h, mask=mask, is_causal=True))

    model = LM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()

    def lm_loss(logits, target):
        return loss_fn(logits.reshape(-1, vocab), target.reshape(-1))

    batches = _batches(ids[:, :-1], ids[:, 1:], 16)
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(6):
            for xb, yb in batches:
                loss = lm_loss(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return lens


def short_run(run_dir: Path) -> trainlens.Lens:
    """A dozen steps: too few for trends, must not be judged as flat."""
    x, y = classification_data(n=96)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    return _loop(model, opt, _batches(x, y, 8), nn.CrossEntropyLoss(), run_dir, epochs=1)


def frozen_backbone_fine_tuning(run_dir: Path) -> trainlens.Lens:
    """The backbone is frozen on purpose (requires_grad=False); only the head trains."""
    x, y = classification_data(n=128, d_in=8, classes=3)
    backbone = nn.Sequential(nn.Linear(8, 64), nn.ReLU())
    backbone.requires_grad_(False)
    model = nn.Sequential(backbone, nn.Linear(64, 3))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return _loop(model, opt, _batches(x, y, 16), nn.CrossEntropyLoss(), run_dir, epochs=6)


def gradient_accumulation(run_dir: Path) -> trainlens.Lens:
    """Four micro-batches per optimizer step; zero_grad after each step."""
    x, y = classification_data(n=256)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(4):
            for i, (xb, yb) in enumerate(_batches(x, y, 8)):
                (loss_fn(model(xb), yb) / 4).backward()
                if i % 4 == 3:
                    opt.step()
                    opt.zero_grad()
    return lens


def label_smoothing_floor(run_dir: Path) -> trainlens.Lens:
    """Label smoothing keeps the loss on a floor above zero once the data is learned."""
    x, y = classification_data(n=128, classes=4)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2)
    return _loop(model, opt, _batches(x, y, 32), loss_fn, run_dir, epochs=40)


def long_plateau_at_zero(run_dir: Path) -> trainlens.Lens:
    """Solved after ~50 steps, then 350 more at a loss of ~0: flat, and healthy."""
    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return _loop(model, opt, [(x, 3 * x - 1)], nn.MSELoss(), run_dir, epochs=400)


def nanogpt_sdpa_copy(run_dir: Path) -> trainlens.Lens:
    """Hand-written causal SDPA with dropout learns to copy the previous token.

    Its attention starts near uniform (normal at init) and sharpens; the first causal
    rows see one or two keys and are peaked by construction.
    """
    return train_gpt(TinyGPT(), run_dir, steps=80)


def encoder_with_padding_mask(run_dir: Path) -> trainlens.Lens:
    """nn.TransformerEncoder over padded sequences (src_key_padding_mask), 2 layers."""
    return train_encoder(EncoderClassifier(), run_dir, steps=60)


def slow_sgd_still_learning(run_dir: Path) -> trainlens.Lens:
    """Plain SGD, no momentum, a modest lr: slow, small updates, but the loss does fall."""
    x, y = classification_data(n=256, d_in=8, classes=3)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return _loop(model, opt, _batches(x, y, 16), nn.CrossEntropyLoss(), run_dir, epochs=6)


def sparse_activations_relu6_leaky_gelu(run_dir: Path) -> trainlens.Lens:
    """Mixed activations, many exact zeros in the ReLU6 (negative-shifted inputs): learning."""
    x, y = classification_data(n=256, d_in=8, classes=3)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.ReLU6(), nn.Linear(64, 64), nn.LeakyReLU(0.01),
        nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 3),
    )  # fmt: skip
    with torch.no_grad():
        model[0].bias.fill_(-0.5)  # most pre-activations negative: ~70% zeros, not dead
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return _loop(model, opt, _batches(x, y, 32), nn.CrossEntropyLoss(), run_dir, epochs=6)


def regression_at_its_noise_floor(run_dir: Path) -> trainlens.Lens:
    """Noisy targets: MSE falls from the target variance to the noise variance and stays."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [1.5]]) + 0.5 * torch.randn(256, 1, generator=g)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return _loop(model, opt, _batches(x, y, 32), nn.MSELoss(), run_dir, epochs=15)


def loss_items_logged_in_a_list(run_dir: Path) -> trainlens.Lens:
    """Keeps every loss as a number (`loss.item()`) and a running total: no graph kept."""
    x, y = classification_data(n=256, classes=4)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    history, running = [], 0.0
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(8):
            for xb, yb in _batches(x, y, 64):
                loss = loss_fn(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                history.append(loss.item())
                running += loss.item()
    assert len(history) == 32 and running > 0
    return lens


def truncated_bptt_with_detached_cache(run_dir: Path) -> trainlens.Lens:
    """An RNN over one long signal in chunks: the hidden state goes on detached, and the
    loop caches detached losses and outputs (tensors, but without their graphs)."""
    t = torch.linspace(0, 40, 401)
    wave = torch.sin(t).view(1, -1, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(1, 16, batch_first=True)
            self.head = nn.Linear(16, 1)

        def forward(self, seq, h):
            out, h = self.rnn(seq, h)
            return self.head(out), h

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.MSELoss()
    losses, outputs = [], []
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            h = torch.zeros(1, 1, 16)
            for i in range(0, 400, 10):
                pred, h = model(wave[:, i : i + 10], h)
                h = h.detach()  # truncated backpropagation through time
                loss = loss_fn(pred, wave[:, i + 1 : i + 11])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.detach())
                outputs.append(pred.detach())
    return lens


def noisy_small_validation(run_dir: Path) -> trainlens.Lens:
    """Eight validation samples evaluated every 4 steps: a jagged val curve that tracks."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 1, generator=g)
    x = torch.randn(136, 6, generator=g)
    y = x @ w + 0.5 * torch.randn(136, 1, generator=g)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.MSELoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(80):
            model.train()
            i = (step * 16) % 128
            loss = loss_fn(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 4 == 3:
                model.eval()
                with torch.no_grad():
                    loss_fn(model(x[128:]), y[128:])
    return lens


def early_loss_bump(run_dir: Path) -> trainlens.Lens:
    """High-momentum SGD overshoots on its first steps (the loss bumps up), then settles."""
    x, y = classification_data(n=128, d_in=8, classes=3)
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1.5, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 6 else 0.1)
    return _loop(model, opt, _batches(x, y, 32), nn.CrossEntropyLoss(), run_dir,
                 epochs=12, sched=sched)  # fmt: skip


def bf16_autocast_grad_scaler(run_dir: Path) -> trainlens.Lens:
    """Mixed precision: bf16 autocast with a GradScaler at a huge starting scale."""
    x, y = classification_data(n=128)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for step in range(50):
            i = (step * 16) % 128
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return lens


def amp_gradscaler_skipping_steps(run_dir: Path) -> trainlens.Lens:
    """fp16 autocast with a GradScaler whose first scales overflow: it skips a few steps."""
    x, y = classification_data(n=256)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(3):
            for xb, yb in _batches(x, y, 16):
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = loss_fn(model(xb), yb)
                opt.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
    return lens


def step_with_closure(run_dir: Path) -> trainlens.Lens:
    """optimizer.step(closure), as Lightning calls it: forward and backward inside the step."""
    x, y = classification_data(n=128)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    with trainlens.watch(model, opt, run_dir=run_dir, quiet=True) as lens:
        for _ in range(5):
            for xb, yb in _batches(x, y, 16):

                def closure(xb=xb, yb=yb):
                    opt.zero_grad()
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    return loss

                opt.step(closure)
    return lens


def seq_first_gru(run_dir: Path) -> trainlens.Lens:
    """batch_first=False, fed [seq, batch, features] as it wants: the batch is axis 1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 64, 4, generator=g)  # [seq, batch, features]
    y = (x[:, :, 0].sum(0) > 0).long()

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 16)
            self.out = nn.Linear(16, 2)

        def forward(self, xb):
            return self.out(self.rnn(xb)[0][-1])

    model = SeqFirst()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = [(x[:, i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    return _loop(model, opt, batches, nn.CrossEntropyLoss(), run_dir, epochs=8)


PROGRAMS: dict[str, Program] = {
    f.__name__: f
    for f in (
        linear_regression,
        mlp_batchnorm_dropout_with_val,
        cnn_warmup_cosine,
        adamw_step_schedule_clipping,
        tiny_model_large_updates,
        lstm_sequence_classifier,
        causal_transformer_lm,
        short_run,
        frozen_backbone_fine_tuning,
        gradient_accumulation,
        label_smoothing_floor,
        long_plateau_at_zero,
        nanogpt_sdpa_copy,
        encoder_with_padding_mask,
        slow_sgd_still_learning,
        sparse_activations_relu6_leaky_gelu,
        regression_at_its_noise_floor,
        loss_items_logged_in_a_list,
        truncated_bptt_with_detached_cache,
        noisy_small_validation,
        early_loss_bump,
        bf16_autocast_grad_scaler,
        amp_gradscaler_skipping_steps,
        step_with_closure,
        seq_first_gru,
    )
}
