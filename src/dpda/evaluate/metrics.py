"""Scoring metrics of the ASVspoof challenges: EER, min t-DCF (2019 and 2021), minDCF, actDCF, Cllr,
and the a-DCF of spoofing-aware speaker verification (SASV).

Convention throughout: a score is higher for more bona fide speech; bona fide is the positive
("target") class of the countermeasure (CM). A miss is a bona fide trial scored below the
threshold, a false alarm a spoofed trial scored at or above it.

The EER and the t-DCF follow the official ASVspoof evaluation scripts value for value (same
operating points, same tie handling), and the a-DCF the ``a_dcf`` package of its authors, so that
numbers reported with this module can be compared with published ones; ``tests/test_metrics.py``
checks them against outputs of those scripts and that package. Each function sorts its scores
once; nothing loops over trials in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

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

_SHOWN_INDICES = 5  # how many offending indices an error message lists


def _scores(name: str, values: ArrayLike) -> NDArray[np.float64]:
    """One-dimensional float64 copy of ``values``, refused when empty or not finite.

    A NaN sorts after every number and an inf passes every threshold, so either would give a
    plausible-looking but wrong metric; the message says how many there are and where.
    """
    scores = np.asarray(values, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of scores, got shape {scores.shape}")
    if scores.size == 0:
        raise ValueError(f"{name}: no scores (empty array)")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        shown = ", ".join(str(i) for i in bad[:_SHOWN_INDICES]) + (", ..." if bad.size > _SHOWN_INDICES else "")
        raise ValueError(f"{name}: {bad.size} NaN/inf score(s) of {scores.size}, at index {shown}")
    return scores


def _rejections(*groups: NDArray[np.float64]) -> tuple[list[NDArray[np.int64]], NDArray[np.float64]]:
    """Per group, how many of its trials operating point ``k`` rejects (k = 0 .. all trials), and
    the sorted scores.

    Point ``k`` rejects the ``k`` lowest-scored trials of all groups together, sorted stably in
    the order the groups are given, so that tied trials of an earlier group are rejected first
    and a group of tied scores contributes one point per trial (the official scripts' and the
    ``a_dcf`` package's convention). One sort and one cumulative sum per group.
    """
    scores = np.concatenate(groups)
    order = np.argsort(scores, kind="mergesort")
    ends = np.cumsum([group.size for group in groups])
    group_of = np.searchsorted(ends, order, side="right")  # the group of each sorted trial
    rejected = [np.concatenate(([0], np.cumsum(group_of == index))) for index in range(len(groups))]
    return rejected, scores[order]


def det_curve(
    bonafide: ArrayLike, spoof: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Miss rate, false-alarm rate and threshold at every operating point of the CM.

    Operating point ``k`` rejects the ``k`` lowest-scored trials, so ``frr[k]`` is the fraction
    of bona fide trials among them and ``far[k]`` the fraction of spoofed trials outside them;
    ``thresholds[k]`` is the k-th lowest score (point 0, which rejects nothing, gets the lowest
    score minus 0.001). This reproduces ``compute_det_curve`` of the ASVspoof 2019/2021
    evaluation scripts exactly, including ties: a stable sort of [bona fide, spoof] puts tied
    bona fide trials first, so a group of tied scores contributes one point per trial.
    """
    bonafide = _scores("bonafide", bonafide)
    spoof = _scores("spoof", spoof)
    (rejected_bonafide, rejected_spoof), sorted_scores = _rejections(bonafide, spoof)
    frr = rejected_bonafide / bonafide.size
    far = (spoof.size - rejected_spoof) / spoof.size
    thresholds = np.concatenate(([sorted_scores[0] - 0.001], sorted_scores))
    return frr, far, thresholds


def eer(bonafide: ArrayLike, spoof: ArrayLike) -> tuple[float, float]:
    """Equal error rate and its threshold, as the official ``compute_eer``.

    The EER is taken at the first operating point where |frr - far| is smallest, as the mean of
    the two rates there, so that it is the number the ASVspoof scripts would print.
    """
    frr, far, thresholds = det_curve(bonafide, spoof)
    k = int(np.argmin(np.abs(frr - far)))
    return float((frr[k] + far[k]) / 2), float(thresholds[k])


def eer_per_attack(bonafide: ArrayLike, spoof: ArrayLike, spoof_attacks: ArrayLike) -> dict[str, float]:
    """Pooled EER (key ``"pooled"``) and the EER of all bona fide trials against each attack.

    ASVspoof reports per-attack EERs to show which attacks a CM fails on; keys are the attack
    ids as strings, in sorted order.
    """
    spoof = _scores("spoof", spoof)
    attacks = np.asarray(spoof_attacks).astype(str)
    if attacks.shape != spoof.shape:
        raise ValueError(f"spoof_attacks: shape {attacks.shape} does not match spoof scores {spoof.shape}")
    result = {"pooled": eer(bonafide, spoof)[0]}
    for attack in np.unique(attacks):
        result[str(attack)] = eer(bonafide, spoof[attacks == attack])[0]
    return result


@dataclass(frozen=True)
class TDCFCosts:
    """Priors and costs of the tandem (CM then ASV) detection cost function.

    Defaults are those of ASVspoof 2019 and 2021 LA. The 2019 "legacy" t-DCF uses the priors with
    the separate ASV and CM costs (``c_miss_asv``, ``c_fa_asv``, ``c_miss_cm``, ``c_fa_cm``);
    the revised 2021 t-DCF uses the priors with the tandem costs ``c_miss``, ``c_fa`` and
    ``c_fa_spoof``. The three priors must sum to one.
    """

    p_spoof: float = 0.05  # prior of a spoofing attack
    p_target: float = (1 - 0.05) * 0.99  # prior of a bona fide target speaker
    p_nontarget: float = (1 - 0.05) * 0.01  # prior of a bona fide zero-effort impostor
    c_miss: float = 1.0  # 2021: tandem system rejects a target speaker
    c_fa: float = 10.0  # 2021: tandem system accepts a nontarget speaker
    c_fa_spoof: float = 10.0  # 2021: tandem system accepts a spoof
    c_miss_asv: float = 1.0  # 2019: ASV rejects a target speaker
    c_fa_asv: float = 10.0  # 2019: ASV accepts a nontarget speaker
    c_miss_cm: float = 1.0  # 2019: CM rejects a bona fide utterance
    c_fa_cm: float = 10.0  # 2019: CM passes a spoof on to the ASV

    def __post_init__(self) -> None:
        priors = (self.p_spoof, self.p_target, self.p_nontarget)
        if min(priors) < 0 or abs(sum(priors) - 1) > 1e-10:
            raise ValueError(f"TDCFCosts: priors (p_spoof, p_target, p_nontarget) = {priors} must be >= 0 and sum to 1")


def min_tdcf(
    bonafide: ArrayLike,
    spoof: ArrayLike,
    asv_target: ArrayLike,
    asv_nontarget: ArrayLike,
    asv_spoof: ArrayLike,
    *,
    version: str = "2019",
    costs: TDCFCosts | None = None,
) -> float:
    """Minimum normalised tandem DCF of the CM with a fixed ASV system, ASVspoof 2019 or 2021.

    The ASV accepts a trial whose ASV score is at or above its own EER threshold (computed from
    ``asv_target`` vs ``asv_nontarget``); its miss and false-alarm rates turn the t-DCF into a
    line in the CM's miss and false-alarm rates, minimised over the CM's operating points.

    ``version="2019"``: the ASVspoof 2019 ("legacy") t-DCF, C1 Pmiss_cm + C2 Pfa_cm divided by
    min(C1, C2), with C1 = Ptar (Cmiss_cm - Cmiss_asv Pmiss_asv) - Pnon Cfa_asv Pfa_asv and
    C2 = Cfa_cm Pspoof (1 - Pmiss_spoof_asv). ``version="2021"``: the revised t-DCF of the
    ASVspoof 2021 evaluation package, C0 + C1 Pmiss_cm + C2 Pfa_cm divided by the cost of the
    better of the two trivial CMs, C0 + min(C1, C2), with C0 = Ptar Cmiss Pmiss_asv +
    Pnon Cfa Pfa_asv, C1 = Ptar Cmiss - C0 and C2 = Pspoof Cfa_spoof Pfa_spoof_asv.
    """
    c0, c1, c2, default = tdcf_weights(asv_target, asv_nontarget, asv_spoof, version=version, costs=costs)
    pmiss_cm, pfa_cm, _ = det_curve(bonafide, spoof)
    return float(np.min(c0 + c1 * pmiss_cm + c2 * pfa_cm) / default)


def tdcf_weights(
    asv_target: ArrayLike,
    asv_nontarget: ArrayLike,
    asv_spoof: ArrayLike,
    *,
    version: str = "2019",
    costs: TDCFCosts | None = None,
) -> tuple[float, float, float, float]:
    """C0, C1, C2 and the normaliser of :func:`min_tdcf`'s line, from the ASV scores alone.

    They depend on the ASV system only, so ASV scores that leave no positive normaliser (an ASV
    that errs too much, or accepts no spoof) can be refused before any CM is scored.
    """
    if version not in ("2019", "2021"):
        raise ValueError(f"version must be '2019' or '2021', got {version!r}")
    c = TDCFCosts() if costs is None else costs
    asv_target = _scores("asv_target", asv_target)
    asv_nontarget = _scores("asv_nontarget", asv_nontarget)
    asv_spoof = _scores("asv_spoof", asv_spoof)
    asv_threshold = eer(asv_target, asv_nontarget)[1]
    pmiss_asv = float(np.mean(asv_target < asv_threshold))
    pfa_asv = float(np.mean(asv_nontarget >= asv_threshold))
    pfa_spoof_asv = float(np.mean(asv_spoof >= asv_threshold))
    if version == "2019":
        c0 = 0.0
        c1 = c.p_target * (c.c_miss_cm - c.c_miss_asv * pmiss_asv) - c.p_nontarget * c.c_fa_asv * pfa_asv
        c2 = c.c_fa_cm * c.p_spoof * pfa_spoof_asv
        default = min(c1, c2)
    else:
        c0 = c.p_target * c.c_miss * pmiss_asv + c.p_nontarget * c.c_fa * pfa_asv
        c1 = c.p_target * c.c_miss - c0
        c2 = c.p_spoof * c.c_fa_spoof * pfa_spoof_asv
        default = c0 + min(c1, c2)
    if min(c0, c1, c2) < 0 or default <= 0:
        raise ValueError(
            f"t-DCF weights C0={c0:.6g}, C1={c1:.6g}, C2={c2:.6g} leave no positive normaliser "
            f"({default:.6g}): the ASV system errs too much, or accepts no spoof; check the ASV scores"
        )
    return c0, c1, c2, default


@dataclass(frozen=True)
class ADCFCosts:
    """Priors and costs of the architecture-agnostic DCF (a-DCF) of spoofing-aware speaker
    verification (Shim et al., Odyssey 2024).

    Defaults are those of the ``a_dcf`` package of the authors (``CostModel``) and of ASVspoof 5
    track 2: a target prior of 0.9, nontarget and spoof priors of 0.05 each, a miss cost of 1,
    a nontarget false-alarm cost of 10 and a spoof false-alarm cost of 20. The priors sum to one.
    """

    p_target: float = 0.9
    p_nontarget: float = 0.05
    p_spoof: float = 0.05
    c_miss: float = 1.0  # a target trial rejected
    c_fa_nontarget: float = 10.0  # a zero-effort impostor accepted
    c_fa_spoof: float = 20.0  # a spoof accepted

    def __post_init__(self) -> None:
        priors = (self.p_target, self.p_nontarget, self.p_spoof)
        costs = (self.c_miss, self.c_fa_nontarget, self.c_fa_spoof)
        if min(priors) < 0 or abs(sum(priors) - 1) > 1e-10 or min(costs) <= 0:
            raise ValueError(
                f"ADCFCosts: priors (p_target, p_nontarget, p_spoof) = {priors} must be >= 0 and sum to 1, "
                f"costs (c_miss, c_fa_nontarget, c_fa_spoof) = {costs} must be > 0"
            )


def a_dcf(
    target: ArrayLike, nontarget: ArrayLike, spoof: ArrayLike, *, costs: ADCFCosts | None = None
) -> tuple[float, float]:
    """Minimum normalised a-DCF of a SASV system's scores and the threshold reaching it.

    a-DCF = (Cmiss Ptar Pmiss + Cfa_non Pnon Pfa_non + Cfa_spf Pspf Pfa_spf) / min(Cmiss Ptar,
    Cfa_non Pnon + Cfa_spf Pspf): the normaliser is the cost of the better trivial system
    (reject all, or accept all), so 1 means "no better than no system". ``target`` are the
    scores of target trials (the claimed speaker, bona fide), ``nontarget`` of zero-effort
    impostors, ``spoof`` of spoofed trials; higher is more "accept".

    The operating points are those of the ``a_dcf`` package (``compute_a_det_curve``): point
    ``k`` rejects the ``k`` lowest-scored trials of the stable sort of [target, nontarget,
    spoof], so tied scores give one point per trial. The threshold returned is the score of the
    last trial the best point rejects (the lowest score minus 1e-8 when it rejects none), as
    the package reports it.
    """
    c = ADCFCosts() if costs is None else costs
    target = _scores("target", target)
    nontarget = _scores("nontarget", nontarget)
    spoof = _scores("spoof", spoof)
    (miss, passed_nontarget, passed_spoof), sorted_scores = _rejections(target, nontarget, spoof)
    p_miss = miss / target.size
    p_fa_nontarget = (nontarget.size - passed_nontarget) / nontarget.size
    p_fa_spoof = (spoof.size - passed_spoof) / spoof.size
    cost = c.c_miss * c.p_target * p_miss + c.c_fa_nontarget * c.p_nontarget * p_fa_nontarget
    cost += c.c_fa_spoof * c.p_spoof * p_fa_spoof
    normalised = cost / min(c.c_fa_nontarget * c.p_nontarget + c.c_fa_spoof * c.p_spoof, c.c_miss * c.p_target)
    k = int(np.argmin(normalised))
    threshold = sorted_scores[0] - 1e-8 if k == 0 else sorted_scores[k - 1]
    return float(normalised[k]), float(threshold)


def _dcf_weights(p_spoof: float, c_miss: float, c_fa: float) -> tuple[float, float, float]:
    """Miss weight, false-alarm weight and the normaliser of the ASVspoof 5 DCF.

    The normaliser is the cost of the better trivial CM (accept all or reject all), so 1 means
    "no better than no CM".
    """
    if not 0 < p_spoof < 1 or c_miss <= 0 or c_fa <= 0:
        raise ValueError(
            f"need 0 < p_spoof < 1 and positive costs, got p_spoof={p_spoof}, c_miss={c_miss}, c_fa={c_fa}"
        )
    w_miss, w_fa = c_miss * (1 - p_spoof), c_fa * p_spoof
    return w_miss, w_fa, min(w_miss, w_fa)


def min_dcf(
    bonafide: ArrayLike, spoof: ArrayLike, *, p_spoof: float = 0.05, c_miss: float = 1.0, c_fa: float = 10.0
) -> tuple[float, float]:
    """Minimum normalised DCF of ASVspoof 5 (its primary CM metric) and the threshold reaching it.

    DCF = (c_miss (1 - p_spoof) Pmiss + c_fa p_spoof Pfa) / min(c_miss (1 - p_spoof), c_fa p_spoof)
    over the operating points of :func:`det_curve`. Bona fide is the target class, as in the
    ASVspoof 5 evaluation plan and its evaluation package (``compute_mindcf``: the miss cost
    goes with the bona fide prior 1 - p_spoof).
    """
    w_miss, w_fa, norm = _dcf_weights(p_spoof, c_miss, c_fa)
    frr, far, thresholds = det_curve(bonafide, spoof)
    costs = w_miss * frr + w_fa * far
    k = int(np.argmin(costs))
    return float(costs[k] / norm), float(thresholds[k])


def act_dcf(
    bonafide: ArrayLike,
    spoof: ArrayLike,
    threshold: float | None = None,
    *,
    p_spoof: float = 0.05,
    c_miss: float = 1.0,
    c_fa: float = 10.0,
) -> float:
    """Actual normalised DCF of ASVspoof 5: the DCF at one fixed threshold, so calibration counts.

    Without ``threshold`` the scores are taken as natural-log likelihood ratios (bona fide over
    spoof) and the Bayes threshold -log(c_miss (1 - p_spoof) / (c_fa p_spoof)) is used, as in
    the ASVspoof 5 evaluation package (``compute_actDCF``). A trial is accepted as bona fide when
    its score is >= the threshold. Normalised like :func:`min_dcf`.
    """
    w_miss, w_fa, norm = _dcf_weights(p_spoof, c_miss, c_fa)
    bonafide = _scores("bonafide", bonafide)
    spoof = _scores("spoof", spoof)
    if threshold is None:
        threshold = -np.log(w_miss / w_fa)
    cost = w_miss * np.mean(bonafide < threshold) + w_fa * np.mean(spoof >= threshold)
    return float(cost / norm)


def cllr(bonafide: ArrayLike, spoof: ArrayLike) -> float:
    """Log-likelihood-ratio cost in bits, a secondary ASVspoof 5 metric.

    Scores are natural-log likelihood ratios of bona fide over spoof (bona fide is the target
    class, as in the ASVspoof 5 package's ``calculate_CLLR``):
    Cllr = (mean log2(1 + e^-s) over bona fide + mean log2(1 + e^s) over spoof) / 2.
    It is 1 bit for a CM that always outputs 0 and tends to 0 for confident correct scores;
    ``np.logaddexp`` keeps it finite for scores of any size.
    """
    bonafide = _scores("bonafide", bonafide)
    spoof = _scores("spoof", spoof)
    nats = np.mean(np.logaddexp(0.0, -bonafide)) + np.mean(np.logaddexp(0.0, spoof))
    return float(nats / (2 * np.log(2)))
