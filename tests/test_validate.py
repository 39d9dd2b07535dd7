"""Validation reports every broken file at once, with its reason, before any work starts."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from dpda.data import AudioValidationError, Utterance
from dpda.data.validate import validate


def make_corpus(root):
    good = 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    sf.write(root / "good.flac", good, 16000)
    sf.write(root / "good2.wav", good, 16000)
    sf.write(root / "silent.wav", np.zeros(8000, dtype=np.float32), 16000)
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "no_samples.wav", np.zeros(0, dtype=np.float32), 16000)
    nan = good.copy()
    nan[100] = np.nan
    sf.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    (root / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    (root / "notes.txt").write_text("not audio at all\n" * 50)


def record(name: str, label: int = 1) -> Utterance:
    return Utterance(utt_id=name.split(".")[0], path=name, label=label)


def test_all_problems_are_reported_together(tmp_path):
    make_corpus(tmp_path)
    names = ["good.flac", "missing.flac", "empty.wav", "no_samples.wav", "nan.wav", "corrupt.flac", "notes.txt"]
    with pytest.raises(AudioValidationError) as error:
        validate([record(n) for n in names], tmp_path, progress=False)
    problems = dict(error.value.problems)
    assert len(problems) == 6 and str(tmp_path / "good.flac") not in problems
    assert "not found" in problems[str(tmp_path / "missing.flac")]
    assert "empty" in problems[str(tmp_path / "empty.wav")]
    assert "no samples" in problems[str(tmp_path / "no_samples.wav")]
    assert "NaN" in problems[str(tmp_path / "nan.wav")]
    assert "unreadable" in problems[str(tmp_path / "corrupt.flac")]
    assert "unreadable" in problems[str(tmp_path / "notes.txt")]
    message = str(error.value)
    assert "6 audio file(s)" in message and "missing.flac" in message and "nan.wav" in message


def test_valid_corpus_reports_durations_and_warns_on_silence(tmp_path):
    make_corpus(tmp_path)
    with pytest.warns(UserWarning, match="silent"):
        report = validate(
            [record("good.flac"), record("good2.wav"), record("silent.wav", 0)], tmp_path, progress=False, workers=2
        )
    assert report.durations == {"good": 0.5, "good2": 0.5, "silent": 0.5}
    assert report.total_seconds == 1.5
    assert report.silent == [str(tmp_path / "silent.wav")]


def test_header_only_mode_reads_the_samples_of_float_files_only(tmp_path):
    make_corpus(tmp_path)
    report = validate([record("silent.wav")], tmp_path, decode=False, progress=False)  # PCM 16: not decoded
    assert report.durations == {"silent": 0.5} and report.silent == []
    with pytest.raises(AudioValidationError, match="1 NaN or infinite sample"):  # FLOAT: samples read
        validate([record("nan.wav")], tmp_path, decode=False, progress=False)


def test_missing_root_and_missing_path(tmp_path):
    with pytest.raises(AudioValidationError, match="not a folder"):
        validate([record("good.flac")], tmp_path / "nowhere", progress=False)
    with pytest.raises(AudioValidationError, match="names no audio file"):
        validate([Utterance("LA_E_1", None, 1)], tmp_path, progress=False)
