"""Evaluation of countermeasure scores: the ASVspoof metrics (higher score = more bona fide)."""

from dpda.evaluate.metrics import (
    TDCFCosts,
    act_dcf,
    cllr,
    det_curve,
    eer,
    eer_per_attack,
    min_dcf,
    min_tdcf,
)

__all__ = ["TDCFCosts", "act_dcf", "cllr", "det_curve", "eer", "eer_per_attack", "min_dcf", "min_tdcf"]
