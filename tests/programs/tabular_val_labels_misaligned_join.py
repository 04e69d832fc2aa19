"""A Kaggle-style tabular competition loop: `train_features.csv` (rows in upload order,
an `id` column) and `train_labels.csv` (sorted by `id`) are merged, the rows split 85/15
into train and validation, an MLP trained with `nn.CrossEntropyLoss` and AdamW over
mini-batches, and the validation loss computed after every epoch under `model.eval()` /
`torch.no_grad()`. The bug (a misaligned join): the training labels are looked up by id,
but the validation labels are taken by row position from the label file, whose rows are in
another order, so every validation sample carries some other customer's label. The
validation loss sits far above the train loss from the first evaluation and rises while
training improves. `ALIGN_VAL_LABELS = True` looks the validation labels up by id too."""

from __future__ import annotations

import torch
from torch import nn

import trainlens

EXPECT = {"symptom": "overfitting", "cause": "bad_split", "module": None}
ALIGN_VAL_LABELS = False


def read_tables(n: int = 3000, d: int = 12, classes: int = 4):
    """The two 'files': features with their ids in upload order, labels sorted by id."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randperm(n, generator=g)  # upload order
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, classes, generator=g)
    y = (x @ w + 0.3 * torch.randn(n, classes, generator=g)).argmax(dim=1)
    label_ids, order = ids.sort()  # the label file is sorted by id
    return ids, x, label_ids, y[order]


def main(run_dir) -> None:
    torch.manual_seed(0)
    feat_ids, features, label_ids, label_col = read_tables()
    label_of_id = torch.empty_like(label_col)
    label_of_id[label_ids] = label_col  # a merge on `id`

    rows = torch.randperm(len(features))
    cut = int(0.85 * len(rows))
    train_rows, val_rows = rows[:cut], rows[cut:]
    x_train, y_train = features[train_rows], label_of_id[feat_ids[train_rows]]
    x_val = features[val_rows]
    # the bug: the validation labels by position in a file of another order
    y_val = label_of_id[feat_ids[val_rows]] if ALIGN_VAL_LABELS else label_col[val_rows]

    model = nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    history = []
    with trainlens.watch(model, optimizer, run_dir=run_dir, quiet=True):
        for _epoch in range(8):
            model.train()
            order = torch.randperm(len(x_train))
            for i in range(0, len(x_train), 32):
                idx = order[i : i + 32]
                optimizer.zero_grad()
                loss = criterion(model(x_train[idx]), y_train[idx])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                val_loss = criterion(model(x_val), y_val).item()
            history.append(val_loss)
