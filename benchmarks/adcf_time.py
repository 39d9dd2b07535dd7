"""Time min a-DCF and min t-DCF on 611,829 trials (the size of ASVspoof 2021 DF eval), with the
``a_dcf`` package's own curve on the same scores as the ratio's reference, in one run.

Synthetic scores rounded to 1e-3 (so that ties occur): SASV trials 10 % target, 40 % nontarget,
50 % spoof for the a-DCF; for the t-DCF 611,829 CM trials (10 % bona fide) and 611,829 ASV trials
(same split as the SASV ones). The package's ``calculate_a_dcf`` reads a file with ``np.float``
(gone since NumPy 1.24), so its ``compute_a_det_curve`` and ``normalize`` are timed, composed as
that function composes them. Also timed: reading a 611,829-line SASV file and matching it to
611,829 CM trials (``dpda.evaluate.asv``). Median of 5 runs after one warm-up (the package: of 3);
NumPy's sort runs on one thread, and ``taskset`` pins the process to one core as well.

    taskset -c 0 python benchmarks/adcf_time.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from metrics import N_TRIALS, median_seconds

from dpda.data import Utterance
from dpda.evaluate import ADCFCosts, a_dcf, min_tdcf
from dpda.evaluate.asv import check_trials, read_sasv_scores


def package_a_dcf(target: np.ndarray, nontarget: np.ndarray, spoof: np.ndarray) -> tuple[float, float]:
    from a_dcf.a_dcf import CostModel, compute_a_det_curve, normalize

    model = CostModel()
    far_asv, far_cm, frr, thresholds = compute_a_det_curve(target, nontarget, spoof)
    dcfs = (
        np.array([model.Cmiss * model.Ptrg]) * np.array(frr)
        + np.array([model.Cfa_asv * model.Pnontrg]) * np.array(far_asv)
        + np.array([model.Cfa_cm * model.Pspf]) * np.array(far_cm)
    )
    normed = normalize(dcfs, model)
    best = int(np.argmin(normed))
    return float(normed[best]), float(thresholds[best])


def split(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_target, n_nontarget = N_TRIALS // 10, N_TRIALS * 4 // 10
    return (
        np.round(rng.normal(3.0, 1.0, n_target), 3),
        np.round(rng.normal(-2.0, 1.5, n_nontarget), 3),
        np.round(rng.normal(0.5, 2.0, N_TRIALS - n_target - n_nontarget), 3),
    )


def main() -> None:
    rng = np.random.default_rng(0)
    target, nontarget, spoof = split(rng)
    n_bonafide = N_TRIALS // 10
    bonafide = np.round(rng.normal(2.0, 1.5, n_bonafide), 3)
    cm_spoof = np.round(rng.normal(-2.0, 2.0, N_TRIALS - n_bonafide), 3)
    asv = split(rng)
    ours, reference = a_dcf(target, nontarget, spoof), package_a_dcf(target, nontarget, spoof)
    assert ADCFCosts() == ADCFCosts(0.9, 0.05, 0.05, 1.0, 10.0, 20.0)
    assert abs(ours[0] - reference[0]) <= 1e-12 and ours[1] == reference[1], (ours, reference)

    ids = [f"E_{index:07d}" for index in range(N_TRIALS)]
    keys = ["target"] * len(target) + ["nontarget"] * len(nontarget) + ["spoof"] * len(spoof)
    records = [Utterance(utt, None, 0 if key == "spoof" else 1) for utt, key in zip(ids, keys)]
    scores = np.concatenate((target, nontarget, spoof))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sasv.txt"
        path.write_text("".join(f"SPK {utt} {s:.3f} {key}\n" for utt, s, key in zip(ids, scores, keys)))
        trials = read_sasv_scores(path)
        runs = {
            "min a-DCF, dpda a_dcf": (lambda: a_dcf(target, nontarget, spoof), 5),
            "min a-DCF, a_dcf package": (lambda: package_a_dcf(target, nontarget, spoof), 3),
            "min t-DCF 2019": (lambda: min_tdcf(bonafide, cm_spoof, *asv, version="2019"), 5),
            "min t-DCF 2021": (lambda: min_tdcf(bonafide, cm_spoof, *asv, version="2021"), 5),
            "read_sasv_scores (611,829 lines)": (lambda: read_sasv_scores(path), 3),
            "check_trials against 611,829 CM trials": (lambda: check_trials(trials, records), 3),
        }
        print(f"{N_TRIALS:,} trials each; min a-DCF {ours[0]:.6f} at {ours[1]:.3f} (the package: equal)")
        seconds = {name: median_seconds(run, repeats) for name, (run, repeats) in runs.items()}
    for name, value in seconds.items():
        print(f"{name:<40} {value:.3f} s")
    ratio = seconds["min a-DCF, a_dcf package"] / seconds["min a-DCF, dpda a_dcf"]
    print(f"a_dcf package / dpda a_dcf: {ratio:.1f}x")


if __name__ == "__main__":
    main()
