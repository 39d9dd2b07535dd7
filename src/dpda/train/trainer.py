"""``dpda train``: the loop over a built run (:func:`dpda.train.build.build_run`): the dual-path step
for every batch, dev evaluation, early stopping, the n best checkpoints averaged, the eval sets
scored. The learning rate is a function of the step and everything random is keyed or saved
(:mod:`dpda.train.state`), so a resumed run replays exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from dpda.augment.base import Augmented
from dpda.augment.summary import summarise_augmentation
from dpda.checkpoint import average_weights, save_weights
from dpda.config import ExperimentConfig, config_to_dict
from dpda.data import AudioDataset, Utterance
from dpda.data.dataset import collate
from dpda.data.sets import dataset_root
from dpda.dualpath import DivergedError, WeightedCrossEntropy, set_loss
from dpda.dualpath.sync import broadcast_module_
from dpda.evaluate import eer
from dpda.evaluate.calibration import Calibration, fit_calibration
from dpda.evaluate.evaluation import Detector, evaluate_sets
from dpda.evaluate.scoring import predict, scores_from_logits
from dpda.models import self_contained
from dpda.results import DevMetrics, EpochRecord, RunResults, pooled_conflict_rate
from dpda.train.build import build_run, run_dir_for
from dpda.train.folder import no_space_error
from dpda.train.run import EpochSums, Run, TrainingError
from dpda.train.state import save_training_state

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def train(
    config: ExperimentConfig | None, run_dir: Path | None = None, *, resume: bool = False, trust_code: bool = False
) -> RunResults:
    """A new run of ``config`` (in ``run_dir``, by default ``output_dir/name``), or with ``resume``
    the run saved in ``run_dir``: trained until the epochs run out or the dev loss stops
    improving, the n best averaged, the eval sets scored. The results are also in ``results.json``.
    ``trust_code``: a resumed folder's config may import a model class (``build_run``)."""
    if run_dir is None:
        if config is None:
            raise TrainingError("give a config or the run folder to resume")
        run_dir = run_dir_for(config)
    return fit(build_run(config, Path(run_dir), resume=resume, trust_code=trust_code))


def fit(run: Run) -> RunResults:
    """The loop: epochs until they run out or early stopping says so, then the final model. The
    run is closed at the end (its folder's lock let go); a write that finds no room is a
    ``TrainingError`` naming it, and the folder resumes from its last saved state."""
    try:
        try:
            while not run.progress.stopped and run.progress.epoch < run.config.train.epochs:
                train_epoch(run)
                end_epoch(run)
            return finish(run)
        finally:
            run.close()
    except OSError as error:
        full = no_space_error(error, run.folder)
        if full is None:
            raise
        raise full from error


def learning_rate(config: ExperimentConfig, step: int, epoch: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) in epoch ``epoch`` (0-based) of
    ``total_steps``: a linear warm-up to ``optim.lr``, then the schedule (the cosine one runs from
    ``lr`` at the warm-up's end to ``min_lr`` at the last step, as clovaai/aasist's per-step
    cosine annealing does without warm-up); ``train.swa_lr`` holds over the last
    ``swa_epochs`` epochs of the budget. A function of the step, so a resumed run replays it."""
    optim, train = config.optim, config.train
    if train.swa_lr is not None and epoch >= train.epochs - train.swa_epochs:
        return train.swa_lr
    lr = optim.lr
    warmup = optim.warmup_steps
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if optim.scheduler == "cosine":
        progress = min(step - warmup, total_steps - warmup) / max(1, total_steps - warmup)
        return optim.min_lr + (lr - optim.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    if optim.scheduler == "step":
        return lr * optim.gamma ** (epoch // optim.step_size)
    return lr


def train_epoch(run: Run) -> None:
    """Optimizer steps until the epoch is done (or the saved mid-epoch position is passed)."""
    config, progress = run.config, run.progress
    if progress.epoch_step == 0:
        run.loader.set_epoch(progress.epoch)
        run.meter.reset()
        run.sums = EpochSums()
    total = config.train.epochs * run.steps_per_epoch
    bar = tqdm(
        total=run.steps_per_epoch,
        initial=progress.epoch_step,
        unit="step",
        leave=False,
        desc=f"epoch {progress.epoch + 1}/{config.train.epochs}",
        disable=not (config.logging.progress and run.ranks.main),
    )
    started = epoch_started = time.monotonic()
    utterances = micro = 0
    for audio, augmented, labels in _batches(run):
        run.engine.accumulate(audio, augmented.audio, labels)
        micro += 1
        if micro < config.train.accumulation:
            continue
        micro = 0
        lr = learning_rate(config, progress.step, progress.epoch, total)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        stats = run.engine.step()
        progress.step += 1
        progress.epoch_step += 1
        utterances += labels.shape[0] * config.train.accumulation * run.ranks.world
        run.meter.update(stats)
        run.sums.add_losses(stats.loss_orig, stats.loss_aug)
        if progress.step % config.logging.every_steps == 0:
            row = {**stats.as_dict(), "lr": lr, **summarise_augmentation(augmented.params)}
            run.logger.log_step(progress.step, progress.epoch + 1, row)
            if stats.layers is not None:
                run.logger.log_layers(progress.step, progress.epoch + 1, stats.layers.cosines)
        bar.update()
        bar.set_postfix(
            loss_o=f"{stats.loss_orig:.3f}",
            loss_a=f"{stats.loss_aug:.3f}",
            conflict=f"{run.meter.rate:.0%}" if run.meter.steps else "-",
            utt_s=f"{utterances / max(1e-9, time.monotonic() - started):.0f}",
        )
        every = config.train.save_every_steps
        if every and progress.step % every == 0 and progress.epoch_step < run.steps_per_epoch:
            run.sums.seconds += time.monotonic() - epoch_started
            epoch_started = time.monotonic()
            save_training_state(run)
        if progress.epoch_step >= run.steps_per_epoch:
            break
    bar.close()
    run.sums.seconds += time.monotonic() - epoch_started


def _batches(run: Run) -> Iterator[tuple[torch.Tensor, Augmented, torch.Tensor]]:
    """The loader's batches on the device with their augmented copies, made on the device or
    received from the loader workers (``augment.where``)."""
    device = run.device
    for batch in run.loader:
        if run.config.augment.where == "loader":
            audio, augmented_audio, labels, params, _ = batch
            augmented = Augmented(augmented_audio.to(device, non_blocking=True), params)
            yield audio.to(device, non_blocking=True), augmented, labels.to(device, non_blocking=True)
        else:
            audio, labels, _ = batch
            audio = audio.to(device, non_blocking=True)
            yield audio, run.chain.augment(audio, run.augment_rng), labels.to(device, non_blocking=True)


def end_epoch(run: Run) -> None:
    """The epoch's record (dev metrics included), its checkpoint if among the n best, early
    stopping, and the state saved."""
    progress, meter = run.progress, run.meter
    loss_orig, loss_aug = run.sums.mean_losses(max(1, progress.epoch_step))
    dev = dev_metrics(run)[0] if run.dev_records is not None else None
    record = EpochRecord(
        epoch=progress.epoch + 1,
        step=progress.step,
        train_loss_orig=loss_orig,
        train_loss_aug=loss_aug,
        conflict_rate=meter.rate,
        mean_cosine=meter.mean_cosine,
        steps=meter.steps,
        skipped_steps=meter.skipped_steps,
        conflicts=meter.conflicts,
        flagged_steps=meter.flagged_steps,
        lr=run.optimizer.param_groups[0]["lr"],
        train_seconds=run.sums.seconds,
        dev_loss=None if dev is None else dev.dev_loss,
        dev_eer=None if dev is None else dev.dev_eer,
    )
    metric = record.train_loss_orig if dev is None else dev.dev_loss
    improved = math.isfinite(metric) and metric < progress.best_metric
    if improved:
        progress.best_metric, progress.best_epoch, progress.bad_epochs = metric, record.epoch, 0
    else:
        progress.bad_epochs += 1
    row = record.to_json()
    if run.ranks.main:  # SWA keeps the latest epochs: ranked by -epoch, the kept ones are the last run
        kept_by = metric if run.config.train.average == "n_best" else -record.epoch
        run.best.consider(record.epoch, kept_by, run.model.state_dict(), _meta(run, row))
    progress.history.append(record)
    run.logger.log_epoch(record.epoch, row)
    if run.engine.layer_names:
        run.logger.log_layer_epoch(record.epoch, meter.layers.rates(run.engine.layer_names))
    patience = run.config.train.patience
    progress.stopped = patience is not None and progress.bad_epochs >= patience
    progress.epoch += 1
    progress.epoch_step = 0
    save_training_state(run)
    if run.config.logging.progress and run.ranks.main:
        shown = "" if dev is None else f", dev loss {dev.dev_loss:.4f}, dev EER {dev.dev_eer:.2%}"
        print(
            f"epoch {record.epoch}: train loss {record.train_loss_orig:.4f}/{record.train_loss_aug:.4f} "
            f"(orig/aug), conflicts {record.conflict_rate:.1%}{shown}{' (best)' if improved else ''}",
            flush=True,
        )


def dev_metrics(run: Run) -> tuple[DevMetrics, np.ndarray, np.ndarray]:
    """Dev loss (the training loss, class weights included; pooled or per batch by
    ``train.dev_loss``) and EER of the current weights, with the scores and labels they came from."""
    config, dev_set = run.config, run.config.data.dev
    assert dev_set is not None and run.dev_records is not None  # build_run reads the dev records of data.dev
    ids, logits, labels = _predict(run, run.dev_records, dataset_root(dev_set), config.data.crop_length)
    batch = config.train.dev_batch_size if config.train.dev_loss == "batch_mean" else None
    loss = set_loss(WeightedCrossEntropy(config.dualpath.class_weights), logits, labels, batch)
    scores, labels = scores_from_logits(logits, config.eval.score).numpy(), labels.numpy()
    _refuse_overflowing_scores(ids, scores)
    return DevMetrics(loss, float(eer(scores[labels == 1], scores[labels == 0])[0])), scores, labels


def _refuse_overflowing_scores(ids: list[str], scores: np.ndarray) -> None:
    """Dev scores that are NaN/inf mean outputs that overflow (weights can stay finite): stop, as
    for a model gone non-finite, before its EER, a checkpoint or a calibration is made of them."""
    bad = [utt for utt, score in zip(ids, scores) if not np.isfinite(score)]
    if bad:
        raise DivergedError(
            f"the model diverged: its dev scores are NaN/inf for {len(bad)} of {len(ids)} utterances "
            f"(first {', '.join(bad[:3])}); no checkpoint is made of it. Lower optim.lr or set "
            "dualpath.max_grad_norm and start again"
        )


def _predict(run: Run, records: list[Utterance], root: Path, length: int | None) -> tuple[list[str], Any, Any]:
    """Every record scored once (head crops): shards over the ranks, gathered and put back in order."""
    config, ranks = run.config, run.ranks
    dataset = AudioDataset(records, root, length=length, crop="head", sample_rate=config.data.sample_rate)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, list(range(ranks.rank, len(records), ranks.world))),
        batch_size=config.eval.batch_size,
        num_workers=config.data.workers,
        collate_fn=collate,
    )
    ids, logits, labels = predict(run.model, loader, run.device, AUTOCAST[config.dualpath.precision])
    if ranks.world > 1:
        parts: list[Any] = [None] * ranks.world
        dist.all_gather_object(parts, (ids, logits, labels))
        order = {record.utt_id: i for i, record in enumerate(records)}
        merged = sorted(
            ((utt, lg, lb) for part in parts for utt, lg, lb in zip(*part)), key=lambda item: order[item[0]]
        )
        ids = [utt for utt, _, _ in merged]
        logits = torch.stack([lg for _, lg, _ in merged])
        labels = torch.stack([lb for _, _, lb in merged])
    return ids, logits, labels


def finish(run: Run) -> RunResults:
    """The exact average of the kept checkpoints (the n best, or SWA's last epochs) becomes the
    model, calibrated on dev and saved as ``final.safetensors``; the eval sets are scored with it
    (by rank 0). BatchNorm statistics are averaged like the weights, not recomputed."""
    main, progress = run.ranks.main, run.progress
    averaged = [epoch for epoch, _ in run.best.entries] if main else []
    if main and averaged:  # none kept only when every epoch's metric was NaN: keep the last weights
        run.model.load_state_dict(average_weights(run.best.paths))
    if run.ranks.world > 1:
        broadcast_module_(run.model)
    dev, calibration = None, None
    if run.dev_records is not None:
        dev, scores, labels = dev_metrics(run)
        calibration = fit_calibration(scores[labels == 1], scores[labels == 0])
    results = RunResults(
        name=run.config.name,
        seed=run.config.seed,
        paper_row=run.config.paper_row,
        epochs=progress.epoch,
        steps=progress.step,
        best_epoch=progress.best_epoch,
        skipped_steps=run.engine.skipped_steps,
        averaged_epochs=averaged,
        conflict_rate=pooled_conflict_rate(progress.history),
        train_seconds=sum(record.train_seconds for record in progress.history),
        dev=dev,
        eval=_score_eval_sets(run, calibration, averaged, dev) if main else None,
        history=progress.history,
    )
    if main:
        results.write(run.folder / "results.json")
    if run.ranks.world > 1:
        dist.barrier()
    return results


def _score_eval_sets(
    run: Run, calibration: Calibration | None, averaged: list[int], dev: DevMetrics | None
) -> dict[str, Any] | None:
    """``final.safetensors`` written, then the eval sets scored with it."""
    meta = _meta(run, {"averaged_epochs": averaged, **(dev.to_json() if dev is not None else {})})
    if calibration is not None:
        meta["calibration"] = calibration.as_dict()
    final = run.folder / "final.safetensors"
    save_weights(final, run.model.state_dict(), meta)
    if not run.config.eval.sets:
        return None
    detector = Detector(run.model.eval(), run.config, calibration, final)
    return evaluate_sets(detector, run.eval_sets, run.folder, run.device, progress=run.config.logging.progress).sets


def _meta(run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's metadata: the run's config, whose model config names no file (``self_contained``)."""
    model = self_contained(run.config.model, run.model)
    return {
        "config": {**config_to_dict(run.config), "model": model},
        "model": model,
        "epoch": run.progress.epoch + 1,
        "step": run.progress.step,
        "metrics": metrics,
    }
