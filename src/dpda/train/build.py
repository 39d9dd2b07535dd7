"""A run's parts, built from its config: processes, device, data, model, augmentation, optimizer,
aligner, engine, loader, checkpoints and logs, in one typed bundle that the training loop
(:mod:`dpda.train.trainer`) walks. Everything that can refuse a config refuses it here, before the
first step.
"""

from __future__ import annotations

import os
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from dpda.align import make_aligner
from dpda.augment import build_chain, load_chain
from dpda.augment.chain import AugmentationChain
from dpda.augment.summary import PREFIX
from dpda.checkpoint import BestCheckpoints
from dpda.config import ExperimentConfig, OptimConfig, save_config
from dpda.data import AudioDataset, ResumableLoader, Utterance
from dpda.data.sets import DataError, dataset_root, read_dataset
from dpda.dualpath import DualPathStep, LossScaler, StepStats, WeightedCrossEntropy
from dpda.evaluate.evaluation import read_eval_sets
from dpda.models import UntrustedCodeError, architecture, build
from dpda.results import EpochRecord
from dpda.train.folder import no_space_error, plan, take
from dpda.train.logger import RunLogger
from dpda.train.paired import PairedDataset, collate_pairs
from dpda.train.run import Ranks, Run, TrainingError
from dpda.train.state import read_training_state, restore_training_state


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


def run_dir_for(config: ExperimentConfig, seed_folder: bool = False) -> Path:
    folder = Path(config.output_dir) / config.name
    return folder / f"seed-{config.seed}" if seed_folder else folder


def build_run(config: ExperimentConfig | None, folder: Path, *, resume: bool = False, trust_code: bool = False) -> Run:
    """The parts of a new run of ``config`` in ``folder``, or with ``resume`` of the run saved
    there (its own config; its training state restored). A folder without a saved state starts
    anew (:mod:`dpda.train.folder`). A write that finds no room is a ``TrainingError`` naming it.
    A model that imports code (``custom``) is built from the caller's ``config``, or from the
    folder's own config when it equals that or with ``trust_code``: never from a folder's word alone."""
    given = config
    config, resume = plan(folder, config, resume)
    try:
        return _build(config, folder, resume, trust_code or config == given)
    except DataError as error:
        raise TrainingError(str(error)) from error
    except OSError as error:
        full = no_space_error(error, folder)
        if full is None:
            raise
        raise full from error


def _build(config: ExperimentConfig, folder: Path, resume: bool, trust_code: bool) -> Run:
    data, train, dual = config.data, config.train, config.dualpath
    if data.train is None:
        raise TrainingError("data.train: a training protocol is required (see configs/default.yaml)")
    ranks = init_distributed(choose_device(train.device, Ranks()).type)
    device = choose_device(train.device, ranks)
    per_step = train.accumulation * ranks.world
    if train.batch_size % per_step:
        raise TrainingError(
            f"train.batch_size {train.batch_size} is not divisible by accumulation "
            f"{train.accumulation} x {ranks.world} process(es)"
        )
    micro_batch = train.batch_size // per_step
    if train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # NaN-filling every new tensor only helps find reads of uninitialised memory; it made
        # the batched augmentations 50x slower.
        # the module is an instance of a ModuleType subclass with this property, which mypy cannot see
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    progress = config.logging.progress and ranks.main
    train_records = read_dataset(data.train, "train", data.validate, progress=progress)
    dev_records = read_dataset(data.dev, "dev", data.validate, progress=progress) if data.dev else None
    eval_sets = read_eval_sets(config.eval.sets, data.validate, progress) if ranks.main else []

    torch.manual_seed(config.seed)  # the model's initial weights
    try:
        # a resumed run takes its weights from the saved state, not from model.init
        model = build(architecture(config.model) if resume else config.model, trust_code=trust_code).to(device)
    except UntrustedCodeError as error:
        raise TrainingError(f"{folder / 'config.yaml'}: {error}") from None
    except (ValueError, TypeError, OSError) as error:
        raise TrainingError(f"model: {error}") from error
    chain = make_chain(config)
    if config.augment.where == "device":
        chain = chain.to(device)
    optimizer = make_optimizer(
        config.optim, [p for p in model.parameters() if p.requires_grad or dual.zero_missing_grads]
    )
    _warn_inexact_batchnorm(model, train.accumulation, ranks.world)
    try:
        aligner = make_aligner(dual.aligner, grouping=dual.grouping, **dual.aligner_options)
    except (ValueError, TypeError) as error:
        raise TrainingError(f"dualpath.aligner: {error}") from error
    engine = DualPathStep(
        # torch.compile wraps a Module in an OptimizedModule, a Module; its stub says Callable
        cast(nn.Module, torch.compile(model)) if train.compile else model,
        optimizer,
        aligner,
        loss=WeightedCrossEntropy(dual.class_weights),
        mode=dual.mode,
        precision=dual.precision,
        max_grad_norm=dual.max_grad_norm,
        loss_scaler=LossScaler() if dual.precision == "fp16" else None,
        zero_missing_grads=dual.zero_missing_grads,
        layer_grouping="none" if dual.mode == "concat" else config.logging.layer_conflicts,
    )
    loader = _train_loader(config, train_records, dataset_root(data.train), chain, micro_batch, ranks, device)
    steps_per_epoch = len(loader.sampler) // micro_batch // train.accumulation
    if train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, train.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise TrainingError(
            f"train data: {len(train_records)} utterances make no full step of {train.batch_size} per path; "
            "lower train.batch_size"
        )
    with ExitStack() as on_failure:  # the lock is let go if the run cannot be built
        lock = take(folder, config, resume, ranks)
        if lock is not None:
            on_failure.callback(lock.release)
        state = read_training_state(folder, ranks) if resume else None
        if state is None and ranks.main:
            save_config(config, folder / "config.yaml")
        run = Run(
            config=config,
            folder=folder,
            ranks=ranks,
            device=device,
            micro_batch=micro_batch,
            steps_per_epoch=steps_per_epoch,
            train_records=train_records,
            dev_records=dev_records,
            eval_sets=eval_sets,
            model=model,
            chain=chain,
            optimizer=optimizer,
            engine=engine,
            augment_rng=torch.Generator(device).manual_seed(config.seed * 1_000_003 + ranks.rank),
            loader=loader,
            best=BestCheckpoints(folder / "checkpoints", train.kept_checkpoints),
            logger=RunLogger(
                folder,
                step_columns=step_columns(chain),
                epoch_columns=EpochRecord.columns(with_dev=dev_records is not None),
                layer_columns=engine.layer_names,
                tensorboard=config.logging.tensorboard,
                csv=config.logging.csv,
                enabled=ranks.main,
                resume_step=None if state is None else state["progress"]["step"],
                resume_epoch=None if state is None else state["progress"]["epoch"],
            ),
            lock=lock,
        )
        if state is not None:
            restore_training_state(run, state)
        on_failure.pop_all()
    return run


def step_columns(chain: AugmentationChain) -> list[str]:
    """The columns of ``steps.csv``: the engine's step statistics, the learning rate, and the
    per-batch mean of every parameter the augmentation chain declares."""
    return [*StepStats.names(), "lr", *(PREFIX + name for name in chain.param_names())]


def _train_loader(
    config: ExperimentConfig,
    records: list[Utterance],
    root: Path,
    chain: AugmentationChain,
    micro_batch: int,
    ranks: Ranks,
    device: torch.device,
) -> ResumableLoader:
    """Shuffled, sharded micro-batches of crops; with ``augment.where: loader`` each comes with
    its augmented copy, made in the loader workers."""
    data = config.data
    audio = AudioDataset(
        records, root, length=data.crop_length, crop=data.crop_policy, sample_rate=data.sample_rate, seed=config.seed
    )
    in_loader = config.augment.where == "loader"
    dataset: Dataset = PairedDataset(audio, chain, config.augment.order, config.seed) if in_loader else audio
    return ResumableLoader(
        dataset,
        micro_batch,
        shuffle=True,
        seed=config.seed,
        num_workers=data.workers,
        drop_last=True,
        rank=ranks.rank,
        world_size=ranks.world,
        pin_memory=device.type == "cuda",
        collate_fn=collate_pairs if in_loader else None,
    )


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
            stacklevel=4,
        )
