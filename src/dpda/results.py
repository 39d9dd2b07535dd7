"""What runs measure, typed: the records behind ``results.json``, ``epochs.csv`` and ``summary.json``.

Each record is a frozen dataclass whose fields are the JSON keys, in the order they are written.
``to_json`` gives the plain mapping; a field whose default is ``None`` is left out while it is
``None`` (a set with one class has no EER, a run without dev set no dev metrics), every other
field is always written. ``from_json`` reads such a mapping back, so files written by earlier
versions stay readable, and refuses unknown or missing keys by name: run folders are often other
people's. Torch-free, like every run-folder format.

JSON has no NaN or infinity (``NaN``/``Infinity`` tokens are Python's extension, which other
readers refuse), so each record names its ``undefined`` fields: metrics that are NaN when there
is nothing to measure (no step with a conflict flag, no finite loss, scores that give no EER).
Such a value is written as ``null`` and read back as NaN (absent still means "not measured").
A non-finite value in any other field (a learning rate, seconds) is a bug and refused by name.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from statistics import fmean, stdev
from typing import Any, ClassVar, TypeVar

from dpda.atomic import write_text_atomic
from dpda.errors import DpdaError
from dpda.suggest import did_you_mean

Record = TypeVar("Record", bound="JsonRecord")
Reader = Callable[[Any, str], Any]


class ResultsError(DpdaError, ValueError):
    """A results file that is not what dpda writes (a missing or unknown key, a wrong shape)."""


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of ``values``; the deviation of one run is 0.

    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    >>> mean_std([5.0])
    (5.0, 0.0)
    """
    if not values:
        raise ValueError("mean_std needs at least one value")
    return fmean(values), (stdev(values) if len(values) > 1 else 0.0)


def conflict_rate(conflicts: int, flagged_steps: int) -> float:
    """Conflicting optimizer steps over the steps with a defined conflict flag (skipped steps and
    ``concat`` mode have none); NaN when there are none. The one definition behind the epoch
    rows, the run's pooled rate, the report and the demo.

    >>> conflict_rate(3, 12), conflict_rate(0, 0)
    (0.25, nan)
    """
    return conflicts / flagged_steps if flagged_steps else math.nan


class JsonRecord:
    """``to_json``/``from_json`` for the frozen dataclasses below (see the module doc)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # each subclass is a dataclass
    #: fields (floats, or mappings or lists of them) whose NaN means undefined: null in JSON
    undefined: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def nested(cls) -> Mapping[str, Reader]:
        """Key -> the reader of its value, for keys whose values are records themselves."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values: records as mappings, an undefined metric as None, and a
        ``ResultsError`` for a non-finite value elsewhere."""
        out = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.default is None:
                continue
            out[item.name] = _json_value(value, item.name in self.undefined, f"{type(self).__name__}.{item.name}")
        return out

    @classmethod
    def from_json(cls: type[Record], data: Any, source: str | None = None) -> Record:
        """The record in ``data``, every key checked against the fields (``source`` names the
        file or key in errors)."""
        source = source or cls.__name__
        if not isinstance(data, Mapping):
            raise ResultsError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = fields(cls)
        names = [item.name for item in known]
        for key in data:
            if key not in names:
                raise ResultsError(f"{source}: unknown key {key!r}{did_you_mean(str(key), names)}")
        missing = [
            i.name for i in known if i.default is MISSING and i.default_factory is MISSING and i.name not in data
        ]
        if missing:
            raise ResultsError(f"{source}: missing key(s) {', '.join(missing)}")
        nested = cls.nested()

        def read(key: str, value: Any) -> Any:
            if key in nested and value is not None:
                return nested[key](value, f"{source}: {key}")
            return _nan_for_null(value) if key in cls.undefined else value

        return cls(**{key: read(key, value) for key, value in data.items()})

    def write(self, path: str | Path) -> None:
        """The record as the JSON file ``path``, written atomically (strict JSON: no NaN tokens)."""
        write_text_atomic(path, json.dumps(self.to_json(), indent=1, allow_nan=False))

    @classmethod
    def read(cls: type[Record], path: str | os.PathLike[str]) -> Record:
        """The record in the JSON file ``path``; a file that is not JSON is refused at its line."""
        try:
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
        except json.JSONDecodeError as error:
            raise ResultsError(f"{path}:{error.lineno}: not JSON ({error.msg})") from error
        return cls.from_json(data, str(path))


def undefined_as_null(value: Any) -> Any:
    """A JSON document that is no record (the demo's results) with its non-finite floats, the
    undefined metrics, as None, so that it is written with ``allow_nan=False`` like the records."""
    return _json_value(value, True, "document")


def _json_value(value: Any, undefined: bool, where: str) -> Any:
    """``value`` with records as mappings and non-finite floats as None (``undefined``) or refused."""
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, dict):
        return {key: _json_value(entry, undefined, f"{where}[{key!r}]") for key, entry in value.items()}
    if isinstance(value, list):
        return [_json_value(entry, undefined, f"{where}[{index}]") for index, entry in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        if undefined:
            return None
        raise ResultsError(f"{where}: {value} is not a finite number (JSON has no NaN or infinity)")
    return value


def _nan_for_null(value: Any) -> Any:
    """An undefined metric's JSON value read back: null (inside mappings and lists too) is NaN."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {key: _nan_for_null(entry) for key, entry in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(entry) for entry in value]
    return value


def _mapping_of(reader: Callable[[Any, str], Record]) -> Callable[[Any, str], dict[str, Record]]:
    def read(data: Any, source: str) -> dict[str, Record]:
        if not isinstance(data, Mapping):
            raise ResultsError(f"{source}: expected a JSON object, got {type(data).__name__}")
        return {name: reader(entry, f"{source}[{name!r}]") for name, entry in data.items()}

    return read


def _list_of(reader: Callable[[Any, str], Record]) -> Callable[[Any, str], list[Record]]:
    def read(data: Any, source: str) -> list[Record]:
        if not isinstance(data, list):
            raise ResultsError(f"{source}: expected a JSON list, got {type(data).__name__}")
        return [reader(entry, f"{source}[{index}]") for index, entry in enumerate(data)]

    return read


@dataclass(frozen=True)
class SetMetrics(JsonRecord):
    """One labelled set scored: counts, the metrics both classes make defined, and those that the
    set's ASV and SASV score files make possible (absent without them)."""

    undefined: ClassVar[frozenset[str]] = frozenset(
        {"eer", "eer_threshold", "min_dcf", "act_dcf", "cllr", "eer_per_attack"}
    )

    protocol: str | None = field(default=None, kw_only=True)  # the eval protocol, where there is one
    utterances: int
    bonafide: int
    spoof: int
    eer: float | None = None
    eer_threshold: float | None = None
    min_dcf: float | None = None
    act_dcf: float | None = None
    cllr: float | None = None
    eer_per_attack: dict[str, float] | None = None
    min_tdcf_2019: float | None = None  # with the set's ASV scores (eval set key asv_scores)
    min_tdcf_2021: float | None = None
    min_adcf: float | None = None  # of the set's SASV scores (eval set key sasv_scores)
    adcf_threshold: float | None = None


@dataclass(frozen=True)
class EvalResults(JsonRecord):
    """``dpda eval``'s ``results.json``: the checkpoint, how it scored, and each set's metrics."""

    checkpoint: str
    score: str
    max_seconds: float | None
    sets: dict[str, SetMetrics]

    @classmethod
    def nested(cls) -> Mapping[str, Reader]:
        return {"sets": _mapping_of(SetMetrics.from_json)}


@dataclass(frozen=True)
class DevMetrics(JsonRecord):
    """The dev set under the current weights: the training loss (class weights included) and EER."""

    undefined: ClassVar[frozenset[str]] = frozenset({"dev_loss", "dev_eer"})

    dev_loss: float
    dev_eer: float


@dataclass(frozen=True)
class EpochRecord(JsonRecord):
    """One row of ``epochs.csv`` and one entry of the run's history."""

    undefined: ClassVar[frozenset[str]] = frozenset(
        {"train_loss_orig", "train_loss_aug", "conflict_rate", "mean_cosine", "dev_loss", "dev_eer"}
    )

    epoch: int
    step: int
    train_loss_orig: float
    train_loss_aug: float
    conflict_rate: float
    mean_cosine: float
    steps: int
    skipped_steps: int
    conflicts: int
    flagged_steps: int
    lr: float
    train_seconds: float
    dev_loss: float | None = None
    dev_eer: float | None = None

    @staticmethod
    def columns(with_dev: bool) -> list[str]:
        """The value columns of ``epochs.csv`` (after its ``epoch`` index), known before the first
        epoch ends."""
        names = [item.name for item in fields(EpochRecord)][1:]
        return [name for name in names if with_dev or not name.startswith("dev_")]

    @property
    def dev(self) -> DevMetrics | None:
        return None if self.dev_loss is None or self.dev_eer is None else DevMetrics(self.dev_loss, self.dev_eer)


def pooled_conflict_rate(history: Sequence[EpochRecord]) -> float:
    """The conflict rate over every epoch's steps (not the mean of the epochs' rates)."""
    return conflict_rate(sum(r.conflicts for r in history), sum(r.flagged_steps for r in history))


@dataclass(frozen=True)
class RunResults(JsonRecord):
    """``dpda train``'s ``results.json``: what the run did, its dev and eval metrics with the
    final (averaged) weights, and the history of its epochs."""

    undefined: ClassVar[frozenset[str]] = frozenset({"conflict_rate"})

    name: str
    seed: int
    paper_row: str | None
    epochs: int
    steps: int
    best_epoch: int
    skipped_steps: int
    averaged_epochs: list[int]
    conflict_rate: float
    train_seconds: float
    dev: DevMetrics | None = None
    eval: dict[str, SetMetrics] | None = None
    history: list[EpochRecord] = field(default_factory=list)

    def comparable(self) -> dict[str, float]:
        """The numbers seeds are summarised over: dev loss and EER (keys ``dev_dev_loss``,
        ``dev_dev_eer``, as summary.json has always named them), each eval set's EER, best epoch."""
        values: dict[str, float] = {}
        if self.dev is not None:
            values.update({f"dev_{key}": value for key, value in self.dev.to_json().items()})
        values.update({f"eval/{name}/eer": m.eer for name, m in (self.eval or {}).items() if m.eer is not None})
        values["best_epoch"] = self.best_epoch
        return {key: float(value) for key, value in values.items()}

    @classmethod
    def nested(cls) -> Mapping[str, Reader]:
        return {
            "dev": DevMetrics.from_json,
            "eval": _mapping_of(SetMetrics.from_json),
            "history": _list_of(EpochRecord.from_json),
        }


@dataclass(frozen=True)
class Spread(JsonRecord):
    """One metric over seeds: mean, sample standard deviation and the values."""

    undefined: ClassVar[frozenset[str]] = frozenset({"mean", "std", "values"})

    mean: float
    std: float
    values: list[float]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(*mean_std(values), list(values))


@dataclass(frozen=True)
class SeedSummary(JsonRecord):
    """``summary.json`` of a multi-seed experiment: every comparable metric's spread over seeds."""

    seeds: list[int]
    metrics: dict[str, Spread]

    @classmethod
    def of(cls, runs: Sequence[RunResults]) -> SeedSummary:
        collected: dict[str, list[float]] = {}
        for run in runs:
            for key, value in run.comparable().items():
                collected.setdefault(key, []).append(value)
        return cls([run.seed for run in runs], {key: Spread.of(values) for key, values in collected.items()})

    @classmethod
    def nested(cls) -> Mapping[str, Reader]:
        return {"metrics": _mapping_of(Spread.from_json)}
