"""The mean and spread of a metric over runs (seeds): one definition for every table of them."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean, stdev


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of ``values``; the deviation of one run is 0.

    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    >>> mean_std([5.0])
    (5.0, 0.0)
    """
    if not values:
        raise ValueError("mean_std needs at least one value")
    return fmean(values), (stdev(values) if len(values) > 1 else 0.0)
