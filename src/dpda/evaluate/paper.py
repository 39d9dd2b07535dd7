"""What the paper reports, so that a report can put our numbers next to it.

Truong et al., "Addressing Gradient Misalignment in Data-Augmented Training for Robust Speech
Deepfake Detection", ICASSP 2026 (arXiv 2509.20682). Numbers are transcribed from the project's
summary of the paper (``../shared/PAPER.md``, "Reported results"); row ids are the ``paper_row``
values of ``configs/paper/*.yaml`` and set names their ``eval.sets[*].name``.

``OTHER_RESULTS`` holds what other publications report for detectors that configs outside
``configs/paper`` rebuild (ids ``<first author><year>_<short title>/<model>``), each with its
source; ``published(row)`` answers for both, so the report names where a figure comes from.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "OTHER_RESULTS",
    "PAPER_CLAIMS",
    "PAPER_CONFLICT_RATE",
    "PAPER_RESULTS",
    "PAPER_SOURCE",
    "UNREPORTED_ROWS",
    "PaperClaim",
    "Published",
    "published",
]

_SETS = ("asvspoof2021_df_eval", "in_the_wild", "for_norm_test")  # the paper's column order


def _row(df: float, itw: float, for_: float) -> dict[str, float]:
    return dict(zip(_SETS, (df, itw, for_)))


#: Reported EER (%) per paper row id and eval set name. The paper gives no ASVspoof 2021 LA numbers.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "table1/xlsr_conformer_tcm/dpda": _row(2.11, 7.97, 5.31),
    "table1/xlsr_conformer_tcm/pcgrad": _row(1.81, 6.48, 4.47),
    "table1/xlsr_conformer_tcm/gradvac": _row(1.83, 7.09, 4.81),
    "table1/xlsr_conformer_tcm/cagrad": _row(1.92, 7.45, 4.23),
    "table1/xlsr_aasist/dpda": _row(1.87, 6.20, 4.60),
    "table1/xlsr_aasist/pcgrad": _row(2.13, 5.42, 3.04),
    "table1/xlsr_mamba/dpda": _row(2.31, 7.62, 5.39),
    "table1/xlsr_mamba/pcgrad": _row(1.74, 6.43, 4.86),
    "table1/xlsr_conformer_tcm/musan_rir/dpda": _row(5.45, 23.04, 12.02),
    "table1/xlsr_conformer_tcm/musan_rir/pcgrad": _row(3.81, 19.43, 8.05),
}

#: Rows our configs complete the grid with but the paper leaves blank (GradVac and CAGrad were
#: run on the Conformer-TCM back-end only).
UNREPORTED_ROWS: frozenset[str] = frozenset(
    {
        "table1/xlsr_aasist/gradvac",
        "table1/xlsr_aasist/cagrad",
        "table1/xlsr_mamba/gradvac",
        "table1/xlsr_mamba/cagrad",
    }
)

#: Where PAPER_RESULTS come from, as the report cites it.
PAPER_SOURCE = "Truong et al., ICASSP 2026, Table 1"


class Published(NamedTuple):
    """Reported EERs (%) per eval set name, and the publication that reports them."""

    eers: dict[str, float]
    source: str


#: Other publications' EERs (%) per ``paper_row`` id, for detectors the DPDA paper does not train.
OTHER_RESULTS: dict[str, Published] = {
    # configs/baselines/xlsr_sls_rawboost.yaml: XLS-R 300M + SLS, ASVspoof 2019 LA, RawBoost
    "zhang2024_sls/xlsr_sls": Published(
        {"asvspoof2021_la_eval": 2.87, "asvspoof2021_df_eval": 1.92, "in_the_wild": 7.46},
        'Zhang, Wen and Hu, "Audio Deepfake Detection with Self-Supervised XLS-R and SLS Classifier", ACM MM 2024',
    ),
}


def published(row: str | None) -> Published | None:
    """The EERs reported for ``paper_row`` ``row`` and their source; None where none are."""
    if row in PAPER_RESULTS:
        return Published(PAPER_RESULTS[row], PAPER_SOURCE)
    return OTHER_RESULTS.get(row or "")


#: The share of training iterations whose path gradients conflict with RawBoost, per the paper.
PAPER_CONFLICT_RATE = 0.25


class PaperClaim(NamedTuple):
    """One statement of the paper, and where it is made (PAPER.md names no section numbers)."""

    text: str
    where: str


PAPER_CLAIMS: dict[str, PaperClaim] = {
    "conflict_rate": PaperClaim(
        "about 25 % of training iterations have conflicting path gradients (negative inner product) with RawBoost",
        "PAPER.md, 'Method'",
    ),
    "convergence": PaperClaim(
        "faster convergence: the best dev loss is reached at epoch 4 with alignment, epoch 14 without",
        "PAPER.md, 'Reported results'",
    ),
    "eer": PaperClaim(
        "lower EER with alignment: In-the-Wild 7.97 % -> 6.48 % with PCGrad on XLSR-Conformer-TCM (18.69 % relative)",
        "Table 1; PAPER.md, 'Reported results'",
    ),
}
