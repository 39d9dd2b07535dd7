"""Gradient aligners: the 2x2 Gram matrix of the two path gradients in, two weights out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpda.align.base import Aligner, MeanAligner, SumAligner
from dpda.align.cagrad import CAGrad, CAGradExact
from dpda.align.gradvac import GradVac
from dpda.align.gram import combine_, gram_from_products, pairwise_products
from dpda.align.pcgrad import PCGrad
from dpda.align.weighting import TORCHJD_ALIGNERS

ALIGNERS: dict[str, Callable[..., Aligner]] = {
    "mean": MeanAligner,
    "sum": SumAligner,
    "pcgrad": PCGrad,
    "gradvac": GradVac,
    "cagrad": CAGrad,
    "cagrad_exact": CAGradExact,
    **TORCHJD_ALIGNERS,
}


#: One line per aligner for ``dpda aligners``: what it does and its options with defaults.
SUMMARIES: dict[str, str] = {
    "mean": "plain DPDA, the average of the two path gradients (paper baseline)",
    "sum": "the sum of the two path gradients",
    "pcgrad": "PCGrad, projection of conflicting gradients, mean reduction (paper)",
    "gradvac": "GradVac, EMA cosine target (paper); beta=0.5",
    "cagrad": "CAGrad, conflict-averse direction, the paper code's SLSQP solve (paper; ~2 ms per group); c=0.5",
    "cagrad_exact": (
        "CAGrad's objective solved exactly (closed form; differs from the paper's solver at small gradients); c=0.5"
    ),
    "mgda": "MGDA, min-norm point of the convex hull (torchjd); epsilon=0.001, max_iters=100",
    "upgrad": "UPGrad, projection onto the dual cone (torchjd); pref_vector=None",
    "dualproj": "DualProj, dual-cone projection of the mean (torchjd); pref_vector=None",
    "imtl_g": "IMTL-G, equal projections onto the result (torchjd)",
    "aligned_mtl": "Aligned-MTL, condition-number alignment (torchjd); scale_mode='min'",
    "fairgrad": "FairGrad, alpha-fair utility (torchjd); alpha=1.0, max_iters=None",
    "config": "ConFIG, conflict-free equal-angle direction (torchjd)",
    "nash_mtl": "Nash-MTL, bargaining solution (torchjd, needs cvxpy and ecos); max_norm=0.0, optim_niter=20",
}


def make_aligner(name: str, **options: Any) -> Aligner:
    """Build the aligner ``name`` with keyword ``options`` (e.g. ``make_aligner("cagrad", c=0.4)``)."""
    try:
        factory = ALIGNERS[name]
    except KeyError:
        valid = ", ".join(sorted(ALIGNERS))
        raise ValueError(f"unknown aligner {name!r}; valid aligners: {valid}") from None
    try:
        return factory(**options)
    except TypeError as error:
        raise ValueError(f"aligner {name!r}: invalid options {options}: {error}") from None


__all__ = [
    "ALIGNERS",
    "SUMMARIES",
    "Aligner",
    "CAGrad",
    "CAGradExact",
    "GradVac",
    "MeanAligner",
    "PCGrad",
    "SumAligner",
    "combine_",
    "gram_from_products",
    "make_aligner",
    "pairwise_products",
]
