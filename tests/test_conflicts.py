"""One conflict rate: the meter's epoch counts, the pooled rate of a run, and the state they resume from."""

from __future__ import annotations

import math

import pytest

from dpda.dualpath import ConflictMeter, StepStats
from dpda.results import EpochRecord, conflict_rate, pooled_conflict_rate


def stats(*, skipped=False, conflict=None, cosine=None):
    return StepStats(0.5, 1.0, skipped=skipped, conflict=conflict, cosine=cosine)


def test_the_meter_counts_flagged_steps_only():
    meter = ConflictMeter()
    assert math.isnan(meter.rate) and math.isnan(meter.as_dict()["mean_cosine"])
    meter.update(stats(conflict=True, cosine=-0.5))
    meter.update(stats(skipped=True))
    meter.update(stats(conflict=False, cosine=0.25))
    meter.update(stats(conflict=True, cosine=-0.25))
    meter.update(stats())  # concat mode: no gradient statistics
    assert meter.steps == 5 and meter.skipped_steps == 1
    assert meter.rate == pytest.approx(2 / 3)
    assert meter.as_dict() == {
        "conflict_rate": pytest.approx(2 / 3),
        "mean_cosine": pytest.approx(-1 / 6),
        "steps": 5,
        "skipped_steps": 1,
        "conflicts": 2,
        "flagged_steps": 3,
    }
    restored = ConflictMeter()
    restored.load_state_dict(meter.state_dict())
    assert restored.as_dict() == meter.as_dict()
    meter.reset()
    assert meter.as_dict()["steps"] == 0 and math.isnan(meter.rate)
    meter.update(stats(skipped=True))
    assert math.isnan(meter.rate) and meter.as_dict()["skipped_steps"] == 1


def test_a_run_pools_the_counts_of_its_epochs_not_their_rates():
    def epoch(number, conflicts, flagged):
        counts = {"conflict_rate": conflict_rate(conflicts, flagged), "mean_cosine": 0.0, "steps": flagged}
        return EpochRecord(number, 10 * number, 0.5, 0.5, **counts, skipped_steps=0, conflicts=conflicts,
                           flagged_steps=flagged, lr=1e-3, train_seconds=1.0)  # fmt: skip

    history = [epoch(1, 1, 2), epoch(2, 0, 8)]
    assert pooled_conflict_rate(history) == pytest.approx(0.1)  # 1 of 10 steps, not the mean 0.25
    assert math.isnan(pooled_conflict_rate([epoch(1, 0, 0)])) and math.isnan(pooled_conflict_rate([]))
