"""What a training run records: per-step and per-epoch scalars as CSV and TensorBoard events.

Files in the run folder (all written by rank 0 only; a logger built with ``enabled=False`` is a
no-op and creates nothing):

- ``steps.csv``: one row per logged optimizer step, columns ``step``, ``epoch``, then the step
  columns the logger was given;
- ``epochs.csv``: one row per epoch, column ``epoch``, then the epoch columns;
- ``layers_steps.csv`` and ``layers_epochs.csv``, where the logger was given layer columns (the
  groups of :mod:`dpda.dualpath.layers`): per logged step each group's cosine of the two path
  gradients, per epoch each group's conflict rate;
- ``tensorboard/steps/``: events, scalar ``train/<key>`` at global step ``step`` (the layers'
  cosines as ``train/layer_cosine/<group>``);
- ``tensorboard/epochs/``: events, scalar ``epoch/<key>`` at global step ``epoch`` (the layers'
  conflict rates as ``epoch/layer_conflict/<group>``). Epoch scalars get a writer of their own so
  that each x-axis can be purged on resume by its own counter (TensorBoard shows the two folders
  as two runs).

The columns are fixed when the logger is made (the trainer knows them before the first step: the
engine's step statistics, the learning rate, the parameters the augmentation chain declares, the
fields of an epoch record), so every row of a file has the same cells and a row with a key the
header lacks is a bug, refused by name.

Cells and scalars:

- ``None`` (a statistic not defined for that step) and a key absent from a row: an empty cell,
  no scalar;
- bools: ``1``/``0`` in the CSV, ``1.0``/``0.0`` in TensorBoard;
- ints: written as ints; floats: ``repr`` (round-trip exact), so NaN and infinities appear as
  ``nan``/``inf``/``-inf`` in the CSV. Non-finite values are *not* sent to TensorBoard (they
  break its axis ranges and smoothing): the CSV is the complete record, and a step whose
  gradients were not finite is marked by its ``skipped`` column.

Rows go through an ordinary buffered file, flushed at least every ``flush_secs`` seconds, on
:meth:`RunLogger.flush` and on close; nothing is fsynced per row. A run killed hard loses at
most the last ``flush_secs`` seconds of rows, which it redoes anyway on resume.

Fresh start and resume: without ``resume_step``/``resume_epoch`` the logger starts over: an
existing ``steps.csv``/``epochs.csv`` is overwritten and earlier event files in its TensorBoard
folders are deleted. With either given, the files are kept and continued (their header must be
the one this logger writes), minus the rows a killed run logged after its last saved state: rows
of ``steps.csv`` with ``step > resume_step`` and rows of ``epochs.csv`` with ``epoch > resume_epoch``
(a bound left ``None`` keeps that file whole). The event files get a purge marker at
``resume + 1``, so TensorBoard hides the same events.
"""

from __future__ import annotations

import csv as csvlib
import math
import operator
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dpda.atomic import atomic_path
from dpda.errors import DpdaError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "EPOCHS_CSV",
    "LAYER_EPOCHS_CSV",
    "LAYER_STEPS_CSV",
    "STEPS_CSV",
    "TENSORBOARD_DIR",
    "LogFileError",
    "RunLogger",
    "read_csv",
]

STEPS_CSV = "steps.csv"
EPOCHS_CSV = "epochs.csv"
LAYER_STEPS_CSV = "layers_steps.csv"
LAYER_EPOCHS_CSV = "layers_epochs.csv"
TENSORBOARD_DIR = "tensorboard"

Value = float | int | bool | None


class LogFileError(DpdaError, ValueError):
    """A run folder's ``steps.csv``/``epochs.csv`` that is not what this run writes or reads (a
    malformed cell, another config's or version's columns)."""


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
                raise LogFileError(f"{path}:{line}: {len(row)} cells for {len(header)} columns")
            for position, column in enumerate(columns):
                cell = row[position] if position < len(row) else ""
                try:
                    column.append(float(cell) if cell else None)
                except ValueError:
                    raise LogFileError(f"{path}:{line}: column {header[position]!r}: not a number: {cell!r}") from None
    return dict(zip(header, columns))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _CsvTable:
    """One CSV file of the run with a header fixed at creation: index columns, then values."""

    def __init__(
        self,
        path: Path,
        index: tuple[str, ...],
        columns: Sequence[str],
        keep: bool,
        upto: int | None,
        flush_secs: float,
    ) -> None:
        self.path = path
        self.index = index
        self.flush_secs = flush_secs
        self.header = [*index, *columns]
        if len(set(self.header)) != len(self.header):
            raise ValueError(f"{path.name}: repeated column names in {self.header}")
        # value columns only: the index cells are the row's own (``_without_index``)
        self.columns = {key: position for position, key in enumerate(self.header) if position >= len(index)}
        rows = self._kept_rows(upto) if keep and path.exists() else []
        with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
            writer = csvlib.writer(file)
            writer.writerow(self.header)
            writer.writerows(rows)
        self.file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed by close)
        self.writer = csvlib.writer(self.file)
        self.flushed = time.monotonic()

    def _kept_rows(self, upto: int | None) -> list[list[str]]:
        with open(self.path, newline="", encoding="utf-8") as file:
            reader = csvlib.reader(file)
            header = next(reader, None)
            if header != self.header:
                raise LogFileError(
                    f"{self.path}: header {header} is not the one this run writes ({self.header}); "
                    "was it written by another version or another config?"
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
        return rows

    def append(self, index: tuple[int, ...], values: Mapping[str, Any]) -> None:
        row = [""] * len(self.header)
        row[: len(index)] = map(str, index)
        for key, value in values.items():
            position = self.columns.get(key)
            if position is None:
                raise ValueError(f"{self.path.name}: no column {key!r} (the columns are {self.header})")
            row[position] = _cell(value)
        self.writer.writerow(row)
        if time.monotonic() - self.flushed >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        self.file.flush()
        self.flushed = time.monotonic()

    def close(self) -> None:
        self.file.close()


class _EventWriter:
    """TensorBoard events through the public ``FileWriter``: all the scalars of a row in one
    summary (a ``SummaryWriter.add_scalar`` per key costs about 10x more)."""

    def __init__(self, folder: Path, prefix: str, keep: bool, resume: int | None, flush_secs: float) -> None:
        try:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard.writer import FileWriter
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
        self.writer = FileWriter(str(folder), max_queue=1000, flush_secs=max(1, round(flush_secs)))
        if resume is not None:
            # TensorBoard drops the events at and after this step that earlier files hold
            purge = resume + 1
            self.writer.add_event(Event(step=purge, file_version="brain.Event:2"))
            self.writer.add_event(Event(step=purge, session_log=SessionLog(status=SessionLog.START)))

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
            self.writer.add_summary(summary, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _counter(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name}: must be an int, got {value!r}")
    return operator.index(value)


class RunLogger:
    """Per-step and per-epoch scalars of a run to CSV and TensorBoard (see the module doc).

    ``step_columns``/``epoch_columns``: the value columns of each file, in order; ``layer_columns``:
    the parameter groups of the two layer files (none: no layer files). ``enabled=False``
    (ranks other than 0) makes every method a no-op and creates no file. ``resume_step``/
    ``resume_epoch`` continue the files of a killed run from its last saved state; without them
    existing files are overwritten. ``flush_secs``: CSV rows and events reach the disk at least
    this often. Use as a context manager, or call :meth:`close`.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with RunLogger(folder, step_columns=["loss_orig", "conflict", "clip_coef", "lr"],
    ...                epoch_columns=["dev_eer"], tensorboard=False) as logger:
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
        step_columns: Iterable[str],
        epoch_columns: Iterable[str],
        layer_columns: Sequence[str] = (),
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
        self._layer_steps_csv: _CsvTable | None = None
        self._layer_epochs_csv: _CsvTable | None = None
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
                steps, epochs = self.folder / STEPS_CSV, self.folder / EPOCHS_CSV
                self._steps_csv = _CsvTable(steps, ("step", "epoch"), list(step_columns), keep, resume_step, flush_secs)
                self._epochs_csv = _CsvTable(epochs, ("epoch",), list(epoch_columns), keep, resume_epoch, flush_secs)
                if layer_columns:
                    self._layer_steps_csv = _CsvTable(
                        self.folder / LAYER_STEPS_CSV, ("step", "epoch"), layer_columns, keep, resume_step, flush_secs
                    )
                    self._layer_epochs_csv = _CsvTable(
                        self.folder / LAYER_EPOCHS_CSV, ("epoch",), layer_columns, keep, resume_epoch, flush_secs
                    )
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

    def log_layers(self, step: int, epoch: int, cosines: Mapping[str, float]) -> None:
        """One row of ``layers_steps.csv`` and the scalars ``train/layer_cosine/<group>``."""
        if not self.enabled:
            return
        self._check_open()
        if self._layer_steps_csv is not None:
            self._layer_steps_csv.append((step, epoch), cosines)
        if self._steps_tb is not None:
            self._steps_tb.add(step, {f"layer_cosine/{name}": value for name, value in cosines.items()})

    def log_layer_epoch(self, epoch: int, rates: Mapping[str, float]) -> None:
        """One row of ``layers_epochs.csv`` and the scalars ``epoch/layer_conflict/<group>``."""
        if not self.enabled:
            return
        self._check_open()
        if self._layer_epochs_csv is not None:
            self._layer_epochs_csv.append((epoch,), rates)
        if self._epochs_tb is not None:
            self._epochs_tb.add(epoch, {f"layer_conflict/{name}": value for name, value in rates.items()})

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
        sinks = (
            self._steps_csv,
            self._epochs_csv,
            self._layer_steps_csv,
            self._layer_epochs_csv,
            self._steps_tb,
            self._epochs_tb,
        )
        return [sink for sink in sinks if sink is not None]

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
    epoch record carries its own ``epoch``)."""
    for key, expected in index.items():
        if key in values and values[key] != expected:
            raise ValueError(f"values[{key!r}] = {values[key]!r} disagrees with the row's {key} {expected}")
    return {key: value for key, value in values.items() if key not in index}
