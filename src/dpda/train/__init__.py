"""Training: ``dpda train`` (the trainer around the dual-path step, its logs, several seeds)."""

from dpda.train.seeds import summarise, train_seeds
from dpda.train.trainer import Trainer, TrainingError, train

__all__ = ["Trainer", "TrainingError", "summarise", "train", "train_seeds"]
