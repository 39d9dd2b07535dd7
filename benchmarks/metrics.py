"""Time the ASVspoof metrics at the size of ASVspoof 2021 DF eval (611,829 trials) on one core.

Target: ``eer`` under 1 s. Random scores (10 % bona fide, rounded to 1e-3 so that ties occur);
ASV scores of 20,000 trials for ``min_tdcf``. Median of 5 runs after one warm-up. NumPy's sort
and cumulative sums run on one thread; ``taskset`` pins the process to one core as well.

    taskset -c 0 python benchmarks/metrics.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from dpda.evaluate import eer, min_dcf, min_tdcf

N_TRIALS = 611_829


def median_seconds(run: Callable[[], object], repeats: int = 5) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    rng = np.random.default_rng(0)
    n_bonafide = N_TRIALS // 10
    bonafide = np.round(rng.normal(2.0, 1.5, n_bonafide), 3)
    spoof = np.round(rng.normal(-2.0, 2.0, N_TRIALS - n_bonafide), 3)
    asv = (rng.normal(3, 1, 2_000), rng.normal(-3, 1, 10_000), rng.normal(1, 2, 8_000))
    runs = {
        "eer": lambda: eer(bonafide, spoof),
        "min_tdcf 2019": lambda: min_tdcf(bonafide, spoof, *asv, version="2019"),
        "min_tdcf 2021": lambda: min_tdcf(bonafide, spoof, *asv, version="2021"),
        "min_dcf": lambda: min_dcf(bonafide, spoof),
    }
    print(f"{N_TRIALS:,} CM trials ({n_bonafide:,} bona fide), one core, median of 5")
    for name, run in runs.items():
        print(f"{name:<14} {median_seconds(run):.3f} s")


if __name__ == "__main__":
    main()
