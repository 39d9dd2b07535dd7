"""What a training run records: per-step and per-epoch scalars as CSV and TensorBoard events.

Files in the run folder (all written by rank 0 only; a logger built with ``enabled=False`` is a
no-op and creates nothing):

- ``steps.csv``: one row per logged optimizer step, columns ``step``, ``epoch``, then the values;
- ``epochs.csv``: one row per epoch, column ``epoch``, then the values;
- ``tensorboard/steps/``: events, scalar ``train/<key>`` at global step ``step``;
- ``tensorboard/epochs/``: events, scalar ``epoch/<key>`` at global step ``epoch``. Epoch scalars
  get a writer of their own so that each x-axis can be purged on resume by its own counter
  (TensorBoard shows the two folders as two runs).

Cells and scalars:

- ``None`` (a statistic not defined for that step) and a key absent from a row: an empty cell,
  no scalar;
- bools: ``1``/``0`` in the CSV, ``1.0``/``0.0`` in TensorBoard;
- ints: written as ints; floats: ``repr`` (round-trip exact), so NaN and infinities appear as
  ``nan``/``inf``/``-inf`` in the CSV. Non-finite values are *not* sent to TensorBoard (they
  break its axis ranges and smoothing): the CSV is the complete record, and a step whose
  gradients were not finite is marked by its ``skipped`` column.

Columns are the union of the keys seen so far, in first-seen order. When a row brings a key
not seen before, the file is rewritten with the extended header (the old rows get empty cells)
through a temporary file and ``os.replace``. Keys usually all appear in the first logged step;
a key first seen late (an augmentation stage that selected no utterance of the first batches)
costs one rewrite of the file so far, once per key.

Rows go through an ordinary buffered file, flushed at least every ``flush_secs`` seconds, on
:meth:`RunLogger.flush` and on close; nothing is fsynced per row. A run killed hard loses at
most the last ``flush_secs`` seconds of rows, which it redoes anyway on resume.

Fresh start and resume: without ``resume_step``/``resume_epoch`` the logger starts over: an
existing ``steps.csv``/``epochs.csv`` is overwritten and earlier event files in its TensorBoard
folders are deleted. With either given, the files are kept and continued, minus the rows a
killed run logged after its last saved state: rows of ``steps.csv`` with ``step > resume_step``
and rows of ``epochs.csv`` with ``epoch > resume_epoch`` (a bound left ``None`` keeps that file
whole). The writers get ``purge_step=resume + 1``, so TensorBoard hides the same events.

:func:`read_csv` reads either CSV back into columns; :class:`ConflictMeter` keeps an epoch's
gradient-conflict counts; :func:`summarise_augmentation` turns the augmentation chain's
per-utterance parameters into per-batch means for the step row.
"""

from __future__ import annotations

import csv as csvlib
import math
import operator
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dpda.atomic import atomic_path

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "EPOCHS_CSV",
    "STEPS_CSV",
    "TENSORBOARD_DIR",
    "ConflictMeter",
    "RunLogger",
    "read_csv",
    "summarise_augmentation",
]

STEPS_CSV = "steps.csv"
EPOCHS_CSV = "epochs.csv"
TENSORBOARD_DIR = "tensorboard"
AUGMENTATION_PREFIX = "aug/"

Value = float | int | bool | None


# ------------------------------------------------------------------------------------------------
# Augmentation parameters


def summarise_augmentation(params: Mapping[str, Any]) -> dict[str, float]:
    """``aug/<key>`` -> the batch mean of each per-utterance augmentation parameter.

    ``params`` maps keys to tensors whose first dimension is the batch (the chain's
    ``Augmented.params``). Bools give the fraction of utterances that are true. Floats are
    averaged over their non-NaN entries (``nanmean``): NaN marks an utterance a stage did not
    apply to. Integers (indices, codes, counts) are averaged over their non-negative entries:
    ``-1`` is the chain's fill for utterances a stage did not apply to. A key with no defined
    entry (all NaN, all ``-1``, or empty) is left out, as are complex tensors. Tensors of more
    than one dimension are averaged over all their defined entries.

    Cost: the tensors are concatenated where they are (one kernel) and copied to the host in
    one transfer (one synchronisation); the means are computed there, in float64, with a fixed
    number of numpy calls whatever the number of keys.

    >>> import torch
    >>> summarise_augmentation({"noise.applied": torch.tensor([True, False, False, True]),
    ...                         "noise.snr_db": torch.tensor([5.0, float("nan"), float("nan"), 15.0]),
    ...                         "reverb.rir_index": torch.tensor([-1, 2, -1, 4]),
    ...                         "codec.bitrate": torch.tensor([float("nan")] * 4)})
    {'aug/noise.applied': 0.5, 'aug/noise.snr_db': 10.0, 'aug/reverb.rir_index': 3.0}
    """
    keys: list[str] = []
    parts: list[torch.Tensor] = []
    integer: list[bool] = []
    for key, value in params.items():
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if tensor.numel() == 0 or tensor.is_complex():
            continue
        keys.append(key)
        parts.append(tensor.reshape(-1))
        integer.append(not (tensor.is_floating_point() or tensor.dtype == torch.bool))
    if not parts:
        return {}
    if len({part.device for part in parts}) > 1:
        parts = [part.cpu() for part in parts]
    sizes = [part.numel() for part in parts]
    # the empty float32 tensor lifts the common dtype to at least float32 (ints stay exact)
    parts.append(torch.empty(0, dtype=torch.float32, device=parts[0].device))
    flat = torch.cat(parts).cpu().numpy().astype(np.float64)
    segment = np.repeat(np.arange(len(keys)), sizes)
    defined = ~(np.isnan(flat) | ((flat < 0) & np.repeat(np.array(integer), sizes)))
    sums = np.bincount(segment, weights=np.where(defined, flat, 0.0), minlength=len(keys))
    counts = np.bincount(segment, weights=defined, minlength=len(keys))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums / counts).tolist()
    return {AUGMENTATION_PREFIX + key: mean for key, mean in zip(keys, means) if not math.isnan(mean)}


# ------------------------------------------------------------------------------------------------
# Conflict statistics


class ConflictMeter:
    """Running gradient-conflict statistics of an epoch, fed the engine's step statistics.

    ``update`` takes a mapping with (any of) ``skipped``, ``conflict`` and ``cosine``, as
    ``StepStats.as_dict()`` gives it; a missing key counts as ``None``. ``steps`` counts every
    update, ``skipped_steps`` those with ``skipped`` true. The conflict rate is over the steps
    whose ``conflict`` flag is defined (not ``None``: skipped steps and ``concat`` mode have
    none); the mean cosine over the steps with a finite ``cosine``. Both are NaN when no step
    qualifies.

    >>> meter = ConflictMeter()
    >>> meter.update({"skipped": False, "conflict": True, "cosine": -0.2})
    >>> meter.update({"skipped": False, "conflict": False, "cosine": 0.4})
    >>> meter.update({"skipped": True, "conflict": None, "cosine": None})
    >>> meter.as_dict()
    {'conflict_rate': 0.5, 'mean_cosine': 0.1, 'steps': 3, 'skipped_steps': 1, 'conflicts': 1, 'flagged_steps': 2}
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (call at the start of an epoch)."""
        self.steps = 0
        self.skipped_steps = 0
        self.flagged_steps = 0
        self.conflicts = 0
        self._cosine_sum = 0.0
        self._cosine_count = 0

    def update(self, stats: Mapping[str, Any]) -> None:
        """Count one optimizer step."""
        self.steps += 1
        if stats.get("skipped"):
            self.skipped_steps += 1
        conflict = stats.get("conflict")
        if conflict is not None:
            self.flagged_steps += 1
            self.conflicts += bool(conflict)
        cosine = stats.get("cosine")
        if cosine is not None and math.isfinite(cosine):
            self._cosine_sum += float(cosine)
            self._cosine_count += 1

    def state_dict(self) -> dict[str, float | int]:
        """The counters, for a training state that resumes mid-epoch."""
        return {
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "flagged_steps": self.flagged_steps,
            "conflicts": self.conflicts,
            "cosine_sum": self._cosine_sum,
            "cosine_count": self._cosine_count,
        }

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self.steps, self.skipped_steps = int(state["steps"]), int(state["skipped_steps"])
        self.flagged_steps, self.conflicts = int(state["flagged_steps"]), int(state["conflicts"])
        self._cosine_sum, self._cosine_count = float(state["cosine_sum"]), int(state["cosine_count"])

    @property
    def rate(self) -> float:
        """Conflicting steps over steps with a defined conflict flag; NaN when there are none."""
        return self.conflicts / self.flagged_steps if self.flagged_steps else math.nan

    @property
    def mean_cosine(self) -> float:
        """Mean cosine of the path gradients over steps where it is defined; NaN when none."""
        return self._cosine_sum / self._cosine_count if self._cosine_count else math.nan

    def as_dict(self) -> dict[str, float | int]:
        """``conflict_rate``, ``mean_cosine``, ``steps``, ``skipped_steps``, and the counts the rate
        is made of (``conflicts`` of ``flagged_steps``), so epochs can be pooled exactly."""
        return {
            "conflict_rate": self.rate,
            "mean_cosine": self.mean_cosine,
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "conflicts": self.conflicts,
            "flagged_steps": self.flagged_steps,
        }


# ------------------------------------------------------------------------------------------------
# CSV


def read_csv(path: str | os.PathLike[str]) -> dict[str, list[float | None]]:
    """The columns of a ``steps.csv``/``epochs.csv``: header name -> one value per row, a float,
    or ``None`` for an empty cell. A short row (a file cut by a crash) reads as empty cells."""
    with open(path, newline="", encoding="utf-8") as file:
        reader = csvlib.reader(file)
        header = next(reader, None)
        if header is None:
            return {}
        columns: list[list[float | None]] = [[] for _ in header]
        for line, row in enumerate(reader, start=2):
            if len(row) > len(header):
                raise ValueError(f"{path}:{line}: {len(row)} cells for {len(header)} columns")
            for position, column in enumerate(columns):
                cell = row[position] if position < len(row) else ""
                try:
                    column.append(float(cell) if cell else None)
                except ValueError:
                    raise ValueError(f"{path}:{line}: column {header[position]!r}: not a number: {cell!r}") from None
    return dict(zip(header, columns))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _write_rows(path: Path, header: list[str], rows: Iterable[list[str]]) -> None:
    """Replace ``path`` with ``header`` and ``rows`` (padded to the header's width) atomically."""
    width = len(header)
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csvlib.writer(file)
        writer.writerow(header)
        writer.writerows(row + [""] * (width - len(row)) for row in rows)


class _CsvTable:
    """One CSV file of the run: index columns, then value columns added as keys appear."""

    def __init__(self, path: Path, index: tuple[str, ...], keep: bool, upto: int | None, flush_secs: float) -> None:
        self.path = path
        self.index = index
        self.flush_secs = flush_secs
        self.columns: dict[str, int] = {}
        rows: list[list[str]] = []
        if keep and path.exists():
            header, rows = self._kept_rows(upto)
            self.columns = {key: position for position, key in enumerate(header[len(index) :])}
        _write_rows(path, self.header, rows)
        self._open()

    @property
    def header(self) -> list[str]:
        return [*self.index, *self.columns]

    def _kept_rows(self, upto: int | None) -> tuple[list[str], list[list[str]]]:
        with open(self.path, newline="", encoding="utf-8") as file:
            reader = csvlib.reader(file)
            header = next(reader, None) or list(self.index)
            if tuple(header[: len(self.index)]) != self.index or len(set(header)) != len(header):
                raise ValueError(
                    f"{self.path}: header {header} is not one this logger wrote "
                    f"(it starts with {list(self.index)}, names unique)"
                )
            rows, dropped = [], 0
            for row in reader:
                try:
                    position = int(row[0]) if len(row) == len(header) else None
                except ValueError:
                    position = None
                if position is None:
                    dropped += 1
                elif upto is None or position <= upto:
                    rows.append(row)
        if dropped:
            warnings.warn(
                f"{self.path}: dropped {dropped} malformed row(s) (cut short by a crash?)", RuntimeWarning, stacklevel=4
            )
        return header, rows

    def _open(self) -> None:
        self.file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed by close)
        self.writer = csvlib.writer(self.file)
        self.flushed = time.monotonic()

    def _extend(self, keys: list[str]) -> None:
        """Add columns for ``keys``: rewrite the file with the longer header."""
        self.file.close()
        with open(self.path, newline="", encoding="utf-8") as file:
            reader = csvlib.reader(file)
            next(reader, None)
            rows = list(reader)
        for key in keys:
            self.columns[key] = len(self.columns)
        _write_rows(self.path, self.header, rows)
        self._open()

    def append(self, index: tuple[int, ...], values: Mapping[str, Any]) -> None:
        columns = self.columns
        new = [key for key in values if key not in columns]
        if new:
            self._extend(new)
        offset = len(self.index)
        row = [""] * (offset + len(columns))
        row[:offset] = map(str, index)
        for key, value in values.items():
            row[offset + columns[key]] = _cell(value)
        self.writer.writerow(row)
        if time.monotonic() - self.flushed >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        self.file.flush()
        self.flushed = time.monotonic()

    def close(self) -> None:
        self.file.close()


# ------------------------------------------------------------------------------------------------
# TensorBoard


class _EventWriter:
    """A ``SummaryWriter`` written one event per call: all the scalars of a row in one summary
    (an ``add_scalar`` per key costs about 10x more)."""

    def __init__(self, folder: Path, prefix: str, keep: bool, resume: int | None, flush_secs: float) -> None:
        try:
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "TensorBoard logging needs the tensorboard package (pip install tensorboard); "
                "or turn it off (logging.tensorboard: false)"
            ) from error
        if not keep and folder.is_dir():
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        self.summary = Summary
        self.prefix = prefix
        self.tags: dict[str, str] = {}
        self.writer = SummaryWriter(
            log_dir=str(folder),
            purge_step=None if resume is None else resume + 1,
            max_queue=1000,
            flush_secs=max(1, round(flush_secs)),
        )

    def add(self, step: int, values: Mapping[str, Any]) -> None:
        summary = self.summary()
        add = summary.value.add
        tags = self.tags
        for key, value in values.items():
            if value is None:
                continue
            number = float(value)
            if not math.isfinite(number):
                continue
            tag = tags.get(key)
            if tag is None:
                tag = tags[key] = self.prefix + key
            add(tag=tag, simple_value=number)
        if summary.value:
            # the path torch's own add_scalar takes, here with every scalar in one summary
            self.writer._get_file_writer().add_summary(summary, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ------------------------------------------------------------------------------------------------
# The logger


def _counter(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name}: must be an int, got {value!r}")
    return operator.index(value)


class RunLogger:
    """Per-step and per-epoch scalars of a run to CSV and TensorBoard (see the module doc).

    ``enabled=False`` (ranks other than 0) makes every method a no-op and creates no file.
    ``resume_step``/``resume_epoch`` continue the files of a killed run from its last saved
    state; without them existing files are overwritten. ``flush_secs``: CSV rows and events
    reach the disk at least this often. Use as a context manager, or call :meth:`close`.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with RunLogger(folder, tensorboard=False) as logger:
    ...     logger.log_step(1, 0, {"loss_orig": 0.5, "conflict": True, "clip_coef": None})
    ...     logger.log_step(2, 0, {"loss_orig": 0.25, "conflict": False, "lr": 1e-4})
    >>> print((folder / "steps.csv").read_text(), end="")
    step,epoch,loss_orig,conflict,clip_coef,lr
    1,0,0.5,1,,
    2,0,0.25,0,,0.0001
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        tensorboard: bool = True,
        csv: bool = True,
        enabled: bool = True,
        resume_step: int | None = None,
        resume_epoch: int | None = None,
        flush_secs: float = 10.0,
    ) -> None:
        self.enabled = bool(enabled)
        self.folder = Path(folder)
        self._closed = False
        self._steps_csv: _CsvTable | None = None
        self._epochs_csv: _CsvTable | None = None
        self._steps_tb: _EventWriter | None = None
        self._epochs_tb: _EventWriter | None = None
        if not self.enabled:
            return
        resume_step = None if resume_step is None else _counter("resume_step", resume_step)
        resume_epoch = None if resume_epoch is None else _counter("resume_epoch", resume_epoch)
        if not flush_secs > 0:
            raise ValueError(f"flush_secs: must be positive, got {flush_secs!r}")
        keep = resume_step is not None or resume_epoch is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            if csv:
                self._steps_csv = _CsvTable(self.folder / STEPS_CSV, ("step", "epoch"), keep, resume_step, flush_secs)
                self._epochs_csv = _CsvTable(self.folder / EPOCHS_CSV, ("epoch",), keep, resume_epoch, flush_secs)
            if tensorboard:
                root = self.folder / TENSORBOARD_DIR
                self._steps_tb = _EventWriter(root / "steps", "train/", keep, resume_step, flush_secs)
                self._epochs_tb = _EventWriter(root / "epochs", "epoch/", keep, resume_epoch, flush_secs)
        except BaseException:
            self.close()
            raise

    def log_step(self, step: int, epoch: int, values: Mapping[str, Value]) -> None:
        """One row of ``steps.csv`` and the scalars ``train/<key>`` at global step ``step``."""
        if not self.enabled:
            return
        self._check_open()
        values = _without_index(values, {"step": step, "epoch": epoch})
        if self._steps_csv is not None:
            self._steps_csv.append((step, epoch), values)
        if self._steps_tb is not None:
            self._steps_tb.add(step, values)

    def log_epoch(self, epoch: int, values: Mapping[str, Value]) -> None:
        """One row of ``epochs.csv`` and the scalars ``epoch/<key>`` at global step ``epoch``."""
        if not self.enabled:
            return
        self._check_open()
        values = _without_index(values, {"epoch": epoch})
        if self._epochs_csv is not None:
            self._epochs_csv.append((epoch,), values)
        if self._epochs_tb is not None:
            self._epochs_tb.add(epoch, values)

    def flush(self) -> None:
        """Write buffered rows and events to disk (no fsync)."""
        if not self.enabled or self._closed:
            return
        for sink in self._sinks():
            sink.flush()

    def close(self) -> None:
        """Flush and close every file; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        for sink in self._sinks():
            sink.close()

    def _sinks(self) -> list[_CsvTable | _EventWriter]:
        return [s for s in (self._steps_csv, self._epochs_csv, self._steps_tb, self._epochs_tb) if s is not None]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"RunLogger({str(self.folder)!r}) is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _without_index(values: Mapping[str, Value], index: Mapping[str, int]) -> Mapping[str, Value]:
    """``values`` less the keys that name an index column, which must agree with the index (an
    epoch record may carry its own ``epoch``)."""
    if not any(key in values for key in index):
        for key in values:
            if not isinstance(key, str):
                raise TypeError(f"value keys must be strings, got {key!r}")
        return values
    for key, expected in index.items():
        if key in values and values[key] != expected:
            raise ValueError(f"values[{key!r}] = {values[key]!r} disagrees with the row's {key} {expected}")
    return _without_index({key: value for key, value in values.items() if key not in index}, index)
