"""Where in the network the two paths' gradients conflict: the whole-model cosine, per layer.

The engine already has the three products ``(g_o.g_o, g_o.g_a, g_a.g_a)`` of every parameter
tensor (:func:`dpda.align.pairwise_products`); summing them over the tensors of a group gives
that group's cosine and conflict flag (negative inner product) for nothing more than an index
sum. Groups (``logging.layer_conflicts``):

- ``layer``: a parameter belongs to the name up to its first numbered module, so each
  transformer layer of an SSL front-end (``ssl.model.encoder.layers.11``), each CNN feature
  layer, each Conformer block or residual block is one group; a parameter outside any numbered
  module belongs to the widest module on its path that holds no numbered layers
  (``backend.GAT_layer_S``, ``ssl.model.feature_projection``, ``backend.LL``);
- ``module``: the owning module of each parameter (the aligners' ``module`` grouping);
- ``top``: the model's top-level children (``ssl``, ``encoder``, ``LL``, ...);
- ``none``: no per-layer statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dpda.results import conflict_rate

LayerGrouping = Literal["none", "layer", "module", "top"]
LAYER_GROUPINGS: tuple[LayerGrouping, ...] = ("none", "layer", "module", "top")


def layer_groups(names: Sequence[str], grouping: LayerGrouping) -> tuple[list[str], Tensor]:
    """The groups of parameters ``names`` in first-seen order, and each parameter's group index."""
    if grouping not in LAYER_GROUPINGS or grouping == "none":
        raise ValueError(f"layer grouping {grouping!r}: expected one of {', '.join(LAYER_GROUPINGS[1:])}")
    # torch.compile's wrapper prefixes every name with _orig_mod.: the groups are the model's own
    paths = [name.removeprefix("_orig_mod.").split(".") for name in names]
    numbered = {".".join(parts[: i + 1]) for parts in paths for i in _numbered(parts)[:1]}
    order: dict[str, int] = {}
    index = [order.setdefault(_group(parts, grouping, numbered), len(order)) for parts in paths]
    return list(order), torch.tensor(index, dtype=torch.long)


def _numbered(parts: Sequence[str]) -> list[int]:
    """Positions of the numbered modules in a parameter's path (not the parameter itself)."""
    return [i for i, part in enumerate(parts[:-1]) if part.isdigit()]


def _group(parts: list[str], grouping: LayerGrouping, numbered: set[str]) -> str:
    """A parameter's group: see the module doc. ``numbered``: every group of numbered layers."""
    if len(parts) == 1:
        return parts[0]
    if grouping == "top":
        return parts[0]
    owner = parts[:-1]
    if grouping == "module":
        return ".".join(owner)
    first = _numbered(parts)
    if first:
        return ".".join(parts[: first[0] + 1])
    for depth in range(1, len(owner) + 1):  # the widest module that holds no numbered layers
        prefix = ".".join(owner[:depth])
        if not any(group.startswith(prefix + ".") for group in numbered):
            return prefix
    return ".".join(owner)


@dataclass(frozen=True)
class LayerStats:
    """One step's per-group products of the two path gradients; a group whose gradient is zero on
    a path has no cosine (NaN) and no conflict flag."""

    names: tuple[str, ...]
    inner: tuple[float, ...]
    norm_orig: tuple[float, ...]
    norm_aug: tuple[float, ...]

    @classmethod
    def of(cls, products: Tensor, index: Tensor, names: Sequence[str]) -> LayerStats:
        """From the engine's per-tensor products ``(n, 3)`` and each tensor's group ``index``."""
        sums = products.new_zeros(len(names), 3).index_add_(0, index.to(products.device), products).cpu()
        return cls(
            tuple(names),
            tuple(sums[:, 1].tolist()),
            tuple(sums[:, 0].clamp_min(0).sqrt().tolist()),
            tuple(sums[:, 2].clamp_min(0).sqrt().tolist()),
        )

    @property
    def cosines(self) -> dict[str, float]:
        return {
            name: inner / (a * b) if a * b > 0 else math.nan
            for name, inner, a, b in zip(self.names, self.inner, self.norm_orig, self.norm_aug)
        }


class LayerConflictMeter:
    """Per-group conflict counts over an epoch's steps, resumable like :class:`ConflictMeter`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.conflicts: dict[str, int] = {}
        self.flagged: dict[str, int] = {}

    def update(self, stats: LayerStats) -> None:
        for name, cosine in stats.cosines.items():
            if math.isnan(cosine):
                continue
            self.flagged[name] = self.flagged.get(name, 0) + 1
            self.conflicts[name] = self.conflicts.get(name, 0) + (cosine < 0)

    def rates(self, names: Sequence[str]) -> dict[str, float]:
        """Each group's conflict rate (NaN where no step flagged it)."""
        return {name: conflict_rate(self.conflicts.get(name, 0), self.flagged.get(name, 0)) for name in names}

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {"conflicts": dict(self.conflicts), "flagged": dict(self.flagged)}

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        self.conflicts = {str(k): int(v) for k, v in state["conflicts"].items()}
        self.flagged = {str(k): int(v) for k, v in state["flagged"].items()}
