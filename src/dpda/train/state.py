"""The training state of a run, saved so that a killed run resumes bit-identically.

Everything random is either keyed (crops by (seed, epoch, utterance)) or carried here: the global
RNGs and the augmentation generator of every rank, the loader position, the optimizer, the
aligner's EMA, and the loop's own progress, conflict counts and epoch sums.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch.distributed as dist

from dpda.checkpoint import capture_rng, check_architecture, load_state, restore_rng, save_state
from dpda.results import EpochRecord
from dpda.train.run import EpochSums, Progress, Ranks, Run, TrainingError


def _rank_state(run: Run) -> dict[str, Any]:
    return {"rng": capture_rng(), "augment_rng": run.augment_rng.get_state(), "loader": run.loader.state_dict()}


def save_training_state(run: Run) -> None:
    """The whole training state, written by rank 0 (with every rank's RNGs gathered)."""
    ranks: list[Any] = [_rank_state(run)]
    if run.ranks.world > 1:
        ranks = [None] * run.ranks.world
        dist.all_gather_object(ranks, _rank_state(run))
    if not run.ranks.main:
        return
    progress = dataclasses.asdict(run.progress)
    progress["history"] = [record.to_json() for record in run.progress.history]
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "engine": run.engine.state_dict(),
        "ranks": ranks,
        "progress": progress,
        "best": run.best.state_dict(),
        "meter": run.meter.state_dict(),
        "sums": dataclasses.asdict(run.sums),
        "world": run.ranks.world,
    }
    run.logger.flush()  # the logs then cover at least every step the saved state has done
    save_state(run.folder / "state", state)


def read_training_state(folder: Path, ranks: Ranks) -> dict[str, Any]:
    """The state saved in ``folder/state``, refused unless this many processes saved it."""
    state_folder = folder / "state"
    if not state_folder.exists():
        raise TrainingError(f"{folder} has no saved training state (state/) to resume from")
    state = load_state(state_folder)
    if state["world"] != ranks.world:
        raise TrainingError(
            f"{state_folder} was saved by {state['world']} process(es); resume with the same number (now {ranks.world})"
        )
    return state


def restore_training_state(run: Run, state: dict[str, Any]) -> None:
    """Put ``state`` (from :func:`read_training_state`) into the freshly built ``run``."""
    check_architecture(run.model, state["model"], run.folder / "state")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.engine.load_state_dict(state["engine"])
    mine = state["ranks"][run.ranks.rank]
    run.loader.load_state_dict(mine["loader"])
    run.augment_rng.set_state(mine["augment_rng"])
    restore_rng(mine["rng"])
    progress = dict(state["progress"])
    progress["history"] = [EpochRecord.from_json(record, "state: history") for record in progress["history"]]
    run.progress = Progress(**progress)
    run.best.load_state_dict(state["best"])
    run.meter.load_state_dict(state["meter"])
    run.sums = EpochSums(**state["sums"])
