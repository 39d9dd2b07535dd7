"""How often the two paths' gradients conflict, counted over an epoch's optimizer steps."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dpda.dualpath.layers import LayerConflictMeter
from dpda.dualpath.step import StepStats
from dpda.results import conflict_rate


class ConflictMeter:
    """Running gradient-conflict statistics of an epoch, fed the engine's step statistics.

    ``update`` takes the engine's :class:`StepStats`. ``steps`` counts every update,
    ``skipped_steps`` those with ``skipped`` true. The conflict rate is over the steps
    whose ``conflict`` flag is defined (not ``None``: skipped steps and ``concat`` mode have
    none); the mean cosine over the steps with a finite ``cosine``. Both are NaN when no step
    qualifies. ``layers`` counts the same per parameter group, from steps that carry them.

    >>> meter = ConflictMeter()
    >>> meter.update(StepStats(0.7, 0.8, skipped=False, conflict=True, cosine=-0.2))
    >>> meter.update(StepStats(0.6, 0.7, skipped=False, conflict=False, cosine=0.4))
    >>> meter.update(StepStats(math.nan, 0.7, skipped=True))
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
        self.layers = LayerConflictMeter()

    def update(self, stats: StepStats) -> None:
        """Count one optimizer step."""
        self.steps += 1
        self.skipped_steps += bool(stats.skipped)
        if stats.conflict is not None:
            self.flagged_steps += 1
            self.conflicts += bool(stats.conflict)
        cosine = stats.cosine
        if cosine is not None and math.isfinite(cosine):
            self._cosine_sum += float(cosine)
            self._cosine_count += 1
        if stats.layers is not None:
            self.layers.update(stats.layers)

    def state_dict(self) -> dict[str, Any]:
        """The counters, for a training state that resumes mid-epoch."""
        return {
            "layers": self.layers.state_dict(),
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "flagged_steps": self.flagged_steps,
            "conflicts": self.conflicts,
            "cosine_sum": self._cosine_sum,
            "cosine_count": self._cosine_count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps, self.skipped_steps = int(state["steps"]), int(state["skipped_steps"])
        self.flagged_steps, self.conflicts = int(state["flagged_steps"]), int(state["conflicts"])
        self._cosine_sum, self._cosine_count = float(state["cosine_sum"]), int(state["cosine_count"])
        self.layers.load_state_dict(state.get("layers", {"conflicts": {}, "flagged": {}}))  # older states: none

    @property
    def rate(self) -> float:
        """Conflicting steps over steps with a defined conflict flag; NaN when there are none."""
        return conflict_rate(self.conflicts, self.flagged_steps)

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
