"""Healthy twin of gpt_warmup_never_ends: nanoGPT's loop shape with a warm-up that ends,
cosine decay, and gradient accumulation (loss / k, zero_grad(set_to_none=True) after the step)."""

import torch
from _sibling import sibling
from torch import nn

import trainlens

EXPECT = None

block_size, batch_size, vocab = 8, 8, 12
learning_rate, min_lr = 3e-3, 3e-4
max_iters, warmup_iters = 40, 5
lr_decay_iters = max_iters
gradient_accumulation_steps = 4


# the model, `get_lr(it)` and `get_batch` are the bug program's, read with this run's settings
_twin = sibling("gpt_warmup_never_ends.py")
_twin.block_size, _twin.batch_size, _twin.vocab = block_size, batch_size, vocab
_twin.learning_rate, _twin.min_lr = learning_rate, min_lr
_twin.warmup_iters, _twin.lr_decay_iters = warmup_iters, lr_decay_iters
TinyLM, get_lr, get_batch = _twin.TinyLM, _twin.get_lr, _twin.get_batch


def main(run_dir):
    torch.manual_seed(0)
    data = torch.tensor([(3 * i) % vocab for i in range(4000)])

    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.1)
    criterion = nn.CrossEntropyLoss()
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        X, Y = get_batch(data)
        for it in range(max_iters):
            for param_group in optimizer.param_groups:
                param_group["lr"] = get_lr(it)
            for _micro_step in range(gradient_accumulation_steps):
                logits, _ = model(X)
                loss = criterion(logits.view(-1, vocab), Y.view(-1))
                loss = loss / gradient_accumulation_steps
                X, Y = get_batch(data)
                loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
