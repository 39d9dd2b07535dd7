"""Dynamic loss scaling for fp16 with two gradient sets.

``torch.amp.GradScaler`` unscales and checks the one gradient set held in ``p.grad``. The dual
path engine holds two sets and folds ``1 / scale`` into the Gram matrix and the combination
weights (no extra pass over the model), so it needs only the scale and its update rule.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class LossScaler:
    """The loss scale: halved after a step with a non-finite gradient, doubled after
    ``growth_interval`` finite steps in a row (the rule of ``torch.amp.GradScaler``)."""

    def __init__(
        self,
        scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        if scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError(
                "loss scaler: need scale > 0, growth_factor > 1, 0 < backoff_factor < 1, "
                f"growth_interval >= 1; got {scale}, {growth_factor}, {backoff_factor}, {growth_interval}"
            )
        self.scale = float(scale)
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = 0

    def update(self, found_non_finite: bool) -> None:
        if found_non_finite:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "scale": torch.tensor(self.scale, dtype=torch.float64),
            "good_steps": torch.tensor(self.good_steps, dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        missing = {"scale", "good_steps"} - set(state)
        if missing:
            raise KeyError(f"loss scaler state is missing {sorted(missing)}")
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
