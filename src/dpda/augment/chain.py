"""The augmentation chain: stages in order, each applied to the utterances it draws, built from a
dict or a YAML file.

YAML schema::

    sample_rate: 16000          # optional; given to every stage that takes a sample_rate
    stages:                     # applied in this order
      - name: noise             # a name from REGISTRY
        p: 0.5                  # per-utterance probability in [0, 1] (default 1)
        root: /data/musan       # the augmentation's own options (its constructor's arguments)
      - name: one_of            # exactly one of the choices per selected utterance
        p: 0.6
        choices:
          - {name: reverb, weight: 1, folder: /data/rirs}
          - {name: codec, weight: 1, codecs: [mp3, opus]}

Relative paths are resolved against the working directory. ``overrides`` replace or add options
by a dotted path of stage labels and an option name (``{"noise.root": "/data/musan"}``,
``{"one_of.reverb.folder": ...}``, ``{"noise.p": 0.3}``, ``{"sample_rate": 8000}``); a stage's
label is its name, with ``_2``, ``_3``, ... for repeats (the prefix of its parameters).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from torch import Tensor, nn

from dpda.augment.base import Augmentation, Augmented, check_batch
from dpda.suggest import did_you_mean

#: Registry name -> "module:class", imported on first use (RawBoost lives in its own module).
REGISTRY: dict[str, str] = {
    "rawboost": "dpda.augment.rawboost:RawBoost",
    "noise": "dpda.augment.noise:AdditiveNoise",
    "reverb": "dpda.augment.reverb:Reverberation",
    "codec": "dpda.augment.codec:Codec",
    "bandlimit": "dpda.augment.channel:BandLimit",
    "speed": "dpda.augment.channel:Speed",
    "gain": "dpda.augment.channel:Gain",
}
ONE_OF = "one_of"
CONFIG_KEYS = ("stages", "sample_rate")


def augmentation_class(name: str) -> type[Augmentation]:
    """The class registered as ``name``, imported now."""
    if name not in REGISTRY:
        raise ValueError(_unknown_name(name, list(REGISTRY)))
    module, cls = REGISTRY[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as error:
        raise ImportError(f"augmentation {name!r} needs {module}, which cannot be imported: {error}") from error


def stage_labels(names: Sequence[str]) -> list[str]:
    """Parameter prefixes for stage names: the name, with ``_2``, ``_3``, ... for repeats."""
    seen: dict[str, int] = {}
    labels = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return labels


def apply_selected(
    augmentation: Augmentation, x: Tensor, selected: Tensor, generator: torch.Generator | None
) -> Augmented:
    """Augment the utterances where ``selected`` (B,) is true; the others keep their audio.

    The augmentation runs on the selected rows only; rows it did not run on get NaN, -1 or False
    in its parameters. It is never called with an empty batch: when no row is selected, its
    parameters are absent from the result.
    """
    if bool(selected.all()):
        return augmentation.augment(x, generator)
    if not bool(selected.any()):
        return Augmented(x, {})
    index = selected.nonzero().squeeze(1)
    part = augmentation.augment(x[index], generator)
    audio = x.index_copy(0, index, part.audio.to(x.dtype))
    return Augmented(audio, {key: expand_rows(value, index, x.shape[0]) for key, value in part.params.items()})


def expand_rows(values: Tensor, index: Tensor, batch: int) -> Tensor:
    """Per-utterance values of the rows ``index``, filled up to ``batch`` rows with NaN/-1/False
    (the mark of an utterance a stage did not run on)."""
    fill = math.nan if values.is_floating_point() else (False if values.dtype == torch.bool else -1)
    full = torch.full((batch, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    return full.index_copy(0, index.to(values.device), values)


def _prefixed(label: str, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"{label}.{key}": value for key, value in params.items()}


def _prefixed_names(label: str, augmentation: Augmentation) -> tuple[str, ...]:
    return tuple(f"{label}.{name}" for name in augmentation.param_names())


def _label(augmentation: Augmentation) -> str:
    return getattr(augmentation, "name", "") or type(augmentation).__name__.lower()


def _members(modules: nn.ModuleList) -> list[Augmentation]:
    """The augmentations a chain or ``OneOf`` holds: ``nn.ModuleList`` types its items as bare
    ``Module``s, and both fill theirs with ``Augmentation``s only."""
    return cast("list[Augmentation]", list(modules))


def _labels_for(augmentations: Sequence[Augmentation], names: Sequence[str] | None) -> list[str]:
    names = [_label(a) for a in augmentations] if names is None else list(names)
    if len(names) != len(augmentations):
        raise ValueError(f"names: {len(names)} names for {len(augmentations)} augmentations")
    return stage_labels(names)


def _check_probability(key: str, p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"{key}: must be a probability in [0, 1], got {p!r}")
    return float(p)


class AugmentationChain(Augmentation):
    """Stages ``(augmentation, p)`` in order; each applies to every utterance with probability ``p``.

    The selection is drawn per utterance and stage. Parameters are ``<label>.applied`` (bool)
    and the stages' own, prefixed with the stage label (``noise.snr_db``); a stage applied to no
    utterance of a batch adds only ``<label>.applied``. ``param_names`` declares them all before
    the first batch, so the training log's columns are fixed before the first step.
    """

    name = "chain"

    def __init__(self, stages: Sequence[tuple[Augmentation, float]], names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.probabilities = [_check_probability(f"stages[{i}].p", p) for i, (_, p) in enumerate(stages)]
        augmentations = [augmentation for augmentation, _ in stages]
        self.stages = nn.ModuleList(augmentations)
        self.labels = _labels_for(augmentations, names)

    def param_names(self) -> tuple[str, ...]:
        """Stage by stage, ``<label>.applied`` then the stage's names prefixed with its label: every
        key a batch can hold, in ``augment``'s order; a batch holds them all when every stage
        selected some utterance (and every ``OneOf`` choice was drawn), a subset otherwise."""
        return tuple(
            name
            for label, augmentation in zip(self.labels, _members(self.stages))
            for name in (f"{label}.applied", *_prefixed_names(label, augmentation))
        )

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Augmented:
        check_batch(x, generator)
        params: dict[str, Tensor] = {}
        for label, augmentation, p in zip(self.labels, _members(self.stages), self.probabilities):
            selected = torch.rand(x.shape[0], generator=generator, device=x.device) < p
            part = apply_selected(augmentation, x, selected, generator)
            x = part.audio
            params[f"{label}.applied"] = selected
            params.update(_prefixed(label, part.params))
        return Augmented(x, params)


class OneOf(Augmentation):
    """Exactly one of the ``(augmentation, weight)`` choices per utterance, drawn by weight.

    Parameters: ``choice`` (index of the choice) and the choices' own, prefixed with their labels;
    a choice no utterance of a batch drew adds none of its own.
    """

    name = ONE_OF

    def __init__(self, choices: Sequence[tuple[Augmentation, float]], names: Sequence[str] | None = None) -> None:
        super().__init__()
        weights = [float(w) for _, w in choices]
        if not choices or any(not (math.isfinite(w) and w >= 0) for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"choices: need at least one choice, weights finite, non-negative and not all zero; got {weights}"
            )
        augmentations = [augmentation for augmentation, _ in choices]
        self.choices = nn.ModuleList(augmentations)
        self.labels = _labels_for(augmentations, names)
        self.cumulative = torch.tensor(weights, dtype=torch.float64).cumsum(0) / sum(weights)

    def param_names(self) -> tuple[str, ...]:
        """``choice``, then every choice's names prefixed with its label, whichever are drawn."""
        return (
            "choice",
            *(name for label, c in zip(self.labels, _members(self.choices)) for name in _prefixed_names(label, c)),
        )

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Augmented:
        check_batch(x, generator)
        draws = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64)
        cumulative = self.cumulative.to(x.device)
        choice = torch.searchsorted(cumulative, draws, right=True).clamp(max=len(self.choices) - 1)
        params: dict[str, Tensor] = {"choice": choice}
        for index, (label, augmentation) in enumerate(zip(self.labels, _members(self.choices))):
            part = apply_selected(augmentation, x, choice == index, generator)
            x = part.audio
            params.update(_prefixed(label, part.params))
        return Augmented(x, params)


def build_chain(config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> AugmentationChain:
    """An ``AugmentationChain`` from a configuration mapping (the YAML schema in this module's doc)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"expected a mapping with keys {', '.join(CONFIG_KEYS)}, got {type(config).__name__}")
    config = _with_overrides(config, overrides or {})
    _check_keys(config, CONFIG_KEYS, "config")
    if "stages" not in config:
        raise ValueError("config: missing key 'stages' (a list of {name, p, options...})")
    sample_rate = config.get("sample_rate")
    if sample_rate is not None and (
        isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0
    ):
        raise ValueError(f"sample_rate: must be a positive whole number of Hz, got {sample_rate!r}")
    stages, names = _build_stages(config["stages"], "stages", "p", sample_rate)
    return AugmentationChain(stages, names)


def load_chain(path: str | Path, overrides: Mapping[str, Any] | None = None) -> AugmentationChain:
    """``build_chain`` on a YAML file; errors name the file."""
    config = yaml.safe_load(Path(path).read_text())
    try:
        return build_chain(config, overrides)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _build_stages(
    specs: Any, where: str, weight_key: str, sample_rate: int | None
) -> tuple[list[tuple[Augmentation, float]], list[str]]:
    if not isinstance(specs, Sequence) or isinstance(specs, (str, bytes)):
        raise ValueError(f"{where}: expected a list of stages, got {specs!r}")
    stages, names = [], []
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"{at}: expected a mapping with 'name' and '{weight_key}', got {spec!r}")
        name = spec["name"]
        if name != ONE_OF and name not in REGISTRY:
            raise ValueError(f"{at}.name: {_unknown_name(name, [*REGISTRY, ONE_OF])}")
        weight = spec.get(weight_key, 1.0)
        if weight_key == "p":
            weight = _check_probability(f"{at}.p", weight)
        elif isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"{at}.{weight_key}: must be a non-negative number, got {weight!r}")
        options = {key: value for key, value in spec.items() if key not in ("name", weight_key)}
        try:
            if name == ONE_OF:
                _check_keys(options, ["choices"])
                choices, labels = _build_stages(options.get("choices"), f"{at}.choices", "weight", sample_rate)
                augmentation: Augmentation = OneOf(choices, labels)
            else:
                augmentation = _construct(augmentation_class(name), options, sample_rate)
        except ValueError as error:
            raise ValueError(f"{at} ({name}): {error}") from error
        stages.append((augmentation, weight))
        names.append(name)
    return stages, names


def _construct(cls: type[Augmentation], options: dict[str, Any], sample_rate: int | None) -> Augmentation:
    """``cls(**options)`` after checking the option names against its constructor."""
    parameters = inspect.signature(cls).parameters.values()
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind == p.VAR_KEYWORD for p in parameters):
        _check_keys(options, named)
    missing = [
        p.name
        for p in parameters
        if p.name not in options and p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if missing:
        raise ValueError(f"missing option(s) {', '.join(missing)}")
    if sample_rate is not None and "sample_rate" in named:
        options.setdefault("sample_rate", sample_rate)
    try:
        return cls(**options)
    except TypeError as error:
        raise ValueError(str(error)) from error


def _check_keys(mapping: Mapping[str, Any], allowed: Sequence[str], where: str = "") -> None:
    for key in mapping:
        if key not in allowed:
            raise ValueError(
                f"{where + ': ' if where else ''}unknown key {key!r}{did_you_mean(key, allowed)}; "
                f"allowed: {', '.join(allowed)}"
            )


def _unknown_name(name: Any, registered: Sequence[str]) -> str:
    return f"unknown augmentation {name!r}{did_you_mean(name, registered)}; registered: {', '.join(registered)}"


def _with_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with the ``overrides`` (dotted paths, see the module doc) applied."""
    copied = copy.deepcopy(dict(config))
    for path, value in overrides.items():
        *labels, key = path.split(".")
        target: dict[str, Any] = copied
        stages = copied.get("stages")
        for label in labels:
            if not isinstance(stages, list) or not all(isinstance(s, Mapping) and "name" in s for s in stages):
                raise ValueError(f"overrides: {path!r}: no list of named stages to look {label!r} up in")
            known = stage_labels([str(s["name"]) for s in stages])
            if label not in known:
                raise ValueError(
                    f"overrides: {path!r}: no stage labelled {label!r}{did_you_mean(label, known)}; "
                    f"stages here: {', '.join(known)}"
                )
            target = stages[known.index(label)]
            stages = target.get("choices")
        target[key] = value
    return copied
