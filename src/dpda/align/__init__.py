"""Gradient aligners: the 2x2 Gram matrix of the two path gradients in, two weights out."""

from __future__ import annotations

from typing import Any

from dpda.align.base import Aligner, MeanAligner, SumAligner
from dpda.align.cagrad import CAGrad
from dpda.align.gradvac import GradVac
from dpda.align.gram import combine_, gram_from_products, gram_matrix, pairwise_products
from dpda.align.pcgrad import PCGrad
from dpda.align.weighting import TORCHJD_ALIGNERS

ALIGNERS: dict[str, Any] = {
    "mean": MeanAligner,
    "sum": SumAligner,
    "pcgrad": PCGrad,
    "gradvac": GradVac,
    "cagrad": CAGrad,
    **TORCHJD_ALIGNERS,
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
    "Aligner",
    "CAGrad",
    "GradVac",
    "MeanAligner",
    "PCGrad",
    "SumAligner",
    "combine_",
    "gram_from_products",
    "gram_matrix",
    "make_aligner",
    "pairwise_products",
]
