"""Aligners beyond the paper, delegated to torchjd's weightings (Gramian in, weights out).

torchjd's ``Weighting`` classes take the Gramian of the Jacobian, which for two objectives is
exactly dpda's 2x2 Gram matrix. ConFIG and NashMTL are torchjd ``Aggregator``s that need the
Jacobian itself; both depend on it only through inner products, so they receive a 2x2 matrix
``J`` with ``J J^T = G`` (the two gradients written in an orthonormal basis of their span) and
the weights are read back by solving ``J^T w = aggregate``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchjd import aggregation
from torchjd.linalg import PSDMatrix

from dpda.align.base import Aligner, Grouping, as_gram_batch


class TorchJDWeighting(Aligner):
    """Applies a torchjd Gramian ``Weighting`` to the Gram matrix of every parameter group."""

    def __init__(self, name: str, weighting: aggregation.Weighting[PSDMatrix], grouping: Grouping = "model") -> None:
        self.name = name
        super().__init__(grouping)
        self.method = weighting

    def weights(self, gram: Tensor) -> Tensor:
        return torch.stack([self.method(g).to(torch.float64) for g in as_gram_batch(gram)])

    def __repr__(self) -> str:
        return f"TorchJDWeighting({self.method!r}, grouping={self.grouping!r})"


class TorchJDAggregator(Aligner):
    """Applies a torchjd ``Aggregator`` to a 2x2 square root of each Gram matrix."""

    def __init__(self, name: str, aggregator: aggregation.Aggregator, grouping: Grouping = "model") -> None:
        self.name = name
        super().__init__(grouping)
        self.method = aggregator

    def weights(self, gram: Tensor) -> Tensor:
        rows = []
        for g in as_gram_batch(gram):
            eigenvalues, eigenvectors = torch.linalg.eigh(g)
            root = eigenvectors * eigenvalues.clamp_min(0).sqrt()  # root @ root.T == g
            aggregate = self.method(root).to(torch.float64)
            rows.append(torch.linalg.lstsq(root.T, aggregate.unsqueeze(1)).solution.squeeze(1))
        return torch.stack(rows)

    def __repr__(self) -> str:
        return f"TorchJDAggregator({self.method!r}, grouping={self.grouping!r})"


def _weighting(name: str, factory: Callable[..., aggregation.Weighting[PSDMatrix]]) -> Callable[..., Aligner]:
    def build(grouping: Grouping = "model", **options: Any) -> Aligner:
        return TorchJDWeighting(name, factory(**options), grouping)

    return build


def _aggregator(name: str, factory: Callable[..., aggregation.Aggregator]) -> Callable[..., Aligner]:
    def build(grouping: Grouping = "model", **options: Any) -> Aligner:
        return TorchJDAggregator(name, factory(**options), grouping)

    return build


def _fairgrad(alpha: float = 1.0, max_iters: int | None = None) -> aggregation.Weighting[PSDMatrix]:
    return aggregation.FairGradWeighting(alpha=alpha, max_iters=max_iters)


def _nash_mtl(max_norm: float = 0.0, optim_niter: int = 20) -> aggregation.Aggregator:
    # Weights are recomputed every step, so no solver state needs to survive a resume.
    return aggregation.NashMTL(n_tasks=2, max_norm=max_norm, update_weights_every=1, optim_niter=optim_niter)


#: name -> factory(**options) for the torchjd-backed aligners.
TORCHJD_ALIGNERS: dict[str, Callable[..., Aligner]] = {
    "mgda": _weighting("mgda", aggregation.MGDAWeighting),
    "upgrad": _weighting("upgrad", aggregation.UPGradWeighting),
    "dualproj": _weighting("dualproj", aggregation.DualProjWeighting),
    "imtl_g": _weighting("imtl_g", aggregation.IMTLGWeighting),
    "aligned_mtl": _weighting("aligned_mtl", aggregation.AlignedMTLWeighting),
    "fairgrad": _weighting("fairgrad", _fairgrad),
    "config": _aggregator("config", aggregation.ConFIG),
    "nash_mtl": _aggregator("nash_mtl", _nash_mtl),
}
