"""Training, checkpoints, metrics and evaluation reports (one trainer for all
systems; see trainer.py).

The public functions are imported lazily: the trainer pulls in CLU's writers and
with them TensorFlow, which `avjax.train.metrics` alone (serving, notebooks) need
not pay for.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "train_and_evaluate": "avjax.train.trainer",
    "NonFiniteLossError": "avjax.train.trainer",
    "evaluate_workdir": "avjax.train.evaluate",
    "cross_validate": "avjax.train.cross_validation",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  raise AttributeError(f"module 'avjax.train' has no attribute {name!r}")
