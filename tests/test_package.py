"""``dpda package``: a really trained detector as a model package, and every loader taking it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import environment

from dpda.checkpoint import load_weights
from dpda.deploy.package import PackageError, is_package, read_facts, write_package
from dpda.evaluate.evaluation import Detector, load_detector
from dpda.results import ResultsError, RunResults


@pytest.fixture(scope="module")
def run(lfcc_run) -> Path:
    return lfcc_run[1]


@pytest.fixture(scope="module")
def corpus(lfcc_run) -> Path:
    return lfcc_run[0]


@pytest.fixture(scope="module")
def package(run, tmp_path_factory) -> Path:
    return write_package(run, tmp_path_factory.mktemp("packages") / "tiny-lfcc")


def dpda(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dpda", *args], env=environment(), capture_output=True, text=True, check=False
    )


def test_the_package_holds_weights_facts_and_a_card(run, package, corpus):
    assert sorted(p.name for p in package.iterdir()) == ["README.md", "config.json", "model.json", "model.safetensors"]
    assert is_package(package) and not is_package(run)
    facts = read_facts(package)
    _, meta = load_weights(run / "final.safetensors")
    results = RunResults.read(run / "results.json")
    assert facts["calibration"] == meta["calibration"]
    assert facts["decision_threshold"] == meta["calibration"]["threshold"]
    assert facts["model"] == {"name": "lfcc_lcnn"} and facts["sample_rate"] == 16000
    assert facts["training"]["aligner"] == "gradvac" and facts["training"]["train_protocol"] == "train.txt"
    assert facts["eval"]["heldout"]["eer"] == results.eval["heldout"].eer
    card = (package / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: dpda\n")
    assert f"| heldout | 10 | {results.eval['heldout'].eer:.2%} |" in card
    assert "Intended use and limits" in card and "decision threshold" in card
    # the trainer's folders stay on its machine
    for text in (card, (package / "config.json").read_text()):
        assert str(corpus) not in text and str(run) not in text


def test_score_eval_and_from_pretrained_take_the_package(run, package, corpus, tmp_path):
    audio = corpus / "flac" / "EVAL_0000.flac"
    scored = [dpda("score", str(audio), "--model", str(source)) for source in (run, package)]
    assert all(result.returncode == 0 for result in scored), [result.stderr for result in scored]
    from_run, from_package = (json.loads(result.stdout) for result in scored)
    assert from_package["score"] == from_run["score"] and from_package["decision"] == from_run["decision"]
    detector = Detector.from_pretrained(package)
    reference = load_detector(run, torch.device("cpu"))
    assert detector.calibration == reference.calibration
    for mine, theirs in zip(detector.model.state_dict().values(), reference.model.state_dict().values()):
        assert torch.equal(mine, theirs)
    sets = f"eval.sets=[{{kind: asvspoof2019, protocol: {corpus / 'eval.txt'}, root: {corpus}, name: again}}]"
    evaluated = dpda("eval", str(package), "--set", sets, "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "eval" / "results.json").read_text())["sets"]["again"]
    assert again["eer"] == pytest.approx(read_facts(package)["eval"]["heldout"]["eer"], abs=1e-12)


def test_eval_results_given_go_into_the_card(run, package, tmp_path):
    results = tmp_path / "results.json"
    facts = read_facts(package)
    heldout = {key: value for key, value in facts["eval"]["heldout"].items() if key != "protocol"}
    document = {"checkpoint": "x", "score": "logit_diff", "max_seconds": None, "sets": {"itw": heldout}}
    results.write_text(json.dumps(document))
    out = write_package(run, tmp_path / "more", [results])
    assert set(read_facts(out)["eval"]) == {"heldout", "itw"}
    assert "| itw | 10 |" in (out / "README.md").read_text()


def test_bad_inputs_are_refused_before_anything_is_written(run, package, tmp_path):
    with pytest.raises(PackageError, match="exists"):
        write_package(run, package)
    broken = tmp_path / "results.json"
    broken.write_text('{"checkpoint": "x"')
    out = tmp_path / "never"
    with pytest.raises(ResultsError, match=r"results\.json:1: not JSON"):
        write_package(run, out, [broken])
    assert not out.exists() and not list(tmp_path.glob(".never*"))
    result = dpda("package", str(tmp_path / "missing.safetensors"), str(out))
    assert result.returncode != 0 and "missing.safetensors" in result.stderr and not out.exists()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "config.json").write_text('{"format": "something else"}')
    (stranger / "model.safetensors").write_bytes(b"")
    assert not is_package(stranger)
    with pytest.raises(PackageError, match="expected a 'dpda-package' config"):
        read_facts(stranger)
