"""Training: ``dpda train`` (the trainer, its checkpoints and logs, several seeds).

The trainer is imported on first use, so that ``dpda.train.checkpoint`` and ``dpda.train.data``
(which the evaluation code also needs) load without the whole training stack.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"Trainer": "trainer", "TrainingError": "trainer", "train": "trainer",
            "summarise": "seeds", "train_seeds": "seeds"}
__all__ = ["Trainer", "TrainingError", "summarise", "train", "train_seeds"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dpda.train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"dpda.train.{_EXPORTS[name]}"), name)
