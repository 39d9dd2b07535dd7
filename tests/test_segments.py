"""Long audio: the streamed decode, the windows, and ``dpda score --window`` on real files."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_runs import environment

from dpda.data.audio import load_audio, stream_audio
from dpda.evaluate.calibration import Calibration
from dpda.evaluate.scoring import predict, scores_from_logits
from dpda.evaluate.segments import Windows, score_windows, windows_of
from dpda.models import build


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 2), (22050, 1), (8000, 2)])
def test_the_stream_is_the_whole_decode(tmp_path, rate, channels):
    rng = np.random.default_rng(rate)
    path = tmp_path / "a.flac"
    sf.write(str(path), rng.uniform(-0.5, 0.5, (int(rate * 3.7), channels)), rate)
    chunks = list(stream_audio(path, 16000, chunk_seconds=0.5))
    assert len(chunks) > 5
    np.testing.assert_array_equal(np.concatenate(chunks), load_audio(path, 16000))


def test_windows_cover_every_sample_once_cut():
    audio = np.arange(1000, dtype=np.float32)
    windows = Windows(window=200 / 16000, hop=75 / 16000)
    for length in (1000, 200, 140, 276, 0):
        stream = iter(np.array_split(audio[:length], 7))
        cut = list(windows_of(stream, windows))
        for start, window in cut:
            np.testing.assert_array_equal(window, audio[start : start + len(window)])
        heard = set().union(*(range(start, start + len(window)) for start, window in cut)) if cut else set()
        assert heard == set(range(length))
        assert all(len(window) == 200 for _, window in cut) or length < 200
    with pytest.raises(ValueError, match="skip audio"):
        Windows(window=1.0, hop=2.0)
    with pytest.raises(ValueError, match="positive"):
        Windows(window=0.0, hop=0.0)


def test_each_segment_is_its_slice_scored_and_the_aggregate_is_named(tmp_path):
    torch.manual_seed(0)
    model = build({"name": "lfcc_lcnn"}).eval()
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, 16000 * 5).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(str(path), audio, 16000, subtype="FLOAT")
    calibration = Calibration(scale=2.0, offset=0.5, threshold=0.1)
    windows = Windows(window=1.5, hop=1.0)
    scored = score_windows(
        model, path, windows, calibration, score_kind="logit_diff", device=torch.device("cpu"), batch_size=3
    )
    starts = [segment["start"] for segment in scored["segments"]]
    assert starts == [0.0, 1.0, 2.0, 3.0, 3.5] and scored["segments"][-1]["end"] == 5.0
    for segment in scored["segments"]:
        piece = torch.from_numpy(audio[round(segment["start"] * 16000) : round(segment["end"] * 16000)])[None]
        _, logits, _ = predict(model, [(piece, torch.zeros(1, dtype=torch.long), ["x"])], torch.device("cpu"))
        expected = float(scores_from_logits(logits, "logit_diff")[0])
        assert segment["score"] == pytest.approx(expected, abs=2e-6)
        assert segment["decision"] == ("spoof" if segment["score"] < 0.1 else "bonafide")
    scores = [segment["score"] for segment in scored["segments"]]
    assert scored["aggregate"] == "mean" and scored["score"] == pytest.approx(np.mean(scores), abs=1e-6)
    lowest = score_windows(
        model, path, windows, None, score_kind="logit_diff", device=torch.device("cpu"), aggregate="min"
    )
    assert lowest["score"] == pytest.approx(min(scores), abs=1e-6) and "p_spoof" not in lowest


def test_an_hour_needs_the_memory_of_a_window_batch_not_of_the_file(tmp_path):
    """Ten minutes (38 MB as float32) decoded and cut into 4 s windows: what Python allocates at
    most at once stays near one chunk and a window, far below the file."""
    path = tmp_path / "ten_minutes.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", samplerate=16000, channels=1, subtype="PCM_16") as file:
        for _ in range(20):
            file.write(rng.uniform(-0.3, 0.3, 16000 * 30))
    tracemalloc.start()
    count = sum(1 for _ in windows_of(stream_audio(path, 16000, chunk_seconds=10.0), Windows(4.0, 2.0)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 299
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


@pytest.fixture(scope="module")
def run(lfcc_run) -> Path:
    return lfcc_run[1]


def dpda(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dpda", *args], env=environment(), capture_output=True, text=True, check=False
    )


def test_score_window_prints_segments_and_reports_bad_files(run, tmp_path):
    long = tmp_path / "long.flac"
    sf.write(str(long), np.random.default_rng(1).normal(0, 0.1, 16000 * 3), 16000)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEnot audio")
    result = dpda("score", str(long), str(broken), "--model", str(run), "--window", "1", "--hop", "0.5")
    assert result.returncode == 1, result.stderr
    good, bad = (json.loads(line) for line in result.stdout.splitlines())
    assert [s["start"] for s in good["segments"]] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert good["aggregate"] == "mean" and {"score", "p_spoof", "decision"} <= good.keys()
    assert bad["path"] == str(broken) and "error" in bad
    for args, message in (
        (("--window", "1", "--hop", "2"), "would skip audio"),
        (("--hop", "1"), "--hop needs --window"),
        (("--window", "nan"), "positive finite number of seconds"),
    ):
        refused = dpda("score", str(long), "--model", str(run), *args)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
