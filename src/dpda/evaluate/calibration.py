"""Turning raw detector scores into a probability and a decision a user can act on.

A score (the logit margin) is not a probability: its scale depends on the model and training.
A logistic calibration ``P(bona fide | s) = sigmoid(a * s + b)`` is fitted on the dev set with
both classes weighted equally (so the probability does not carry the dev set's class ratio), and
the decision threshold defaults to the dev EER threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import expit

from dpda.errors import DpdaError
from dpda.evaluate.metrics import eer


@dataclass(frozen=True)
class Calibration:
    scale: float
    offset: float
    threshold: float  # scores below it are called spoofed
    fitted_on: str = "dev"

    def bonafide_probability(self, scores: ArrayLike) -> np.ndarray:
        return expit(self.scale * np.asarray(scores, dtype=np.float64) + self.offset)

    def spoof_probability(self, scores: ArrayLike) -> np.ndarray:
        return 1.0 - self.bonafide_probability(scores)

    def is_spoof(self, scores: ArrayLike) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) < self.threshold

    def verdict(self, score: float) -> dict[str, Any]:
        """P(spoof) and the decision for ``score``, rounded as every dpda output shows them."""
        return {
            "p_spoof": round(float(self.spoof_probability(score)), 6),
            "decision": "spoof" if self.is_spoof(score) else "bonafide",
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "calibration") -> Calibration:
        """A calibration as ``as_dict`` wrote it, from a file (a checkpoint's metadata): anything
        else, a missing key or a value that is not a finite number is a ``CalibrationError``."""
        numbers = ("scale", "offset", "threshold")
        if not isinstance(data, dict) or not set(numbers) <= data.keys() <= {*numbers, "fitted_on"}:
            raise CalibrationError(f"{where}: expected {{scale, offset, threshold[, fitted_on]}}, got {data!r:.200}")
        for key in numbers:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CalibrationError(f"{where}.{key}: expected a finite number, got {value!r:.80}")
        fitted_on = data.get("fitted_on", "dev")
        if not isinstance(fitted_on, str):
            raise CalibrationError(f"{where}.fitted_on: expected a string, got {fitted_on!r:.80}")
        return cls(float(data["scale"]), float(data["offset"]), float(data["threshold"]), fitted_on)


class CalibrationError(DpdaError, ValueError):
    """A stored calibration that is not one (a checkpoint's metadata is anyone's file)."""


def fit_calibration(bonafide: ArrayLike, spoof: ArrayLike, fitted_on: str = "dev") -> Calibration:
    """Balanced logistic calibration of the scores and the EER threshold, from dev scores."""
    bonafide = np.asarray(bonafide, dtype=np.float64)
    spoof = np.asarray(spoof, dtype=np.float64)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = w
        zb, zs = a * bonafide + b, a * spoof + b
        value = 0.5 * np.logaddexp(0, -zb).mean() + 0.5 * np.logaddexp(0, zs).mean()
        gb = -expit(-zb)  # d/dz of log(1 + e^-z)
        gs = expit(zs)
        grad = np.array([0.5 * (gb * bonafide).mean() + 0.5 * (gs * spoof).mean(), 0.5 * gb.mean() + 0.5 * gs.mean()])
        return value, grad

    scale = 1.0 / max(np.std(np.concatenate([bonafide, spoof])), 1e-12)
    result = minimize(loss, np.array([scale, 0.0]), jac=True, method="L-BFGS-B")
    return Calibration(float(result.x[0]), float(result.x[1]), float(eer(bonafide, spoof)[1]), fitted_on)
