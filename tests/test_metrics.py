"""ASVspoof metrics: against the official scripts' outputs, against brute force, and edge cases; the
a-DCF against its authors' ``a_dcf`` package."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpda.evaluate import (
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


# -- a-DCF -----------------------------------------------------------------------------------------
def package_a_dcf(target, nontarget, spoof, costs: ADCFCosts):
    """Min a-DCF and threshold as the ``a_dcf`` package computes them: its ``calculate_a_dcf`` reads a
    file with ``np.float`` (gone since NumPy 1.24), so its own curve and normaliser are composed here
    as that function composes them."""
    package = pytest.importorskip("a_dcf.a_dcf", reason="the a_dcf package (pip install a-dcf) is a dev dependency")
    model = package.CostModel(
        Pspf=costs.p_spoof,
        Pnontrg=costs.p_nontarget,
        Ptrg=costs.p_target,
        Cmiss=costs.c_miss,
        Cfa_asv=costs.c_fa_nontarget,
        Cfa_cm=costs.c_fa_spoof,
    )
    far_asv, far_cm, frr, thresholds = package.compute_a_det_curve(target, nontarget, spoof)
    dcfs = (
        np.array([model.Cmiss * model.Ptrg]) * np.array(frr)
        + np.array([model.Cfa_asv * model.Pnontrg]) * np.array(far_asv)
        + np.array([model.Cfa_cm * model.Pspf]) * np.array(far_cm)
    )
    normed = package.normalize(dcfs, model)
    best = int(np.argmin(normed))
    return float(normed[best]), float(thresholds[best])


COST_MODELS = [
    ADCFCosts(),
    ADCFCosts(p_target=0.5, p_nontarget=0.25, p_spoof=0.25, c_miss=1.0, c_fa_nontarget=1.0, c_fa_spoof=1.0),
    ADCFCosts(p_target=0.6, p_nontarget=0.1, p_spoof=0.3, c_miss=3.0, c_fa_nontarget=2.0, c_fa_spoof=50.0),
]


@pytest.mark.parametrize("seed", range(12))
def test_a_dcf_equals_the_a_dcf_package(seed):
    """Continuous scores (seeds 0-3), scores rounded to 0.1 and small integers (ties, 4-11), and
    class sizes from 1 to 400, under three cost models: value and threshold equal to 1e-12."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 400, 3) if seed % 3 else rng.integers(1, 6, 3)
    target = rng.normal(2.0, 1.0, sizes[0])
    nontarget = rng.normal(-1.0, 1.5, sizes[1])
    spoof = rng.normal(0.5, 2.0, sizes[2])
    if seed >= 4:
        target, nontarget, spoof = (np.round(x, 1 if seed < 8 else 0) for x in (target, nontarget, spoof))
    for costs in COST_MODELS:
        expected = package_a_dcf(target, nontarget, spoof, costs)
        assert a_dcf(target, nontarget, spoof, costs=costs) == pytest.approx(expected, abs=1e-12, rel=0)


def test_a_dcf_equals_the_package_where_the_classes_are_all_tied():
    target, nontarget, spoof = np.zeros(3), np.zeros(4), np.zeros(2)
    assert a_dcf(target, nontarget, spoof) == pytest.approx(package_a_dcf(target, nontarget, spoof, ADCFCosts()))


def test_a_dcf_known_values():
    # Defaults: normaliser min(0.9, 0.5 + 1.0) = 0.9; a perfect system costs 0 at the threshold
    # between the highest impostor (spoof 0.5) and the lowest target (1.0).
    assert a_dcf([1.0, 2.0], [-1.0, 0.0], [0.5]) == (0.0, 0.5)
    # Reject everything: Pmiss 1 -> 0.9 / 0.9 = 1; accept everything: (0.5 + 1.0) / 0.9.
    value, threshold = a_dcf([-5.0], [1.0], [2.0])
    assert value == pytest.approx(1.0) and threshold == 2.0
    # Misses cost most: the normaliser is accepting all (0.5 + 1.0), which point 0 (threshold =
    # lowest score - 1e-8) does, at normalised cost 1.
    assert a_dcf([0.0], [1.0], [2.0], costs=ADCFCosts(c_miss=100.0)) == pytest.approx((1.0, -1e-8))


def test_a_dcf_is_vectorised():
    """611,829 trials (ASVspoof 2021 DF eval's size) well under a second (benchmarks/adcf_time.py)."""
    import time

    rng = np.random.default_rng(0)
    target, nontarget, spoof = rng.normal(2, 1, 61_183), rng.normal(-1, 1, 244_732), rng.normal(0, 2, 305_914)
    start = time.perf_counter()
    a_dcf(target, nontarget, spoof)
    assert time.perf_counter() - start < 1.0


def test_a_dcf_input_errors():
    with pytest.raises(ValueError, match="nontarget: no scores"):
        a_dcf([1.0], [], [0.0])
    with pytest.raises(ValueError, match="spoof: 1 NaN/inf"):
        a_dcf([1.0], [0.0], [np.nan])
    with pytest.raises(ValueError, match="sum to 1"):
        ADCFCosts(p_target=0.5)
    with pytest.raises(ValueError, match="must be > 0"):
        ADCFCosts(c_fa_spoof=0.0)


def test_tdcf_weights_are_the_line_min_tdcf_minimises():
    rng = np.random.default_rng(5)
    bonafide, spoof = rng.normal(1, 1, 300), rng.normal(-1, 1, 200)
    asv = rng.normal(3, 1, 100), rng.normal(-2, 1, 150), rng.normal(1, 1.5, 120)
    frr, far, _ = det_curve(bonafide, spoof)
    for version in ("2019", "2021"):
        c0, c1, c2, norm = tdcf_weights(*asv, version=version)
        assert min_tdcf(bonafide, spoof, *asv, version=version) == np.min(c0 + c1 * frr + c2 * far) / norm
    assert tdcf_weights(*asv, version="2019")[0] == 0.0
