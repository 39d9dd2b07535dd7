"""``dpda demo`` end to end on a tiny built-in corpus: every artifact it promises."""

from __future__ import annotations

import json
import math
import re

import pytest

from dpda.corpus import MissingPackagesError, ensure_packages
from dpda.demo import Budget, run_demo

TINY = Budget(corpus_size="tiny", epochs=1, patience=1, crop_length=8000, batch_size=4, lr=1e-3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, reference_dir):
    try:
        ensure_packages(install=True)
    except MissingPackagesError as error:
        pytest.skip(f"corpus packages unavailable and not installable here: {error}")
    out = tmp_path_factory.mktemp("demo")
    results = run_demo(
        out,
        aligners=("mean", "pcgrad"),
        budget=TINY,
        progress=False,
        reference_model=reference_dir / "aasist" / "AASIST.pth",
    )
    return out, results


def test_results_cover_every_run_with_valid_numbers(demo):
    out, results = demo
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert [(run["aligner"], run["seed"]) for run in results["runs"]] == [("mean", 1), ("pcgrad", 1)]
    for run in results["runs"]:
        assert 0.0 <= run["eer"] <= 1.0 and 0.0 <= run["dev_eer"] <= 1.0
        assert math.isnan(run["conflict_rate"]) or 0.0 <= run["conflict_rate"] <= 1.0
        assert run["best_epoch"] == 1 and run["wall_seconds"] > 0
    assert 0.0 <= results["reference_model"]["eer"] <= 1.0
    assert results["corpus"]["splits"]["eval"]["utterances"] > 0


def test_the_report_links_only_images_that_exist(demo):
    out, _ = demo
    report = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert images, "the report shows no figure"
    for image in images:
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
    assert "What this shows and what it does not" in report and "Published AASIST" in report


def test_a_second_run_reuses_the_corpus_and_the_finished_runs(demo):
    out, results = demo
    again = run_demo(out, aligners=("mean", "pcgrad"), budget=TINY, progress=False)
    assert [run["eer"] for run in again["runs"]] == [run["eer"] for run in results["runs"]]
