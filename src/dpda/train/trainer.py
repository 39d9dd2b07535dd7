"""``dpda train``: the dual-path step for every batch, dev evaluation, early stopping, the n best
checkpoints averaged, and a training state that makes a killed run resume bit-identically.

Everything random is either keyed (crops by (seed, epoch, utterance)) or carried in the saved
state (the global RNGs, the augmentation generator of every rank, the loader position, the
optimizer, the aligner's EMA), and the learning rate is a function of the step, so continuing
from a saved state replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from dpda.align import make_aligner
from dpda.atomic import write_text_atomic
from dpda.augment import build_chain, load_chain
from dpda.augment.base import Augmented
from dpda.augment.chain import AugmentationChain
from dpda.checkpoint import (
    BestCheckpoints,
    average_weights,
    capture_rng,
    check_architecture,
    load_state,
    restore_rng,
    save_state,
    save_weights,
)
from dpda.config import (
    ExperimentConfig,
    OptimConfig,
    config_to_dict,
    load_config,
    save_config,
)
from dpda.data import AudioDataset, ResumableLoader
from dpda.data.dataset import collate
from dpda.data.sets import DataError, dataset_root, read_dataset
from dpda.dualpath import DualPathStep, LossScaler, WeightedCrossEntropy, set_loss
from dpda.dualpath.sync import broadcast_module_
from dpda.errors import DpdaError
from dpda.evaluate import eer
from dpda.evaluate.calibration import fit_calibration
from dpda.evaluate.evaluation import Detector, evaluate_sets, read_eval_sets
from dpda.evaluate.scoring import predict, scores_from_logits
from dpda.models import architecture, build
from dpda.train.logger import ConflictMeter, RunLogger, summarise_augmentation
from dpda.train.paired import PairedDataset, collate_pairs

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def init_distributed(device_kind: str) -> Ranks:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> None:
    """Leave the process group once every rank is done: a rank that closes its connections
    while another still holds them can make the other abort at exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def choose_device(name: str, ranks: Ranks) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{ranks.local}"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"train.device is {name!r} but CUDA is not available here")
        torch.cuda.set_device(device)
    return device


def learning_rate(optim: OptimConfig, step: int, epoch: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): warm-up, then the schedule."""
    lr = optim.lr
    if optim.warmup_steps and step < optim.warmup_steps:
        lr *= (step + 1) / optim.warmup_steps
    if optim.scheduler == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    elif optim.scheduler == "step":
        lr *= optim.gamma ** (epoch // optim.step_size)
    return lr


def make_optimizer(optim: OptimConfig, parameters: Any) -> torch.optim.Optimizer:
    if optim.name == "adam":
        return torch.optim.Adam(parameters, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(parameters, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    return torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def make_chain(config: ExperimentConfig) -> AugmentationChain:
    augment = config.augment
    try:
        if augment.chain is not None:
            return load_chain(augment.chain, augment.overrides)
        return build_chain(augment.inline or {}, augment.overrides)
    except (OSError, ValueError) as error:
        raise TrainingError(f"augment: {error}") from error


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
    history: list[dict[str, Any]] | None = None


class Trainer:
    """One run: build from a config, then ``fit``. With ``resume``, ``run_dir`` must hold a run
    whose training state continues exactly where it was saved."""

    def __init__(self, config: ExperimentConfig | None, run_dir: str | Path, *, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        if resume:
            config = _resumable_config(self.run_dir)
        elif config is None:
            raise TrainingError("a config is required to start a run")
        elif (self.run_dir / "config.yaml").exists():
            raise TrainingError(
                f"{self.run_dir} already holds a run; continue it with `dpda train --resume "
                f"{self.run_dir}` or choose another name/output_dir"
            )
        self.config = config
        if config.data.train is None:
            raise TrainingError("data.train: a training protocol is required (see configs/default.yaml)")
        train = config.train
        self.device = choose_device(train.device, Ranks())
        self.ranks = init_distributed(self.device.type)
        self.device = choose_device(train.device, self.ranks)
        per_step = train.accumulation * self.ranks.world
        if train.batch_size % per_step:
            raise TrainingError(
                f"train.batch_size {train.batch_size} is not divisible by accumulation "
                f"{train.accumulation} x {self.ranks.world} process(es)"
            )
        self.micro_batch = train.batch_size // per_step
        if train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            # NaN-filling every new tensor only helps find reads of uninitialised memory; it made
            # the batched augmentations 50x slower.
            torch.utils.deterministic.fill_uninitialized_memory = False
        progress = config.logging.progress and self.ranks.main
        check = config.data.validate
        self.train_records = read_dataset(config.data.train, "train", check, progress=progress)
        self.dev_records = read_dataset(config.data.dev, "dev", check, progress=progress) if config.data.dev else None
        self.eval_sets = read_eval_sets(config.eval.sets, check, progress) if self.ranks.main else []

        torch.manual_seed(config.seed)  # the model's initial weights
        try:
            # a resumed run takes its weights from the saved state, not from model.init
            self.model = build(architecture(config.model) if resume else config.model).to(self.device)
        except (ValueError, TypeError, OSError) as error:
            raise TrainingError(f"model: {error}") from error
        self.forward_model: nn.Module = torch.compile(self.model) if train.compile else self.model
        dual = config.dualpath
        self.chain = make_chain(config)
        if config.augment.where == "device":
            self.chain = self.chain.to(self.device)
        held = [p for p in self.model.parameters() if p.requires_grad or dual.zero_missing_grads]
        self.optimizer = make_optimizer(config.optim, held)
        _warn_inexact_batchnorm(self.model, train.accumulation, self.ranks.world)
        try:
            aligner = make_aligner(dual.aligner, grouping=dual.grouping, **dual.aligner_options)
        except (ValueError, TypeError) as error:
            raise TrainingError(f"dualpath.aligner: {error}") from error
        self.engine = DualPathStep(
            self.forward_model,
            self.optimizer,
            aligner,
            loss=WeightedCrossEntropy(dual.class_weights),
            mode=dual.mode,
            precision=dual.precision,
            max_grad_norm=dual.max_grad_norm,
            loss_scaler=LossScaler() if dual.precision == "fp16" else None,
            zero_missing_grads=dual.zero_missing_grads,
        )
        self.augment_rng = torch.Generator(self.device).manual_seed(config.seed * 1_000_003 + self.ranks.rank)
        data = config.data
        dataset: Dataset = AudioDataset(
            self.train_records,
            dataset_root(data.train),
            length=data.crop_length,
            crop=data.crop_policy,
            sample_rate=data.sample_rate,
            seed=config.seed,
        )
        in_loader = config.augment.where == "loader"
        if in_loader:
            dataset = PairedDataset(dataset, self.chain, config.augment.order, config.seed)
        self.loader = ResumableLoader(
            dataset,
            self.micro_batch,
            shuffle=True,
            seed=config.seed,
            num_workers=data.workers,
            drop_last=True,
            rank=self.ranks.rank,
            world_size=self.ranks.world,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate_pairs if in_loader else None,
        )
        micro_batches = len(self.loader.sampler) // self.micro_batch
        self.steps_per_epoch = micro_batches // train.accumulation
        if train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, train.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"train data: {len(self.train_records)} utterances make no full step of "
                f"{train.batch_size} per path; lower train.batch_size"
            )
        self.best = BestCheckpoints(self.run_dir / "checkpoints", train.n_best)
        self.progress = Progress(history=[])
        self.meter = ConflictMeter()
        self.sums: dict[str, float] = {}
        if resume:
            self._load_state()
        elif self.ranks.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")
        self.logger = RunLogger(
            self.run_dir,
            tensorboard=config.logging.tensorboard,
            csv=config.logging.csv,
            enabled=self.ranks.main,
            resume_step=self.progress.step if resume else None,
            resume_epoch=self.progress.epoch if resume else None,
        )

    # ------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until the epochs run out or dev loss stops improving; average the n best; score
        the eval sets. Returns the run's results (also written to ``results.json``)."""
        train = self.config.train
        try:
            while not self.progress.stopped and self.progress.epoch < train.epochs:
                self._train_epoch()
                self._end_epoch()
            results = self._finish()
        finally:
            self.logger.close()
        return results

    def _train_epoch(self) -> None:
        config, progress = self.config, self.progress
        if progress.epoch_step == 0:
            self.loader.set_epoch(progress.epoch)
            self.meter.reset()
            self.sums = {"seconds": 0.0}
        epoch_started = time.monotonic()
        total = self.config.train.epochs * self.steps_per_epoch
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=progress.epoch_step,
            unit="step",
            leave=False,
            desc=f"epoch {progress.epoch + 1}/{config.train.epochs}",
            disable=not (config.logging.progress and self.ranks.main),
        )
        started, utterances = time.monotonic(), 0
        micro = 0
        for audio, augmented, labels in self._batches():
            self.engine.accumulate(audio, augmented.audio, labels)
            micro += 1
            if micro < config.train.accumulation:
                continue
            micro = 0
            lr = learning_rate(config.optim, progress.step, progress.epoch, total)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            stats = self.engine.step().as_dict()
            progress.step += 1
            progress.epoch_step += 1
            utterances += labels.shape[0] * config.train.accumulation * self.ranks.world
            self.meter.update(stats)
            for key in ("loss_orig", "loss_aug"):
                if stats[key] is not None and math.isfinite(stats[key]):
                    self.sums[key] = self.sums.get(key, 0.0) + stats[key]
            if progress.step % config.logging.every_steps == 0:
                self.logger.log_step(
                    progress.step, progress.epoch + 1, {**stats, "lr": lr, **summarise_augmentation(augmented.params)}
                )
            bar.update()
            bar.set_postfix(
                loss_o=f"{stats['loss_orig']:.3f}",
                loss_a=f"{stats['loss_aug']:.3f}",
                conflict=f"{self.meter.rate:.0%}" if self.meter.steps else "-",
                utt_s=f"{utterances / max(1e-9, time.monotonic() - started):.0f}",
            )
            every = config.train.save_every_steps
            if every and progress.step % every == 0 and progress.epoch_step < self.steps_per_epoch:
                self.sums["seconds"] = self.sums.get("seconds", 0.0) + time.monotonic() - epoch_started
                epoch_started = time.monotonic()
                self._save_state()
            if progress.epoch_step >= self.steps_per_epoch:
                break
        bar.close()
        self.sums["seconds"] = self.sums.get("seconds", 0.0) + time.monotonic() - epoch_started

    def _batches(self) -> Iterator[tuple[torch.Tensor, Augmented, torch.Tensor]]:
        """The loader's batches on the device with their augmented copies, made on the device or
        received from the loader workers (``augment.where``)."""
        device = self.device
        for batch in self.loader:
            if self.config.augment.where == "loader":
                audio, augmented_audio, labels, params, _ = batch
                augmented = Augmented(augmented_audio.to(device, non_blocking=True), params)
                yield audio.to(device, non_blocking=True), augmented, labels.to(device, non_blocking=True)
            else:
                audio, labels, _ = batch
                audio = audio.to(device, non_blocking=True)
                yield audio, self.chain.augment(audio, self.augment_rng), labels.to(device, non_blocking=True)

    def _end_epoch(self) -> None:
        progress, train = self.progress, self.config.train
        steps = max(1, progress.epoch_step)
        record: dict[str, Any] = {
            "epoch": progress.epoch + 1,
            "step": progress.step,
            "train_loss_orig": self.sums.get("loss_orig", math.nan) / steps,
            "train_loss_aug": self.sums.get("loss_aug", math.nan) / steps,
            **self.meter.as_dict(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_seconds": self.sums.get("seconds", 0.0),
        }
        if self.dev_records is not None:
            record.update(self._dev_metrics())
            metric = record["dev_loss"]
        else:
            metric = record["train_loss_orig"]
        improved = math.isfinite(metric) and metric < progress.best_metric
        if improved:
            progress.best_metric, progress.best_epoch, progress.bad_epochs = metric, progress.epoch + 1, 0
        else:
            progress.bad_epochs += 1
        if self.ranks.main:
            self.best.consider(progress.epoch + 1, metric, self.model.state_dict(), self._meta(record))
        progress.history.append(record)
        self.logger.log_epoch(progress.epoch + 1, record)
        progress.stopped = train.patience is not None and progress.bad_epochs >= train.patience
        progress.epoch += 1
        progress.epoch_step = 0
        self._save_state()
        if self.config.logging.progress and self.ranks.main:
            dev = (
                f", dev loss {record['dev_loss']:.4f}, dev EER {record['dev_eer']:.2%}" if "dev_loss" in record else ""
            )
            print(
                f"epoch {record['epoch']}: train loss {record['train_loss_orig']:.4f}/"
                f"{record['train_loss_aug']:.4f} (orig/aug), conflicts {record['conflict_rate']:.1%}{dev}"
                f"{' (best)' if improved else ''}",
                flush=True,
            )

    def _dev_metrics(self, with_scores: bool = False) -> Any:
        """Dev loss (the training loss, class weights included; pooled or per batch by
        ``train.dev_loss``) and EER of the current weights."""
        data = self.config.data
        _, logits, labels = self._predict(self.dev_records, dataset_root(data.dev), data.crop_length, "head")
        train = self.config.train
        batch = train.dev_batch_size if train.dev_loss == "batch_mean" else None
        loss = set_loss(WeightedCrossEntropy(self.config.dualpath.class_weights), logits, labels, batch)
        scores, labels = scores_from_logits(logits, self.config.eval.score).numpy(), labels.numpy()
        metrics = {"dev_loss": loss, "dev_eer": float(eer(scores[labels == 1], scores[labels == 0])[0])}
        return (metrics, scores, labels) if with_scores else metrics

    def _predict(self, records: list, root: Path, length: int | None, crop: str) -> tuple[list[str], Any, Any]:
        """Every record scored once: shards over the ranks, gathered and put back in order."""
        dataset = AudioDataset(records, root, length=length, crop=crop, sample_rate=self.config.data.sample_rate)
        shard = list(range(self.ranks.rank, len(records), self.ranks.world))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, shard),
            batch_size=self.config.eval.batch_size,
            num_workers=self.config.data.workers,
            collate_fn=collate,
        )
        ids, logits, labels = predict(self.model, loader, self.device, AUTOCAST[self.config.dualpath.precision])
        if self.ranks.world > 1:
            parts: list[Any] = [None] * self.ranks.world
            dist.all_gather_object(parts, (ids, logits, labels))
            order = {record.utt_id: i for i, record in enumerate(records)}
            merged = sorted(
                ((utt, lg, lb) for part in parts for utt, lg, lb in zip(*part)), key=lambda item: order[item[0]]
            )
            ids = [utt for utt, _, _ in merged]
            logits = torch.stack([lg for _, lg, _ in merged])
            labels = torch.stack([lb for _, _, lb in merged])
        return ids, logits, labels

    def _finish(self) -> dict[str, Any]:
        """The exact average of the n best checkpoints becomes the model, calibrated on dev and
        saved as ``final.safetensors``; the eval sets are scored with it (by rank 0)."""
        averaged = [epoch for epoch, _ in self.best.entries] if self.ranks.main else []
        if self.ranks.main and averaged:  # none kept only when every epoch's metric was NaN: keep the last weights
            self.model.load_state_dict(average_weights(self.best.paths))
        if self.ranks.world > 1:
            broadcast_module_(self.model)
        results: dict[str, Any] = {
            "name": self.config.name,
            "seed": self.config.seed,
            "paper_row": self.config.paper_row,
            "epochs": self.progress.epoch,
            "steps": self.progress.step,
            "best_epoch": self.progress.best_epoch,
            "skipped_steps": self.engine.skipped_steps,
            "averaged_epochs": averaged,
            **_pooled(self.progress.history),
        }
        calibration = None
        if self.dev_records is not None:
            results["dev"], scores, labels = self._dev_metrics(with_scores=True)
            calibration = fit_calibration(scores[labels == 1], scores[labels == 0])
        if self.ranks.main:
            meta = self._meta({"averaged_epochs": averaged, **results.get("dev", {})})
            if calibration is not None:
                meta["calibration"] = calibration.as_dict()
            save_weights(self.run_dir / "final.safetensors", self.model.state_dict(), meta)
            if self.config.eval.sets:
                detector = Detector(self.model.eval(), self.config, calibration, self.run_dir / "final.safetensors")
                evaluated = evaluate_sets(
                    detector, self.eval_sets, self.run_dir, self.device, progress=self.config.logging.progress
                )
                results["eval"] = evaluated["sets"]
            results["history"] = self.progress.history
            _write_json(self.run_dir / "results.json", results)
        if self.ranks.world > 1:
            dist.barrier()
        return results

    # ------------------------------------------------------------------------------------------
    def _meta(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "config": config_to_dict(self.config),
            "model": dict(self.config.model),
            "epoch": self.progress.epoch + 1,
            "step": self.progress.step,
            "metrics": dict(extra),
        }

    def _rank_state(self) -> dict[str, Any]:
        return {"rng": capture_rng(), "augment_rng": self.augment_rng.get_state(), "loader": self.loader.state_dict()}

    def _save_state(self) -> None:
        """The whole training state, written by rank 0 (with every rank's RNGs gathered)."""
        ranks: list[Any] = [self._rank_state()]
        if self.ranks.world > 1:
            ranks = [None] * self.ranks.world
            dist.all_gather_object(ranks, self._rank_state())
        if not self.ranks.main:
            return
        progress = {k: v for k, v in vars(self.progress).items()}
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "engine": self.engine.state_dict(),
            "ranks": ranks,
            "progress": progress,
            "best": self.best.state_dict(),
            "meter": self.meter.state_dict(),
            "sums": dict(self.sums),
            "world": self.ranks.world,
        }
        self.logger.flush()  # the logs then cover at least every step the saved state has done
        save_state(self.run_dir / "state", state)

    def _load_state(self) -> None:
        folder = self.run_dir / "state"
        if not folder.exists():
            raise TrainingError(f"{self.run_dir} has no saved training state (state/) to resume from")
        state = load_state(folder)
        if state["world"] != self.ranks.world:
            raise TrainingError(
                f"{folder} was saved by {state['world']} process(es); resume with the same number "
                f"(now {self.ranks.world})"
            )
        check_architecture(self.model, state["model"], folder)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.engine.load_state_dict(state["engine"])
        mine = state["ranks"][self.ranks.rank]
        self.loader.load_state_dict(mine["loader"])
        self.augment_rng.set_state(mine["augment_rng"])
        restore_rng(mine["rng"])
        self.progress = Progress(**state["progress"])
        self.best.load_state_dict(state["best"])
        self.meter.load_state_dict(state["meter"])
        self.sums = dict(state["sums"])


def _warn_inexact_batchnorm(model: nn.Module, accumulation: int, world: int) -> None:
    """Micro-batches and ranks normalise with their own BatchNorm statistics, so the step is not
    that of one batch of ``train.batch_size`` (everything else is exact): say so before training."""
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if (accumulation > 1 or world > 1) and any(isinstance(m, norms) for m in model.modules()):
        warnings.warn(
            f"train.accumulation {accumulation} x {world} process(es) with a BatchNorm model: each "
            "micro-batch is normalised by its own statistics and updates the running ones once, so "
            "the step is not exactly that of one batch of train.batch_size (it is with accumulation 1 "
            "on one process)",
            stacklevel=3,
        )


def _pooled(history: list[dict[str, Any]]) -> dict[str, float]:
    """Conflict rate over all epochs' steps with a defined flag, and the training wall time."""
    flagged = sum(record.get("flagged_steps", 0) for record in history)
    return {
        "conflict_rate": sum(record.get("conflicts", 0) for record in history) / flagged if flagged else math.nan,
        "train_seconds": sum(record.get("train_seconds", 0.0) for record in history),
    }


def _resumable_config(run_dir: Path) -> ExperimentConfig:
    path = run_dir / "config.yaml"
    if not path.exists():
        raise TrainingError(f"{run_dir} holds no run to resume (no config.yaml)")
    return load_config(path)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_dir_for(config: ExperimentConfig, seed_folder: bool = False) -> Path:
    folder = Path(config.output_dir) / config.name
    return folder / f"seed-{config.seed}" if seed_folder else folder


def train(config: ExperimentConfig | None, run_dir: Path | None = None, *, resume: bool = False) -> dict[str, Any]:
    """Build a ``Trainer`` and fit it: a new run of ``config`` (in ``run_dir``, by default
    ``output_dir/name``), or with ``resume`` the run saved in ``run_dir``."""
    if run_dir is None:
        if config is None:
            raise TrainingError("give a config or the run folder to resume")
        run_dir = run_dir_for(config)
    try:
        trainer = Trainer(config, run_dir, resume=resume)
    except DataError as error:
        raise TrainingError(str(error)) from error
    return trainer.fit()
