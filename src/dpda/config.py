"""The experiment configuration of ``dpda train CONFIG.yaml``: typed, with a default for every key.

A config file is YAML whose sections mirror the dataclasses below (``configs/default.yaml`` lists
every key with its default). ``load_config`` merges the file with ``--set a.b=c`` overrides, then
checks every key and type against the dataclass fields, so a typo or a wrong type stops the run
at once with the file, the dotted key and the expected value named, not hours into training.
Paths are kept as written; relative ones are resolved by their users against the working
directory. ``save_config`` writes the resolved copy that a run folder keeps.

A file may start from others: a top-level ``base:`` (a path, or a list applied in order, relative
to the file naming it) is loaded first, recursively, and the file's own mapping is merged over it
(mappings key by key; lists, scalars and ``null`` replace), so that configs that differ in a few
keys (``configs/paper``) state only those. The checks then run on the merged mapping, and the
saved copy is whole, without ``base:``, so that a run folder never depends on other files.

YAML reads ``1e-6`` (no dot) as a string; the loader here reads it as a float, as YAML 1.2 does,
in files and override values alike, and float fields also accept such strings from plain dicts.

Every number is checked by the checker of its kind (``_int_at_least``, ``_float_in``): ints are
ints, not bools; floats are finite (YAML's ``.inf`` and ``.nan``, or ``1e400``, would reach
the weights as NaN), and inside free-form mappings (``model``, ``*options``) too; ranges are the
ones the optimizer, loader and losses accept. A learning rate above 1 is allowed (large-batch
SGD uses such rates) with a warning.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from dpda.atomic import write_text_atomic
from dpda.errors import DpdaError
from dpda.names import DATASET_KINDS, AugmentOrder, CropPolicy, Mode, Precision, ScoreKind
from dpda.paths import file_name_problem
from dpda.suggest import did_you_mean

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(DpdaError, ValueError):
    """A config value that is missing, unknown, of the wrong type or out of range."""

    def __init__(self, key: str, problem: str, source: str = "<config>") -> None:
        self.key, self.problem, self.source = key, problem, source
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


def _check(ok: bool, key: str, expected: str, found: Any) -> None:
    if not ok:
        raise ConfigError(key, f"expected {expected}, found {_show(found)}")


def _int_at_least(key: str, value: Any, minimum: int, *, null: bool = False) -> None:
    """``value`` is an int (not a bool) >= ``minimum``, or None where ``null`` allows it."""
    ok = (null and value is None) or (isinstance(value, int) and not isinstance(value, bool) and value >= minimum)
    _check(ok, key, f"an int >= {minimum}{' or null' if null else ''}", value)


def _float_in(
    key: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
    null: bool = False,
) -> None:
    """``value`` is a finite number in the interval from ``low`` to ``high`` (each end included
    unless open), or None where ``null`` allows it."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = (null and value is None) or (
        number and (low < value if open_low else low <= value) and (value < high if open_high else value <= high)
    )
    if high == math.inf:
        expected = f"a finite float {'>' if open_low else '>='} {low}"
    else:
        expected = f"a float in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    _check(ok, key, expected + (" or null" if null else ""), value)


@dataclass(frozen=True)
class DataSet:
    """One protocol: the trials it lists and where their audio lives."""

    kind: str  # protocol format, one of DATASET_KINDS
    protocol: str  # protocol file (a folder for 'for' and 'folder')
    root: str | None = None  # audio root the protocol's paths are relative to; None: the protocol's folder
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of the kind's reader
    name: str | None = None  # label in logs and score files; None: derived from the protocol
    asv_scores: str | None = None  # eval sets: an ASV score file, for min t-DCF 2019/2021 (dpda.evaluate.asv:
    # the ASVspoof 2019 LA organisers' file, a 2021 score.txt with asv_keys, or a SASV-form file)
    asv_keys: str | None = None  # eval sets: the ASVspoof 2021 LA ASV key file (trial_metadata.txt) of asv_scores
    sasv_scores: str | None = None  # eval sets: a SASV score file (speaker, utterance, score, key), for min a-DCF

    def __post_init__(self) -> None:
        _check(self.kind in DATASET_KINDS, "kind", f"one of {', '.join(DATASET_KINDS)}", self.kind)
        _check(bool(self.protocol), "protocol", "a non-empty path", self.protocol)
        for key in ("asv_scores", "asv_keys", "sasv_scores"):
            _check(getattr(self, key) != "", key, "a non-empty path or null", getattr(self, key))
        _check(
            self.asv_keys is None or self.asv_scores is not None,
            "asv_keys",
            "null unless asv_scores names the ASV score file the keys go with",
            self.asv_keys,
        )


@dataclass(frozen=True)
class DataConfig:
    """Training and development data and how utterances become fixed-length crops."""

    train: DataSet | None = None  # training protocol (required by `dpda train`)
    dev: DataSet | None = None  # development protocol for early stopping and checkpoint choice
    sample_rate: int = 16000  # Hz; audio at another rate is resampled to it when read
    crop_length: int = 66800  # samples per training crop (the paper's 4.175 s at 16 kHz)
    crop_policy: CropPolicy = "head"  # which part is kept (longer) or repeated (shorter)
    workers: int = 2  # data-loader worker processes; 0 loads in the main process
    validate: Literal["header", "decode", "off"] = "header"  # audio check before training (header: float files
    # have their samples read too, as only they can hold NaN)

    def __post_init__(self) -> None:
        _int_at_least("sample_rate", self.sample_rate, 1)
        _int_at_least("crop_length", self.crop_length, 1)
        _int_at_least("workers", self.workers, 0)
        for role in ("train", "dev"):
            dataset = getattr(self, role)
            for key in ("asv_scores", "asv_keys", "sasv_scores"):
                value = None if dataset is None else getattr(dataset, key)
                _check(value is None, f"{role}.{key}", "null (only eval sets are scored against ASV/SASV files)", value)


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation chain of the augmented path: a chain file or an inline chain, not both."""

    chain: str | None = "configs/augment/rawboost_algo4.yaml"  # YAML chain file (dpda.augment.chain)
    inline: dict[str, Any] | None = None  # a chain mapping instead of a file (then chain: null)
    overrides: dict[str, Any] = field(default_factory=dict)  # chain option overrides, {"noise.p": 0.3}
    order: AugmentOrder = "crop_then_augment"  # augment the crop, or the
    # whole decoded utterance before both copies are cropped (the paper code)
    where: Literal["device", "loader"] = "device"  # batched on the training device, or per utterance in the
    # loader workers (the paper code; needed by augment_then_crop, whose utterances differ in length)

    def __post_init__(self) -> None:
        if (self.chain is None) == (self.inline is None):
            raise ConfigError(
                "chain",
                "give exactly one of augment.chain (a file) and augment.inline (a mapping); set the other to null",
            )
        if self.order == "augment_then_crop" and self.where != "loader":
            raise ConfigError(
                "where",
                "augment.order 'augment_then_crop' augments whole utterances of unequal "
                "lengths, which the batched on-device augmentation cannot take; set "
                "augment.where: loader (the paper code's place) or augment.order: "
                "crop_then_augment",
            )


@dataclass(frozen=True)
class DualPathConfig:
    """How the clean and augmented paths' gradients are formed and combined."""

    mode: Mode = "joint"  # how the two paths go through the model
    aligner: str = "pcgrad"  # gradient aligner name (`dpda aligners` lists them)
    aligner_options: dict[str, Any] = field(default_factory=dict)  # the aligner's keyword options
    grouping: Literal["model", "layer"] = "model"  # align the whole gradient or each layer's
    class_weights: tuple[float, float] = (0.1, 0.9)  # cross-entropy weights of spoof (0), bona fide (1)
    precision: Precision = "fp32"  # autocast precision of forward passes
    max_grad_norm: float | None = None  # clip the combined gradient to this L2 norm; None: no clipping
    zero_missing_grads: bool = False  # parameters without a gradient (frozen or unused) get a zero one, and
    # the optimizer holds them, so its weight decay moves them (the paper code's aligners)

    def __post_init__(self) -> None:
        weights = self.class_weights
        for index, weight in enumerate(weights):
            _float_in(f"class_weights[{index}]", weight, 0)
        _check(sum(weights) > 0, "class_weights", "weights >= 0, not both 0", weights)
        _float_in("max_grad_norm", self.max_grad_norm, 0, open_low=True, null=True)


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its learning-rate schedule."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-6  # peak learning rate
    weight_decay: float = 1e-4  # L2 penalty (decoupled for adamw)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam moment decay rates
    momentum: float = 0.9  # SGD momentum
    scheduler: Literal["none", "cosine", "step"] = "none"  # cosine: after the warm-up, over the remaining
    # steps down to min_lr (clovaai/aasist's schedule: min_lr 5e-6 under lr 1e-4); step: per epoch
    min_lr: float = 0.0  # the cosine schedule's floor (its last step's learning rate)
    warmup_steps: int = 0  # optimizer steps of linear warm-up from lr / warmup_steps to lr
    step_size: int = 1  # epochs between decays of the step scheduler
    gamma: float = 0.5  # learning-rate factor of each step-scheduler decay

    def __post_init__(self) -> None:
        _float_in("lr", self.lr, 0, open_low=True)
        _float_in("weight_decay", self.weight_decay, 0)
        for index, beta in enumerate(self.betas):
            _float_in(f"betas[{index}]", beta, 0, 1, open_high=True)
        _float_in("momentum", self.momentum, 0, 1, open_high=True)
        _int_at_least("warmup_steps", self.warmup_steps, 0)
        _float_in("min_lr", self.min_lr, 0)
        _check(self.min_lr <= self.lr, "min_lr", f"a floor at most lr ({self.lr})", self.min_lr)
        _int_at_least("step_size", self.step_size, 1)
        _float_in("gamma", self.gamma, 0, 1, open_low=True)
        if self.lr > 1:
            warnings.warn(
                f"optim.lr {self.lr} is above 1: the first steps will likely diverge (a training whose "
                "weights become NaN stops with an error); the paper trains with 1e-6",
                stacklevel=3,  # the caller of the dataclass's __init__
            )


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: batch, length, stopping and the checkpoints kept."""

    batch_size: int = 5  # utterances per path per optimizer step, over all processes and micro-batches
    accumulation: int = 1  # micro-batches per optimizer step (batch_size % (accumulation x world) == 0)
    epochs: int = 100  # most epochs to train
    patience: int | None = 7  # epochs without dev-loss improvement before stopping; None: never stop early
    dev_loss: Literal["pooled", "batch_mean"] = "pooled"  # the epoch criterion: one weighted CE over the dev
    # set, or the mean over dev batches (protocol order) of each batch's weighted CE (the paper code)
    dev_batch_size: int = 8  # utterances per dev batch of dev_loss: batch_mean (the paper code's 8)
    n_best: int = 5  # best checkpoints (by dev loss) kept and averaged into the final model
    average: Literal["n_best", "swa"] = "n_best"  # the final model: the n best by dev loss, or stochastic
    # weight averaging (Izmailov et al., 2018): the equal average of the last swa_epochs epochs' weights
    swa_epochs: int = 5  # epochs averaged by average: swa (the last ones run, early stopping included)
    swa_lr: float | None = None  # average: swa: constant learning rate over the budget's last swa_epochs
    # epochs (the usual SWA schedule); None: the optim schedule runs on
    max_steps_per_epoch: int | None = None  # cap on optimizer steps per epoch; None: the whole set
    save_every_steps: int | None = None  # training state saved every N optimizer steps too; None: at epoch ends
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    deterministic: bool = True  # deterministic kernels (slower, reproducible)

    def __post_init__(self) -> None:
        for key in ("batch_size", "accumulation", "epochs", "n_best", "dev_batch_size", "swa_epochs"):
            _int_at_least(key, getattr(self, key), 1)
        _float_in("swa_lr", self.swa_lr, 0, open_low=True, null=True)
        _check(self.swa_lr is None or self.average == "swa", "swa_lr", "null unless average is swa", self.swa_lr)

    @property
    def kept_checkpoints(self) -> int:
        """How many epoch checkpoints the run keeps for its final average."""
        return self.n_best if self.average == "n_best" else self.swa_epochs
        for key in ("patience", "max_steps_per_epoch", "save_every_steps"):
            _int_at_least(key, getattr(self, key), 1, null=True)


@dataclass(frozen=True)
class LoggingConfig:
    """Where training metrics go."""

    tensorboard: bool = True  # TensorBoard event files in the run folder
    csv: bool = True  # steps.csv and epochs.csv in the run folder
    every_steps: int = 1  # optimizer steps between logged training metrics
    progress: bool = True  # progress bars on the terminal
    layer_conflicts: Literal["none", "layer", "module", "top"] = "layer"  # per-group cosines and conflict
    # rates of the two path gradients (dpda.dualpath.layers): layers_steps.csv, layers_epochs.csv

    def __post_init__(self) -> None:
        _int_at_least("every_steps", self.every_steps, 1)


@dataclass(frozen=True)
class EvalConfig:
    """The sets scored after training and how."""

    sets: list[DataSet] = field(default_factory=list)  # evaluation protocols, scored in this order
    score: ScoreKind = "logit_diff"  # bona fide minus spoof logit, or bona fide logit
    batch_size: int = 8  # utterances per forward pass
    max_seconds: float | None = None  # seconds of audio kept per utterance; None: all of it

    def __post_init__(self) -> None:
        _int_at_least("batch_size", self.batch_size, 1)
        _float_in("max_seconds", self.max_seconds, 0, open_low=True, null=True)


@dataclass(frozen=True)
class ExperimentConfig:
    """One training run; its folder is output_dir/name (/seed-N when several seeds are run)."""

    name: str = "experiment"  # run name, the run folder's name
    seed: int = 1  # random seed of initialisation, data order and augmentation
    output_dir: str = "runs"  # folder of run folders
    paper_row: str | None = None  # id of the paper table row this config reproduces
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "aasist_l"})  # registry name and options
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    dualpath: DualPathConfig = field(default_factory=DualPathConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _check(
            isinstance(self.name, str) and file_name_problem(self.name) is None,
            "name",
            "a plain folder name (no separators, not starting with '.')",
            self.name,
        )
        _int_at_least("seed", self.seed, 0)
        _check(isinstance(self.model.get("name"), str), "model.name", "a model registry name", self.model.get("name"))


# ---------------------------------------------------------------------------------------------
# Loading, checking and saving


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-6`` (no dot) as a float."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?\d+[eE][-+]?\d+$"), list("-+0123456789"))


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The config in the YAML file at ``path`` (defaults only when None) with ``overrides`` applied.

    The file's ``base:`` files are merged under it first (see the module docstring). Each override
    is ``"dotted.key=value"``, the value read as YAML (``1e-5``, ``true``, ``null``, ``[0.2, 0.8]``,
    ``{kind: csv, protocol: p.csv}``); keys inside free-form mappings (``model``, ``*options``,
    ``augment.inline``) may be new, all others must exist.
    """
    if path is None:
        return config_with_overrides({}, overrides, source="<defaults>")
    bases: list[Path] = []
    data = _read(Path(path), (), bases)
    # a key in the merged mapping may come from a base: the source names them all
    source = f"{path} (over {', '.join(map(str, bases))})" if bases else str(path)
    return config_with_overrides(data, overrides, source=source)


def config_with_overrides(
    data: Mapping[str, Any], overrides: Sequence[str] = (), *, source: str = "<config>"
) -> ExperimentConfig:
    """``config_from_dict`` of ``data`` after ``overrides`` (as for ``load_config``); errors name
    the override a bad value came from."""
    tree = copy.deepcopy(dict(data))
    applied: list[tuple[str, str]] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("", f"expected KEY=VALUE, found {item!r}", "--set")
        _check_path(key, f"--set {item}")
        _assign(tree, key.split("."), _parse(text, f"--set {item}"))
        applied.append((key, item))
    try:
        return config_from_dict(tree, source=source)
    except ConfigError as error:  # name the override a bad value came from
        for key, item in reversed(applied):
            if error.key == key or error.key.startswith((key + ".", key + "[")):
                raise ConfigError(error.key, error.problem, f"--set {item}") from None
        raise


def config_from_dict(data: Mapping[str, Any], *, source: str = "<config>") -> ExperimentConfig:
    """The config in ``data`` (sections as nested mappings), checked; ``source`` names it in errors."""
    return _convert(data, ExperimentConfig, "", source)


def config_to_dict(config: Any) -> dict[str, Any]:
    """``config`` as plain dicts, lists and scalars, ready for ``yaml.safe_dump``."""
    return _plain(config)


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write ``config`` as YAML, atomically: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True))


def _read(path: Path, chain: tuple[Path, ...], bases: list[Path]) -> dict[str, Any]:
    """The mapping of the YAML file at ``path`` merged over its ``base:`` files; ``chain`` holds the
    files that led here (to name a cycle), ``bases`` collects every base read, in order."""
    source = f"{path} (base of {chain[-1]})" if chain else str(path)
    data = _parse(path.read_text(encoding="utf-8"), source) or {}
    if not isinstance(data, dict):
        raise ConfigError("", f"expected a mapping of sections, found {_show(data)}", source)
    names = data.pop("base", [])
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError("base", f"expected a path or a list of paths, found {_show(names)}", source)
    chain = (*chain, path)
    merged: dict[str, Any] = {}
    for name in names:
        base = Path(os.path.normpath(path.parent / name))
        if any(base.resolve() == seen.resolve() for seen in chain):
            raise ConfigError("base", f"a cycle of bases: {' -> '.join(map(str, (*chain, base)))}", source)
        if not base.is_file():
            raise ConfigError("base", f"{name!r}: no such file ({base})", source)
        bases.append(base)
        merged = _merge(merged, _read(base, chain, bases))
    return _merge(merged, data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged over ``base``, so that a file states only the keys it changes: mappings
    merge key by key; lists, scalars and None replace."""
    merged = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def _parse(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as error:
        raise ConfigError("", f"invalid YAML: {error}", source) from None


def _check_path(key: str, source: str) -> None:
    """Fail unless ``key`` names a config field or lies inside a free-form mapping."""
    tp: Any = ExperimentConfig
    done: list[str] = []
    for part in key.split("."):
        tp = _strip_none(tp)
        if get_origin(tp) is dict:
            return
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            raise ConfigError(".".join(done), f"has no sub-keys ({_type_name(tp)}); set it whole", source)
        _known_key(part, tp, _join(".".join(done), part), source)
        tp = get_type_hints(tp)[part]
        done.append(part)


def _assign(data: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        if not isinstance(data.get(part), dict):  # absent or null: start a new section
            data[part] = {}
        data = data[part]
    data[parts[-1]] = value


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` checked against the type ``tp`` (converted where lossless) or a ConfigError."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(value, _strip_none(tp), key, source)
    if origin is Literal:
        if not any(value == choice and type(value) is type(choice) for choice in args):
            raise ConfigError(key, f"expected one of {', '.join(map(repr, args))}, found {_show(value)}", source)
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, key, source)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(key, f"expected a mapping with string keys, found {_show(value)}", source)
        _refuse_non_finite(value, key, source)
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected {_type_name(tp)}, found {_show(value)}", source)
        if origin is list:
            return [_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
        if len(value) != len(args):
            raise ConfigError(key, f"expected {_type_name(tp)}, found {_show(value)}", source)
        return tuple(_convert(v, t, f"{key}[{i}]", source) for i, (v, t) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(key, f"expected {_type_name(tp)}, found {_show(value)}", source)


def _refuse_non_finite(value: Any, key: str, source: str) -> None:
    """A free-form mapping's numbers, at any depth, are finite: no constructor wants NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number, found {_show(value)}", source)
    if isinstance(value, Mapping):
        for name, entry in value.items():
            _refuse_non_finite(entry, _join(key, str(name)), source)
    elif isinstance(value, (list, tuple)):
        for index, entry in enumerate(value):
            _refuse_non_finite(entry, f"{key}[{index}]", source)


def _convert_dataclass(value: Any, cls: type[DataclassInstance], key: str, source: str) -> DataclassInstance:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping of {cls.__name__} keys, found {_show(value)}", source)
    for name in value:
        _known_key(name, cls, _join(key, name), source)
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in value:
            kwargs[f.name] = _convert(value[f.name], hints[f.name], _join(key, f.name), source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(key, f.name), f"required key missing ({cls.__name__})", source)
    try:
        return cls(**kwargs)
    except ConfigError as error:  # a range check: prefix its key with the section's path
        raise ConfigError(_join(key, error.key), error.problem, source) from None


def _known_key(name: Any, cls: type[DataclassInstance], key: str, source: str) -> None:
    valid = [f.name for f in dataclasses.fields(cls)]
    if name not in valid:
        section = key.rpartition(".")[0] or "the top level"
        raise ConfigError(
            key, f"unknown key{did_you_mean(name, valid)}; valid keys of {section}: {', '.join(valid)}", source
        )


def _strip_none(tp: Any) -> Any:
    """``X`` for ``X | None``, else ``tp`` itself."""
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _type_name(tp: Any) -> str:
    if get_origin(tp) is None:
        return tp.__name__
    return f"{get_origin(tp).__name__}[{', '.join(map(_type_name, get_args(tp)))}]"


def _show(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 63 else f"{text} ({type(value).__name__})"
