"""``dpda eval`` and ``dpda score`` on a really trained tiny detector; score files and calibration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_runs import environment, experiment, write_config

from dpda.config import load_config
from dpda.data import Utterance, read_protocol
from dpda.evaluate import eer
from dpda.evaluate.calibration import fit_calibration
from dpda.evaluate.evaluation import load_detector, set_metrics
from dpda.evaluate.scoring import ScoreError, read_scores, score_protocol
from dpda.train import train


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    train(load_config(write_config(out / "c.yaml", experiment(corpus, out, epochs=2))))
    return out / "tiny"


def test_the_final_checkpoint_carries_a_dev_calibration(run):
    detector = load_detector(run, torch.device("cpu"), trust_code=True)
    assert detector.calibration is not None and detector.calibration.fitted_on == "dev"
    assert detector.calibration.scale > 0  # higher scores are more bona fide


def test_eval_scores_every_set_and_matches_the_metrics(run, corpus, tmp_path):
    out = tmp_path / "eval"
    extra = f"eval.sets=[{{kind: asvspoof2019, protocol: {corpus / 'dev.txt'}, root: {corpus}, name: dev_again}}]"
    result = subprocess.run(
        [sys.executable, "-m", "dpda", "eval", str(run), "--out", str(out), "--set", extra, "--trust-code"],
        env=environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    records = read_protocol("asvspoof2019", corpus / "dev.txt")
    scores = read_scores(out / "scores" / "dev_again.txt", [r.utt_id for r in records])
    bonafide = [scores[r.utt_id] for r in records if r.label == 1]
    spoof = [scores[r.utt_id] for r in records if r.label == 0]
    assert results["sets"]["dev_again"]["eer"] == pytest.approx(eer(bonafide, spoof)[0], abs=1e-12)
    assert "| dev_again | 8 | 4 | 4 |" in (out / "results.md").read_text()


def test_an_interrupted_scoring_resumes_and_keeps_what_was_scored(run, corpus, tmp_path):
    detector = load_detector(run, torch.device("cpu"), trust_code=True)
    records = read_protocol("asvspoof2019", corpus / "eval.txt")
    out = tmp_path / "eval.txt"
    full = score_protocol(
        detector.model,
        records,
        corpus,
        tmp_path / "reference.txt",
        device=torch.device("cpu"),
        length=None,
        batch_size=4,
        progress=False,
    )
    partial = out.with_name(out.name + ".partial")
    partial.write_text("".join(f"{r.utt_id} 123.0\n" for r in records[:3]))  # kept, not recomputed
    resumed = score_protocol(
        detector.model, records, corpus, out, device=torch.device("cpu"), length=None, batch_size=4, progress=False
    )
    assert not partial.exists() and out.exists()
    assert [resumed[r.utt_id] for r in records[:3]] == [123.0] * 3
    assert all(resumed[r.utt_id] == pytest.approx(full[r.utt_id], abs=1e-6) for r in records[3:])


def test_eval_removes_the_temporaries_of_a_killed_scoring_and_keeps_a_live_ones(run, tmp_path):
    """A temporary named after a process that has ended goes; one of a live process stays."""
    from dpda.atomic import temporary_sibling
    from dpda.cli import main

    scores = tmp_path / "eval" / "scores"
    scores.mkdir(parents=True)
    code = "import sys; from pathlib import Path; from dpda.atomic import temporary_sibling as t; "
    code += "p = t(Path(sys.argv[1])); p.write_text('half'); print(p)"
    ended = subprocess.run(
        [sys.executable, "-c", code, str(scores / "heldout.txt")], capture_output=True, text=True, check=True
    )
    orphan, live = Path(ended.stdout.strip()), temporary_sibling(scores / "other.txt")
    live.write_text("being written")
    assert orphan.exists() and main(["eval", str(run), "--out", str(tmp_path / "eval"), "--trust-code"]) == 0
    assert not orphan.exists() and live.exists()


def test_score_files_are_checked_against_the_protocol(tmp_path):
    path = tmp_path / "scores.txt"
    path.write_text("a 1.0\nb nan\nc 2.0\nc 3.0\nzz 1.0\n")
    with pytest.raises(ScoreError) as error:
        read_scores(path, ["a", "b", "c", "d"])
    message = str(error.value)
    assert "repeated ids: c" in message and "NaN/inf scores for: b" in message
    assert "not in the protocol: zz" in message and "without a score: d" in message
    path.write_text("a one\n")
    with pytest.raises(ScoreError, match=":1: expected"):
        read_scores(path)


def test_set_metrics_report_per_attack_eer():
    records = [
        Utterance("b1", "b1.flac", 1),
        Utterance("b2", "b2.flac", 1),
        Utterance("s1", "s1.flac", 0, "A01"),
        Utterance("s2", "s2.flac", 0, "A02"),
    ]
    metrics = set_metrics({"b1": 2.0, "b2": 1.0, "s1": 1.5, "s2": -1.0}, records)
    assert metrics.eer_per_attack["A02"] == 0.0
    assert metrics.eer_per_attack["A01"] == eer([2.0, 1.0], [1.5])[0]
    assert metrics.eer == pytest.approx(eer([2.0, 1.0], [1.5, -1.0])[0])


def test_calibration_recovers_the_likelihood_ratio_of_known_gaussians():
    rng = np.random.default_rng(0)
    calibration = fit_calibration(rng.normal(1, 1, 20000), rng.normal(-1, 1, 20000))
    assert calibration.scale == pytest.approx(2.0, abs=0.1)  # log N(s;1,1)/N(s;-1,1) = 2 s
    assert calibration.offset == pytest.approx(0.0, abs=0.05)
    assert abs(calibration.threshold) < 0.05
    assert calibration.spoof_probability(-3.0) > 0.99 and calibration.is_spoof(-3.0)


def test_score_command_reports_each_file_and_bad_ones(run, corpus, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    audio, _ = sf.read(str(corpus / "flac" / "EVAL_0000.flac"))
    sf.write(str(folder / "clip_44k.wav"), np.repeat(audio, 2)[:44100], 44100)  # another rate and format
    (folder / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpda",
            "score",
            str(folder),
            str(corpus / "flac" / "EVAL_0001.flac"),
            "--model",
            str(run),
            "--trust-code",  # the tiny runs' model is the tests' own class
        ],
        env=environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 1 and len(lines) == 3
    by_name = {Path(line["path"]).name: line for line in lines}
    assert "error" in by_name["broken.wav"]
    for name in ("clip_44k.wav", "EVAL_0001.flac"):
        line = by_name[name]
        assert 0.0 <= line["p_spoof"] <= 1.0 and line["decision"] in ("spoof", "bonafide")
        assert (line["decision"] == "spoof") == (line["score"] < line["threshold"])


def test_landscape_command_writes_the_figure_and_the_grid(run, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpda",
            "landscape",
            str(run),
            "--points",
            "5",
            "--utterances",
            "6",
            "--out",
            str(tmp_path),
            "--trust-code",
        ],
        env=environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "landscape.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grid = np.load(tmp_path / "landscape.npz")
    assert grid["loss_original"].shape == (5, 5) and grid["loss_augmented"].shape == (5, 5)
    assert set(json.loads(result.stdout.splitlines()[-1])["sharpness"]) >= {"original", "augmented"}
