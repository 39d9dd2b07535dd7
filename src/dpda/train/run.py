"""The bundle a training run is made of (built by :mod:`dpda.train.build`, walked by the loop in
:mod:`dpda.train.trainer`, saved and restored by :mod:`dpda.train.state`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dpda.augment.chain import AugmentationChain
from dpda.checkpoint import BestCheckpoints
from dpda.config import ExperimentConfig
from dpda.data import ResumableLoader, Utterance
from dpda.dualpath import ConflictMeter, DualPathStep
from dpda.errors import DpdaError
from dpda.evaluate.evaluation import EvalSet
from dpda.results import EpochRecord
from dpda.train.lock import RunLock
from dpda.train.logger import RunLogger


class TrainingError(DpdaError, RuntimeError):
    """A run that cannot start or continue as asked (existing folder, missing state, bad batch)."""


@dataclass(frozen=True)
class Ranks:
    """This process' place among the training processes (torchrun sets the environment)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class Progress:
    """Where the run is and what it has decided so far (saved with the training state)."""

    epoch: int = 0
    step: int = 0  # optimizer steps done, over all epochs
    epoch_step: int = 0  # optimizer steps done in this epoch
    best_metric: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False
    history: list[EpochRecord] = field(default_factory=list)


@dataclass
class EpochSums:
    """What an epoch adds up step by step (saved with the state, so a mid-epoch resume goes on).
    A loss stays ``None`` until a step's is finite; its epoch mean is then NaN."""

    loss_orig: float | None = None
    loss_aug: float | None = None
    seconds: float = 0.0

    def add_losses(self, loss_orig: float, loss_aug: float) -> None:
        if math.isfinite(loss_orig):
            self.loss_orig = (self.loss_orig or 0.0) + loss_orig
        if math.isfinite(loss_aug):
            self.loss_aug = (self.loss_aug or 0.0) + loss_aug

    def mean_losses(self, steps: int) -> tuple[float, float]:
        """Each path's summed finite losses over all ``steps`` of the epoch."""
        orig, aug = (math.nan if total is None else total / steps for total in (self.loss_orig, self.loss_aug))
        return orig, aug


@dataclass
class Run:
    """Everything a training run is made of; ``progress``, ``meter`` and ``sums`` change as it trains."""

    config: ExperimentConfig
    folder: Path
    ranks: Ranks
    device: torch.device
    micro_batch: int
    steps_per_epoch: int
    train_records: list[Utterance]
    dev_records: list[Utterance] | None
    eval_sets: list[EvalSet]  # with their ASV/SASV trials, checked before training
    model: nn.Module
    chain: AugmentationChain
    optimizer: torch.optim.Optimizer
    engine: DualPathStep
    augment_rng: torch.Generator
    loader: ResumableLoader
    best: BestCheckpoints
    logger: RunLogger
    lock: RunLock | None  # the run folder's, held by rank 0 (the only writer)
    progress: Progress = field(default_factory=Progress)
    meter: ConflictMeter = field(default_factory=ConflictMeter)
    sums: EpochSums = field(default_factory=EpochSums)

    def close(self) -> None:
        """The logs closed and the folder's lock let go: the training is over, or failed."""
        try:
            self.logger.close()
        finally:
            if self.lock is not None:
                self.lock.release()
