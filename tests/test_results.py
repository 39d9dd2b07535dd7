"""Typed results: files written before the types existed read back and write out unchanged, and
a file that is not what dpda writes is refused by key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dpda.results import (
    DevMetrics,
    EvalResults,
    ResultsError,
    RunResults,
    SeedSummary,
    SetMetrics,
    Spread,
)

OLD_RUN = Path(__file__).parent / "data" / "old_run"


def test_an_old_results_json_reads_back_and_writes_the_same_content():
    data = json.loads((OLD_RUN / "results.json").read_text())
    results = RunResults.from_json(data)
    assert results.to_json() == data
    assert list(results.to_json()) == list(data)  # the key order too
    assert results.dev == DevMetrics(data["dev"]["dev_loss"], data["dev"]["dev_eer"])
    assert results.eval["heldout"].eer == data["eval"]["heldout"]["eer"]
    assert [record.epoch for record in results.history] == [1, 2, 3]
    assert results.history[-1].dev == DevMetrics(data["history"][-1]["dev_loss"], data["history"][-1]["dev_eer"])


def test_an_old_summary_json_reads_back_and_is_what_its_runs_make():
    data = json.loads((OLD_RUN / "summary.json").read_text())
    summary = SeedSummary.from_json(data)
    assert summary.to_json() == data
    run = RunResults.from_json(json.loads((OLD_RUN / "results.json").read_text()))
    assert set(run.comparable()) == set(summary.metrics)
    assert summary.metrics["dev_dev_loss"].values[0] == run.dev.dev_loss  # seed 1 is the stored run


def test_optional_fields_are_left_out_while_unset_and_required_ones_kept():
    one_class = SetMetrics(utterances=3, bonafide=3, spoof=0)
    assert one_class.to_json() == {"utterances": 3, "bonafide": 3, "spoof": 0}
    unlimited = EvalResults("final.safetensors", "margin", None, {"x": one_class})
    assert unlimited.to_json()["max_seconds"] is None  # no default: always written
    assert EvalResults.from_json(unlimited.to_json()) == unlimited
    no_dev = RunResults("r", 1, None, 1, 2, 1, 0, [1], math.nan, 0.5)
    assert "dev" not in no_dev.to_json() and "eval" not in no_dev.to_json()
    assert no_dev.to_json()["paper_row"] is None and no_dev.to_json()["history"] == []


def test_spread_is_the_sample_deviation():
    assert Spread.of([1.0, 2.0, 3.0]) == Spread(2.0, 1.0, [1.0, 2.0, 3.0])
    assert Spread.of([5.0]).std == 0.0
    with pytest.raises(ValueError, match="at least one"):
        Spread.of([])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(evl=1), r"results.json: unknown key 'evl' \(did you mean 'eval'\?\)"),
        (lambda d: d.pop("steps"), r"results.json: missing key\(s\) steps"),
        (lambda d: d["history"][1].pop("lr"), r"results.json: history\[1\]: missing key\(s\) lr"),
        (lambda d: d["eval"].update(extra=[1]), r"results.json: eval\['extra'\]: expected a JSON object, got list"),
        (lambda d: d.update(history={}), r"results.json: history: expected a JSON list, got dict"),
    ],
)
def test_a_file_that_is_not_what_dpda_writes_is_refused_by_key(change, message):
    data = json.loads((OLD_RUN / "results.json").read_text())
    change(data)
    with pytest.raises(ResultsError, match=message):
        RunResults.from_json(data, "results.json")


def test_a_results_file_must_be_an_object():
    with pytest.raises(ResultsError, match=r"summary\.json: expected a JSON object, got list"):
        SeedSummary.from_json([], "summary.json")


def test_a_results_file_is_read_by_path_and_one_that_is_not_json_is_refused_at_its_line(tmp_path):
    assert RunResults.read(OLD_RUN / "results.json") == RunResults.from_json(
        json.loads((OLD_RUN / "results.json").read_text())
    )
    cut = tmp_path / "results.json"
    cut.write_text('{\n "name": "tiny",\n "seed": ')  # a write cut short
    with pytest.raises(ResultsError, match=r"results\.json:3: not JSON"):
        RunResults.read(cut)


def test_a_document_with_undefined_metrics_is_strict_json():
    """The demo's results.json: a NaN EER becomes null, so ``allow_nan=False`` writes it."""
    from dpda.results import undefined_as_null

    document = {"runs": [{"eer": float("nan"), "seed": 1}], "mean": float("inf"), "name": "x"}
    assert json.loads(json.dumps(undefined_as_null(document), allow_nan=False)) == {
        "runs": [{"eer": None, "seed": 1}],
        "mean": None,
        "name": "x",
    }
