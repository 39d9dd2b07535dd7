"""Conflict-averse gradient descent (Liu et al., NeurIPS 2021) for two paths: the paper code's
solver (``cagrad``) and the exact optimum of the same objective (``cagrad_exact``)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from dpda.align.base import Aligner, Grouping, as_gram_batch

#: The paper code's guards against division by zero and sqrt(0), kept so results match it.
_EPS = 1e-8


class CAGrad(Aligner):
    """CAGrad as the DPDA paper code computes it: what the paper trained with.

    The paper code finds simplex weights ``x`` minimising ``x^T G b + c sqrt(x^T G x + eps)``
    (``b = (1/2, 1/2)``, ``c = calpha * sqrt(mean(G) + eps) + eps``, ``G`` in float32) with
    scipy's SLSQP at its default tolerances, starting from ``b``, then returns
    ``(g_mean + c / |g_x| * g_x) / (1 + calpha^2)``. SLSQP's absolute tolerance on the
    objective (1e-6) exceeds the objective's whole range once the gradients are small (norms
    below about 0.03), so there it stops at its start and the result is about 1.2x the mean
    gradient. This class runs that same solve on the 2x2 Gram matrix (about 1.4 ms per group,
    BENCHMARKS.md), so a paper config reproduces the paper's updates at every gradient norm;
    ``CAGradExact`` is the true optimum.
    """

    name = "cagrad"

    def __init__(self, c: float = 0.5, grouping: Grouping = "model") -> None:
        if c < 0:
            raise ValueError(f"{self.name}: c must be non-negative, got {c}")
        super().__init__(grouping)
        self.c = c

    def weights(self, gram: Tensor) -> Tensor:
        rows = [self._weights_one(g) for g in as_gram_batch(gram)]
        return torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)

    def _weights_one(self, gram: Tensor) -> tuple[float, float]:
        (oo, oa), (_, aa) = gram.tolist()
        radius = self._radius(oo, oa, aa)
        x_o, x_a = self._solve(oo, oa, aa, radius)
        gx_sq = x_o * x_o * oo + 2 * x_o * x_a * oa + x_a * x_a * aa
        lam = radius / (math.sqrt(max(gx_sq, 0.0)) + _EPS)
        scale = 1.0 + self.c**2
        return ((0.5 + lam * x_o) / scale, (0.5 + lam * x_a) / scale)

    def _radius(self, oo: float, oa: float, aa: float) -> float:
        """``c`` of the objective, formed by the paper code's float32 torch operations: SLSQP's
        path can turn on its last bit."""
        gram = torch.tensor([[oo, oa], [oa, aa]], dtype=torch.float32)
        return (self.c * (gram.mean() + _EPS).sqrt() + _EPS).item()

    def _solve(self, oo: float, oa: float, aa: float, radius: float) -> tuple[float, float]:
        """The simplex weights ``x`` as SLSQP leaves them (not exactly summing to 1, and rounded
        to float32 as the paper code rounds them) from its start, tolerances and float32 Gram."""
        gram = np.array([[oo, oa], [oa, aa]], dtype=np.float32)
        start = np.full(2, 0.5)

        def objective(x: np.ndarray) -> float:
            return float(x @ gram @ start + radius * np.sqrt(x @ gram @ x + _EPS))

        result = minimize(
            objective,
            start.copy(),
            method="SLSQP",
            bounds=((0, 1), (0, 1)),
            constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},),
        )
        x_o, x_a = result.x.astype(np.float32).tolist()
        return x_o, x_a

    def __repr__(self) -> str:
        return f"{type(self).__name__}(c={self.c}, grouping={self.grouping!r})"


class CAGradExact(CAGrad):
    """The paper code's CAGrad objective and rescaling with its exact optimum, in closed form.

    With two paths ``x = (t, 1 - t)`` and the objective is a convex function of ``t`` whose
    stationary point has a closed form, so this is the true optimum at every gradient norm
    (where the paper's solver converges, they agree to about 1e-4). Identical gradients give
    ``t = 1/2``; a zero gradient on one path or exactly opposite gradients are ordinary cases
    (no division by zero occurs since ``x^T G x + eps > 0``).
    """

    name = "cagrad_exact"

    def _radius(self, oo: float, oa: float, aa: float) -> float:
        return self.c * math.sqrt(max((oo + 2 * oa + aa) / 4, 0.0) + _EPS) + _EPS

    def _solve(self, oo: float, oa: float, aa: float, radius: float) -> tuple[float, float]:
        t = _argmin_on_segment(oo, oa, aa, radius)
        return t, 1.0 - t


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
