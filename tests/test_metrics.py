"""ASVspoof metrics: against the official scripts' outputs, against brute force, and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpda.evaluate import (
    TDCFCosts,
    act_dcf,
    cllr,
    det_curve,
    eer,
    eer_per_attack,
    min_dcf,
    min_tdcf,
)

CASE_INPUTS = ("bonafide", "spoof", "asv_target", "asv_nontarget", "asv_spoof")


@pytest.fixture(scope="module")
def official(reference_dir):
    path = reference_dir / "metrics" / "official_metrics.npz"
    if not path.is_file():
        pytest.skip(f"official metric outputs not found at {path}")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("case", range(10))
def test_matches_official_scripts(official, case):
    assert int(official["n_cases"]) == 10
    bonafide, spoof, *asv = (official[f"case{case}_{name}"] for name in CASE_INPUTS)
    value, threshold = eer(bonafide, spoof)
    assert value == pytest.approx(official[f"case{case}_eer"], abs=1e-9)
    assert threshold == pytest.approx(official[f"case{case}_eer_threshold"], abs=1e-9)
    for version in ("2019", "2021"):
        tdcf = min_tdcf(bonafide, spoof, *asv, version=version)
        assert tdcf == pytest.approx(official[f"case{case}_min_tdcf_{version}"], abs=1e-6)


def brute_force_eer(bonafide, spoof):
    """EER from a Python sort in which a tied bona fide trial precedes a tied spoof (official order).

    The rates are computed with the official script's arithmetic, (n - count) / n, so that
    mathematically equal gaps |frr - far| round alike and near-ties resolve the same way.
    """
    trials = sorted([(s, 0) for s in bonafide.tolist()] + [(s, 1) for s in spoof.tolist()])
    best = (math.inf, None, None)
    missed = passed_spoof = 0
    points = [(0.0, 1.0, trials[0][0] - 0.001)]
    for score, is_spoof in trials:
        missed += 1 - is_spoof
        passed_spoof += is_spoof
        points.append((missed / bonafide.size, (spoof.size - passed_spoof) / spoof.size, score))
    for frr, far, threshold in points:
        if abs(frr - far) < best[0]:
            best = (abs(frr - far), (frr + far) / 2, threshold)
    return best[1], best[2]


@pytest.mark.parametrize("seed", range(20))
def test_eer_matches_brute_force_on_continuous_scores(seed):
    rng = np.random.default_rng(seed)
    bonafide = rng.normal(1.0, 1.0, rng.integers(1, 40))
    spoof = rng.normal(-0.5, 1.5, rng.integers(1, 40))
    value, threshold = eer(bonafide, spoof)
    # Without ties, operating point k is the threshold t = k-th lowest score with "reject if <= t".
    candidates = np.concatenate(([min(bonafide.min(), spoof.min()) - 0.001], bonafide, spoof))
    frr = (bonafide[None, :] <= candidates[:, None]).mean(axis=1)
    far = (spoof[None, :] > candidates[:, None]).mean(axis=1)
    gap = np.abs(frr - far)
    at_best = np.flatnonzero(gap == gap.min())
    assert any(value == pytest.approx((frr[k] + far[k]) / 2, abs=1e-12) for k in at_best)
    assert threshold in candidates[at_best]
    assert (value, threshold) == pytest.approx(brute_force_eer(bonafide, spoof), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_eer_matches_brute_force_on_tied_scores(seed):
    rng = np.random.default_rng(100 + seed)
    bonafide = rng.integers(-2, 4, rng.integers(1, 30)).astype(float)
    spoof = rng.integers(-3, 2, rng.integers(1, 30)).astype(float)
    assert eer(bonafide, spoof) == pytest.approx(brute_force_eer(bonafide, spoof), abs=1e-12)


def test_det_curve_shape_and_ends():
    frr, far, thresholds = det_curve([0.5, 2.0, 1.0], [0.0, 1.0])
    assert frr.shape == far.shape == thresholds.shape == (6,)
    assert (frr[0], far[0], frr[-1], far[-1]) == (0.0, 1.0, 1.0, 0.0)
    np.testing.assert_allclose(thresholds, [-0.001, 0.0, 0.5, 1.0, 1.0, 2.0])
    # Tied scores at 1.0: the bona fide trial is rejected first, as in the official script.
    np.testing.assert_allclose(frr, [0, 0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(far, [1, 0.5, 0.5, 0.5, 0, 0])


def test_perfect_and_swapped_systems():
    bonafide, spoof = np.linspace(1, 2, 50), np.linspace(-2, -1, 70)
    assert eer(bonafide, spoof)[0] == 0.0
    assert eer(spoof, bonafide)[0] == 1.0
    asv = ([3.0, 4.0, 5.0, 2.0], [-1.0, -2.0, 0.5, 3.5], [1.0, 2.5, 4.5])
    assert min_tdcf(bonafide, spoof, *asv, version="2019") == 0.0
    assert min_tdcf(spoof, bonafide, *asv, version="2019") == pytest.approx(1.0)
    # 2021: an error-free CM still pays the ASV's own errors, C0 / (C0 + min(C1, C2)).
    assert 0 < min_tdcf(bonafide, spoof, *asv, version="2021") < 0.5
    assert min_tdcf(spoof, bonafide, *asv, version="2021") == pytest.approx(1.0)
    assert min_dcf(bonafide, spoof) == (0.0, -1.0)
    assert act_dcf(bonafide + 10, spoof - 10) == 0.0


def test_eer_per_attack():
    bonafide = np.array([1.0, 2.0, 3.0, 4.0])
    spoof = np.array([-1.0, 0.0, 2.5, 5.0, -3.0])
    attacks = np.array(["A02", "A01", "A02", "A02", "A01"])
    result = eer_per_attack(bonafide, spoof, attacks)
    assert list(result) == ["pooled", "A01", "A02"]
    assert result["pooled"] == eer(bonafide, spoof)[0]
    assert result["A01"] == 0.0
    assert result["A02"] == eer(bonafide, spoof[attacks == "A02"])[0]
    assert list(eer_per_attack(bonafide, spoof, [7, 7, 3, 3, 3])) == ["pooled", "3", "7"]
    with pytest.raises(ValueError, match="does not match"):
        eer_per_attack(bonafide, spoof, attacks[:4])


def test_dcf_known_values():
    # Sorted trials 0 (spoof), 1 (bona fide), 1.5 (spoof), 2 (bona fide); with the defaults the
    # normalised DCF is 1.9 Pmiss + Pfa, smallest (0.5) after rejecting the lowest trial.
    bonafide, spoof = [1.0, 2.0], [0.0, 1.5]
    assert min_dcf(bonafide, spoof) == pytest.approx((0.5, 0.0))
    assert act_dcf(bonafide, spoof, threshold=1.0) == pytest.approx(0.5)
    assert act_dcf(bonafide, spoof, threshold=1.75) == pytest.approx(1.9 * 0.5)
    # The Bayes threshold is log(0.5 / 0.95) = -0.642: scores of 0 are all accepted.
    assert act_dcf([0.0, 0.0], [0.0, 0.0]) == pytest.approx(1.0)
    assert act_dcf([-0.7], [-0.7]) == pytest.approx(1.9)
    # Equal costs and priors: the normalised DCF is Pmiss + Pfa, the Bayes threshold 0.
    assert act_dcf([0.1, -0.1], [-0.2, 0.3], p_spoof=0.5, c_fa=1.0) == pytest.approx(1.0)


def test_cllr_known_values():
    assert cllr(np.zeros(5), np.zeros(3)) == 1.0
    assert cllr([40.0, 60.0], [-50.0, -1e4]) < 1e-17
    assert cllr([-1e4], [1e4]) == pytest.approx(0.5 * 2e4 / math.log(2))  # finite, no overflow
    expected = 0.5 * (math.log2(1 + math.exp(-1.3)) + math.log2(1 + math.exp(-0.4)))
    assert cllr([1.3], [-0.4]) == pytest.approx(expected, rel=1e-12)


def test_costs_validate_priors():
    assert TDCFCosts().p_target + TDCFCosts().p_nontarget + TDCFCosts().p_spoof == pytest.approx(1)
    with pytest.raises(ValueError, match="sum to 1"):
        TDCFCosts(p_spoof=0.1)


@pytest.mark.parametrize(
    ("bonafide", "spoof", "message"),
    [
        ([], [1.0], "bonafide: no scores"),
        ([1.0], np.array([]), "spoof: no scores"),
        ([1.0, np.nan, 2.0, np.inf], [0.0], r"bonafide: 2 NaN/inf score\(s\) of 4, at index 1, 3"),
        ([1.0], [[0.0, 1.0]], "spoof: expected a 1-D array"),
    ],
)
def test_input_errors(bonafide, spoof, message):
    asv = ([2.0, 3.0], [-1.0, 0.0], [1.0, 2.5])
    for metric in (eer, det_curve, min_dcf, act_dcf, cllr, lambda b, s: min_tdcf(b, s, *asv)):
        with pytest.raises(ValueError, match=message):
            metric(bonafide, spoof)


def test_other_argument_errors():
    scores = ([1.0, 2.0], [0.0, 1.5])
    with pytest.raises(ValueError, match="asv_spoof: 1 NaN/inf"):
        min_tdcf(*scores, [2.0], [0.0], [np.nan])
    with pytest.raises(ValueError, match="version"):
        min_tdcf(*scores, [2.0], [0.0], [1.0], version="2020")
    with pytest.raises(ValueError, match="leave no positive normaliser"):
        min_tdcf(*scores, [2.0], [0.0], [-5.0])  # the ASV rejects every spoof: C2 = 0
    with pytest.raises(ValueError, match="p_spoof"):
        min_dcf(*scores, p_spoof=1.0)
