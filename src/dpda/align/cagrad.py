"""Conflict-averse gradient descent (Liu et al., NeurIPS 2021) for two paths, solved in closed form."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dpda.align.base import Aligner, Grouping, as_gram_batch

#: The paper code's guards against division by zero and sqrt(0), kept so results match it.
_EPS = 1e-8


class CAGrad(Aligner):
    """CAGrad with the DPDA paper code's objective and rescaling, solved exactly.

    The paper code finds simplex weights ``x`` minimising ``x^T G b + c sqrt(x^T G x + eps)``
    (``b = (1/2, 1/2)``, ``c = calpha * sqrt(mean(G) + eps)``) with SLSQP, then returns
    ``(g_mean + c / |g_x| * g_x) / (1 + calpha^2)``. With two paths ``x = (t, 1 - t)`` and the
    objective is a convex function of ``t`` whose stationary point has a closed form, so this
    gives the exact optimum (SLSQP agrees to about 1e-4).

    Edge cases: identical gradients give ``t = 1/2``; a zero gradient on one path or exactly
    opposite gradients are ordinary cases of the closed form (no division by zero occurs since
    ``x^T G x + eps > 0``).
    """

    name = "cagrad"

    def __init__(self, c: float = 0.5, grouping: Grouping = "model") -> None:
        if c < 0:
            raise ValueError(f"cagrad: c must be non-negative, got {c}")
        super().__init__(grouping)
        self.c = c

    def weights(self, gram: Tensor) -> Tensor:
        rows = [self._weights_one(g) for g in as_gram_batch(gram)]
        return torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)

    def _weights_one(self, gram: Tensor) -> tuple[float, float]:
        (oo, oa), (_, aa) = gram.tolist()
        radius = self.c * math.sqrt(max((oo + 2 * oa + aa) / 4, 0.0) + _EPS) + _EPS
        t = _argmin_on_segment(oo, oa, aa, radius)
        x = (t, 1.0 - t)
        gx_sq = x[0] ** 2 * oo + 2 * x[0] * x[1] * oa + x[1] ** 2 * aa
        lam = radius / (math.sqrt(max(gx_sq, 0.0)) + _EPS)
        scale = 1.0 + self.c**2
        return ((0.5 + lam * x[0]) / scale, (0.5 + lam * x[1]) / scale)

    def __repr__(self) -> str:
        return f"CAGrad(c={self.c}, grouping={self.grouping!r})"


def _argmin_on_segment(oo: float, oa: float, aa: float, radius: float) -> float:
    """``t`` in [0, 1] minimising ``f(t) = s t + radius sqrt(q(t))`` (up to a constant).

    ``x = (t, 1 - t)``; the linear part ``x^T G b`` has slope ``s = (oo - aa) / 2`` and
    ``q(t) = x^T G x + eps = A t^2 + B t + C`` with ``A = |g_o - g_a|^2``. Writing ``u = 2At + B``
    and ``D = 4AC - B^2 >= 0``, ``f'(t) = 0`` becomes ``u / sqrt(u^2 + D) = -s / (radius sqrt(A))``.
    """
    a = oo - 2 * oa + aa
    b = 2 * (oa - aa)
    c = aa + _EPS
    slope = (oo - aa) / 2
    if a <= 0:  # identical gradients: f is flat in t up to rounding
        return 0.5 if slope == 0 else (1.0 if slope < 0 else 0.0)
    ratio = -slope / (radius * math.sqrt(a))
    if ratio >= 1:  # f is decreasing on the whole segment
        return 1.0
    if ratio <= -1:
        return 0.0
    disc = max(4 * a * c - b * b, 0.0)
    u = ratio * math.sqrt(disc / (1 - ratio * ratio))
    return min(max((u - b) / (2 * a), 0.0), 1.0)
