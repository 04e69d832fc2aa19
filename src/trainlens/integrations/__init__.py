"""Framework integrations: one line in a framework's callbacks gives a watched run.

- `trainlens.integrations.lightning.TrainlensCallback` for `lightning.pytorch.Trainer`
  (`pip install trainlens[lightning]`)
- `trainlens.integrations.transformers.TrainlensCallback` for `transformers.Trainer`
  (`pip install trainlens[transformers]`)

Importing this package needs neither framework; each submodule imports its own.
"""

from __future__ import annotations

__all__: list[str] = []
