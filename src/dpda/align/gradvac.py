"""Gradient Vaccine (Wang et al., ICLR 2021) for two paths, as the DPDA paper's code applies it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from dpda.align.base import Aligner, Grouping, as_gram_batch

#: The paper code's guard against division by zero, kept so results match it.
_EPS = 1e-8


class GradVac(Aligner):
    """Raise the cosine between the two path gradients to an EMA target whenever it falls below.

    For path ``i`` against path ``j`` with cosine ``rho`` and target ``T`` (an EMA of past
    positive cosines, starting at 0): when ``rho < T`` the gradient becomes ``g_i + w g_j`` with
    ``w = |g_i| (T sqrt(1 - rho^2) - rho sqrt(1 - T^2)) / (|g_j| sqrt(1 - T^2) + eps)``, which
    gives the pair the cosine ``T``; then ``T <- (1 - beta) T + beta rho`` when ``rho > 0``.
    The result is the mean of the two adjusted gradients. Both directions use the gradients as
    they were before adjustment, as in the paper code.

    ``grouping="model"`` (the paper's setting) keeps one target for the whole model;
    ``grouping="layer"`` keeps one per module, as in the original GradVac.

    Edge cases: a zero gradient on path ``j`` adds nothing to ``g_i`` (its weight is set to 0);
    exactly opposite gradients give the zero vector; identical gradients give the mean. Cosines
    are clipped to [-1, 1] so rounding never produces a NaN.
    """

    name = "gradvac"

    def __init__(self, beta: float = 0.5, grouping: Grouping = "model") -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"gradvac: beta must be in [0, 1], got {beta}")
        super().__init__(grouping)
        self.beta = beta
        self.rho_target: Tensor | None = None  # (n_groups, 2, 2); [i, j]: path i against path j

    def weights(self, gram: Tensor) -> Tensor:
        gram = as_gram_batch(gram)
        n_groups = gram.shape[0]
        if self.rho_target is None:
            self.rho_target = torch.zeros((n_groups, 2, 2), dtype=torch.float64)
        elif self.rho_target.shape[0] != n_groups:
            raise ValueError(
                f"gradvac: the state holds {self.rho_target.shape[0]} groups but the Gram has "
                f"{n_groups}; the model's parameter grouping changed"
            )
        norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()  # (n_groups, 2)
        rho = (gram[:, 0, 1] / (norms[:, 0] * norms[:, 1] + _EPS)).clamp(-1.0, 1.0)
        sin_rho = (1 - rho**2).sqrt()
        added = torch.zeros((n_groups, 2), dtype=torch.float64)  # added[:, i]: weight of g_j in g_i
        for i, j in ((0, 1), (1, 0)):
            target = self.rho_target[:, i, j]
            sin_target = (1 - target**2).clamp_min(0).sqrt()
            w = norms[:, i] * (target * sin_rho - rho * sin_target) / (norms[:, j] * sin_target + _EPS)
            apply = (rho < target) & (norms[:, j] > 0)
            added[:, i] = torch.where(apply, w, 0.0)
            self.rho_target[:, i, j] = torch.where(rho > 0, (1 - self.beta) * target + self.beta * rho, target)
        # mean of (g_o + added_o g_a) and (g_a + added_a g_o)
        return torch.stack((0.5 * (1 + added[:, 1]), 0.5 * (1 + added[:, 0])), dim=1)

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.rho_target is None else {"rho_target": self.rho_target.clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        unknown = set(state) - {"rho_target"}
        if unknown:
            raise KeyError(f"gradvac: unexpected state keys {sorted(unknown)}; expected 'rho_target'")
        target = state.get("rho_target")
        if target is not None and (target.dim() != 3 or target.shape[1:] != (2, 2)):
            raise ValueError(f"gradvac: rho_target must have shape (n_groups, 2, 2), got {tuple(target.shape)}")
        self.rho_target = None if target is None else target.to(torch.float64).clone()

    def __repr__(self) -> str:
        return f"GradVac(beta={self.beta}, grouping={self.grouping!r})"
