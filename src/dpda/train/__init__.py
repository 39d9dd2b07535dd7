"""Training: ``dpda train`` (a run built from its config, the loop over it, its logs, several seeds)."""

from dpda.train.run import TrainingError
from dpda.train.seeds import train_seeds
from dpda.train.trainer import train

__all__ = ["TrainingError", "train", "train_seeds"]
