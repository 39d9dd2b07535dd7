"""Evaluation of countermeasure scores: the ASVspoof metrics (higher score = more bona fide), and
the a-DCF of spoofing-aware speaker verification scores."""

from dpda.evaluate.metrics import (
    ADCFCosts,
    TDCFCosts,
    a_dcf,
    act_dcf,
    cllr,
    det_curve,
    eer,
    eer_per_attack,
    min_dcf,
    min_tdcf,
    tdcf_weights,
)

__all__ = [
    "ADCFCosts",
    "TDCFCosts",
    "a_dcf",
    "act_dcf",
    "cllr",
    "det_curve",
    "eer",
    "eer_per_attack",
    "min_dcf",
    "min_tdcf",
    "tdcf_weights",
]
