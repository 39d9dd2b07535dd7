"""What a run folder holds, and how a training takes it over, so that a kill at any moment leaves a
folder that is either resumable or restartable with the command that made it.

- resumable: ``config.yaml`` and a saved training state (``state/``). ``dpda train --resume DIR``
  continues it; ``dpda train CONFIG`` refuses (the folder holds a run).
- restartable: ``config.yaml`` but no saved state (killed before the first state save, which
  with the shipped configs is all of epoch 1). ``dpda train CONFIG`` with the same config, and
  ``dpda train --resume DIR`` (with the folder's own config), start it anew. What the killed
  attempt wrote (logs, CSVs, TensorBoard events, checkpoints) is moved, not deleted, into
  ``DIR/.aborted-<UTC time>/`` for a look, and a warning names it; delete it at will.
- new: no ``config.yaml``: ``dpda train CONFIG`` starts there.

A config that differs from the folder's ``config.yaml`` is another run's: refused, naming the keys
that differ.

The decision is made once before the run is built (so a refusal comes first, and a bad config
still leaves nothing behind) and checked again once rank 0, the only writer, holds the folder's
lock (:mod:`dpda.train.lock`). Under the lock, before anything is written: the temporaries of
killed writers are removed (all of them: nothing else writes there), and a state save killed
between its two renames is put back (``dpda.checkpoint.save_state``). The other ranks wait for
rank 0's word and stop with it, so a refusal cannot leave them waiting for each other.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch.distributed as dist

from dpda.atomic import NO_SPACE, remove_orphans
from dpda.config import ExperimentConfig, config_to_dict, load_config
from dpda.errors import listed
from dpda.train.lock import LOCK_FILE, RunLock
from dpda.train.run import Ranks, TrainingError

CONFIG = "config.yaml"
STATE = "state"
ABORTED = ".aborted-"
_SHOWN = 5  # differing keys an error lists


def plan(folder: Path, config: ExperimentConfig | None, resume: bool) -> tuple[ExperimentConfig, bool]:
    """The config a training in ``folder`` uses (with ``resume``, the folder's own) and whether it
    continues a saved state; refuses a folder that is not this run's to start or to resume."""
    saved = folder / CONFIG
    if not saved.is_file():
        if resume:
            raise TrainingError(f"{folder} holds no run to resume (no {CONFIG})")
        if config is None:
            raise TrainingError("a config is required to start a run")
        return config, False
    own = load_config(saved)
    if resume:
        return own, _has_state(folder)
    if config is None:
        raise TrainingError("a config is required to start a run")
    if own != config:
        raise TrainingError(
            f"{folder} holds another run: its {CONFIG} differs in {_differences(own, config)}; choose another "
            f"name/output_dir, or continue that run with `dpda train --resume {folder}`"
        )
    if _has_state(folder):
        raise TrainingError(
            f"{folder} already holds a run; continue it with `dpda train --resume {folder}` or choose "
            "another name/output_dir"
        )
    return config, False


def take(folder: Path, config: ExperimentConfig, resume: bool, ranks: Ranks) -> RunLock | None:
    """Rank 0 locks ``folder`` and makes it ready for a training that does (``resume``) or does
    not continue its state, as :func:`plan` decided; every rank gets rank 0's lock or its error."""
    lock: RunLock | None = None
    error: Exception | None = None
    if ranks.main:
        try:
            lock = _take(folder, config, resume)
        except Exception as caught:  # a bug's too: the other ranks would wait forever
            error = caught
    if ranks.world > 1:
        shared = [None if error is None else str(error)]
        dist.broadcast_object_list(shared)
        if error is None and shared[0] is not None:
            error = TrainingError(f"rank 0: {shared[0]}")
    if error is not None:
        raise error
    return lock


def _take(folder: Path, config: ExperimentConfig, resume: bool) -> RunLock:
    lock = RunLock(folder)
    try:
        remove_orphans(folder, locked=True)
        _put_back_state(folder)
        if plan(folder, config, resume)[1] != resume:
            raise TrainingError(f"{folder} changed while this training was being built; run the command again")
        if not resume and (folder / CONFIG).exists():
            _restart(folder)
    except BaseException:
        lock.release()
        raise
    return lock


def _has_state(folder: Path) -> bool:
    return (folder / STATE).is_dir() or any(folder.glob(f".{STATE}.old-*"))


def _put_back_state(folder: Path) -> None:
    """A save killed between its two renames left only the previous state, as ``.state.old-<pid>``:
    it goes back into place; beside a complete ``state/`` such copies are stale."""
    left = sorted(folder.glob(f".{STATE}.old-*"), key=lambda path: path.stat().st_mtime)
    if left and not (folder / STATE).exists():
        os.replace(left.pop(), folder / STATE)
    for stale in left:
        shutil.rmtree(stale)


def _restart(folder: Path) -> None:
    """Move what a killed attempt wrote beside ``config.yaml`` aside, and say so."""
    debris = [p for p in folder.iterdir() if p.name not in (CONFIG, LOCK_FILE) and not p.name.startswith(ABORTED)]
    moved = ""
    if debris:
        aside = _new_folder(folder, ABORTED + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        for path in debris:
            os.replace(path, aside / path.name)
        moved = f"; what the killed attempt wrote is in {aside}"
    warnings.warn(
        f"{folder}: no saved training state (killed before its first save?): starting it anew from its {CONFIG}{moved}",
        RuntimeWarning,
        stacklevel=2,
    )


def _new_folder(parent: Path, name: str) -> Path:
    attempt = 0
    while True:
        path = parent / (name if attempt == 0 else f"{name}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            attempt += 1


def _differences(saved: ExperimentConfig, given: ExperimentConfig) -> str:
    there, here = _dotted(config_to_dict(saved)), _dotted(config_to_dict(given))
    keys = sorted(key for key in there.keys() | here.keys() if there.get(key, None) != here.get(key, None))
    return listed([f"{key} ({there.get(key)!r} there, {here.get(key)!r} here)" for key in keys], _SHOWN)


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def no_space_error(error: OSError, folder: Path) -> TrainingError | None:
    """The error to show for a write into ``folder`` that found no room, or ``None`` for another
    error. The first such write in ``error``'s chain is named: closing the logs after it may
    fail for the same reason."""
    found: tuple[OSError, int] | None = None
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in NO_SPACE:
            found = cause, cause.errno
        cause = cause.__context__
    if found is None:
        return None
    first, code = found
    return TrainingError(
        f"{first.filename or f'a file in {folder}'}: {first.strerror} ({errno.errorcode[code]}): {NO_SPACE[code]}; "
        f"the run folder is left to resume: make room, then run `dpda train --resume {folder}`"
    )
