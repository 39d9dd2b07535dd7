"""The dual-path training step: per-path gradients, accumulation, AMP, distributed sync, stats."""

from dpda.dualpath.loss import PathLoss, WeightedCrossEntropy, set_loss
from dpda.dualpath.scaler import LossScaler
from dpda.dualpath.step import MODES, PRECISIONS, DualPathStep, StepStats

__all__ = ["MODES", "PRECISIONS", "DualPathStep", "LossScaler", "PathLoss", "StepStats", "WeightedCrossEntropy",
           "set_loss"]
