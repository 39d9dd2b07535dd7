"""The dual-path training step: per-path gradients, accumulation, AMP, distributed sync, stats."""

from dpda.dualpath.conflicts import ConflictMeter
from dpda.dualpath.loss import PathLoss, WeightedCrossEntropy, set_loss
from dpda.dualpath.scaler import LossScaler
from dpda.dualpath.step import DivergedError, DualPathStep, StepStats
from dpda.names import MODES, PRECISIONS

__all__ = [
    "MODES",
    "PRECISIONS",
    "ConflictMeter",
    "DivergedError",
    "DualPathStep",
    "LossScaler",
    "PathLoss",
    "StepStats",
    "WeightedCrossEntropy",
    "set_loss",
]
