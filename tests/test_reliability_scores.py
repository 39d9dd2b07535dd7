"""Score files and ``dpda score`` under hostile input and faults (issue 14), 22 cases: a
``.partial`` score file with an invalid line (half line, two joined lines, garbage bytes, NaN,
inf, an unknown id, a repeated id) is repaired and only the bad utterances rescored (7); a write
cut short by a full file system leaves whole lines (1); a SIGKILLed scoring resumes (1); a NaN
score (1) or an utterance too short for the model (1) is a ``ScoreError`` naming it; ``dpda
score`` reports a NaN score of diverged weights (1) and a too-short file (1) as that file's error
in valid JSON and scores the others; a head read decodes exactly the full decode's head (4) and
only that part of a long file (1); a stereo mix-down whose channels cancel is warned about, and
no other one (4)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from models import TinyDetector
from tiny_runs import RATE, environment, write_split

from dpda.checkpoint import save_weights
from dpda.cli import main
from dpda.config import config_to_dict, load_config
from dpda.data import Utterance, read_protocol
from dpda.data.audio import load_audio
from dpda.evaluate.scoring import ScoreError, read_scores, score_protocol
from dpda.models import architecture, build

CPU = torch.device("cpu")


def score(model: torch.nn.Module, records: list[Utterance], root: Path, out: Path) -> dict[str, float]:
    return score_protocol(model, records, root, out, device=CPU, length=None, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def records(corpus) -> list[Utterance]:
    return read_protocol("asvspoof2019", corpus / "eval.txt")


@pytest.fixture(scope="module")
def reference(corpus, records, tmp_path_factory) -> dict[str, float]:
    return score(TinyDetector(), records, corpus, tmp_path_factory.mktemp("reference") / "scores.txt")


def nan_weights(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(math.nan)
    return model


# -- a partial score file with an invalid line ---------------------------------------------------
def _bad_lines(ids: list[str]) -> dict[str, tuple[bytes, str]]:
    """Kind -> (bytes after three valid lines, the line the warning must name)."""
    a, b = ids[3], ids[4]
    return {
        "half_line": (f"{a} 0.24".encode(), "line 4"),
        "joined_lines": (f"{a} 0.246{b} 0.220\n".encode(), "line 4"),
        "garbage_bytes": (b"\x00\x00\xff\xfe\x81 junk\n", "line 4"),
        "nan_score": (f"{a} nan\n".encode(), "line 4"),
        "inf_score": (f"{a} -inf\n".encode(), "line 4"),
        "unknown_id": (b"NOT_IN_PROTOCOL 0.5\n", "line 4"),
        "repeated_id": (f"{a} 0.1\n{a} 0.2\n".encode(), "line 5"),
    }


@pytest.mark.parametrize("kind", list(_bad_lines(["x"] * 5)))
def test_a_rerun_drops_invalid_partial_lines_and_rescores_their_utterances(kind, corpus, records, reference, tmp_path):
    ids = [r.utt_id for r in records]
    bad, named = _bad_lines(ids)[kind]
    out = tmp_path / "scores.txt"
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes("".join(f"{utt} 123.0\n" for utt in ids[:3]).encode() + bad)  # 123.0: kept, not recomputed
    with pytest.warns(UserWarning, match="invalid line") as caught:
        scores = score(TinyDetector(), records, corpus, out)
    message = str(caught[0].message)
    assert str(partial) in message and named in message
    assert not partial.exists() and read_scores(out, ids) == scores  # complete, finite, protocol ids only
    assert [scores[utt] for utt in ids[:3]] == [123.0] * 3
    for utt in ids[3:]:  # the utterance of the bad line (and any it hid) scored again
        assert scores[utt] == pytest.approx(reference[utt], abs=1e-6), utt


SCORING_SCRIPT = """
import resource, signal, sys, time
from pathlib import Path
import torch
from models import TinyDetector
from dpda.data import read_protocol
from dpda.evaluate.scoring import score_protocol

corpus, out, file_limit, delay = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

class Slow(TinyDetector):
    def forward(self, x):
        time.sleep(delay)
        return super().forward(x)

records = read_protocol("asvspoof2019", corpus / "eval.txt")
model = Slow()
if file_limit:  # files may not grow beyond file_limit bytes: the write fails as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
score_protocol(model, records, corpus, out, device=torch.device("cpu"), length=None, batch_size=1, progress=False)
"""


def scoring_process(corpus: Path, out: Path, tmp_path: Path, file_limit: int, delay: float) -> subprocess.Popen:
    script = tmp_path / "score.py"
    script.write_text(SCORING_SCRIPT)
    command = [sys.executable, str(script), str(corpus), str(out), str(file_limit), str(delay)]
    env = {**environment(), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def whole_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), data[-40:]
    return data.decode().splitlines()


def rescore_without_warnings(records, corpus: Path, out: Path) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the partial file needs no repair
        return score(TinyDetector(), records, corpus, out)


def test_a_write_cut_short_by_a_full_file_system_leaves_whole_lines(corpus, records, reference, tmp_path):
    out = tmp_path / "scores.txt"
    process = scoring_process(corpus, out, tmp_path, file_limit=50, delay=0.0)  # room for 2.5 lines
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0 and "File too large" in stderr, stderr[-2000:]
    lines = whole_lines(out.with_name(out.name + ".partial"))
    assert [line.split()[0] for line in lines] == [r.utt_id for r in records[:2]]
    assert all(len(line.split()) == 2 and math.isfinite(float(line.split()[1])) for line in lines)
    scores = rescore_without_warnings(records, corpus, out)
    assert scores == pytest.approx(reference, abs=1e-6)


def test_a_killed_scoring_leaves_whole_lines_and_resumes(corpus, records, reference, tmp_path):
    out = tmp_path / "scores.txt"
    partial = out.with_name(out.name + ".partial")
    process = scoring_process(corpus, out, tmp_path, file_limit=0, delay=0.3)
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.read_bytes().count(b"\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert 2 <= len(whole_lines(partial)) < len(records)
    assert rescore_without_warnings(records, corpus, out) == pytest.approx(reference, abs=1e-6)


# -- utterances the model cannot score -----------------------------------------------------------
def test_a_nan_score_is_refused_and_never_written(corpus, records, tmp_path):
    out = tmp_path / "scores.txt"
    with pytest.raises(ScoreError, match=rf"{records[0].utt_id} \(.*{records[0].utt_id}\.flac\).* NaN or infinite"):
        score(nan_weights(TinyDetector()), records, corpus, out)
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and b"nan" not in partial.read_bytes().lower()


def test_an_utterance_too_short_for_the_model_is_a_score_error_naming_it(tmp_path):
    write_split(tmp_path, "eval", 3, seed=5)
    sf.write(str(tmp_path / "flac" / "SHORT.flac"), np.full(1, 0.1, dtype=np.float32), RATE)
    records = [*read_protocol("asvspoof2019", tmp_path / "eval.txt"), Utterance("SHORT", "flac/SHORT.flac", 0)]
    with pytest.raises(ScoreError, match=r"cannot score SHORT \(.*SHORT\.flac, 1 samples\)"):
        score(TinyDetector(), records, tmp_path, tmp_path / "scores.txt")
    assert len(whole_lines(tmp_path / "scores.txt.partial")) == 3  # the others were kept for a re-run


# -- dpda score ------------------------------------------------------------------------------------
def lcnn_checkpoint(path: Path, diverged: bool = False) -> Path:
    """A built-in LFCC-LCNN (untrained; its frame analysis needs 2,400 samples) with a calibration;
    ``diverged``: every weight 1e30, finite (so the file is written) but NaN after a few layers."""
    config = load_config(None, ["model.name=lfcc_lcnn"])
    model = build(architecture(config.model))
    if diverged:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(1e30)
    calibration = {"scale": 1.0, "offset": 0.0, "threshold": 0.0, "fitted_on": "dev"}
    save_weights(path, model.state_dict(), {"config": config_to_dict(config), "calibration": calibration})
    return path


def refuse_nan(constant: str) -> float:
    raise AssertionError(f"{constant} is not JSON")


def dpda_score(capsys, *argv: str) -> tuple[int, dict[str, dict]]:
    status = main(["score", *argv, "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    return status, {Path(r["path"]).name: r for r in (json.loads(line, parse_constant=refuse_nan) for line in lines)}


def test_dpda_score_reports_a_nan_score_as_each_files_error(capsys, corpus, tmp_path):
    model = lcnn_checkpoint(tmp_path / "diverged.safetensors", diverged=True)
    status, records = dpda_score(capsys, str(corpus / "flac" / "EVAL_0000.flac"), "--model", str(model))
    assert status == 1 and set(records) == {"EVAL_0000.flac"}
    assert "NaN or infinite" in records["EVAL_0000.flac"]["error"] and "score" not in records["EVAL_0000.flac"]


def test_dpda_score_reports_a_file_too_short_for_the_model_and_scores_the_others(capsys, corpus, tmp_path):
    sf.write(str(tmp_path / "a_one_sample.wav"), np.full(1, 0.1, dtype=np.float32), RATE)
    model = lcnn_checkpoint(tmp_path / "lcnn.safetensors")
    paths = [str(tmp_path / "a_one_sample.wav"), str(corpus / "flac" / "EVAL_0001.flac")]
    status, records = dpda_score(capsys, *paths, "--model", str(model))
    assert status == 1 and set(records) == {"a_one_sample.wav", "EVAL_0001.flac"}
    assert "cannot score a file of 1 samples" in records["a_one_sample.wav"]["error"]
    assert "2400" in records["a_one_sample.wav"]["error"]
    scored = records["EVAL_0001.flac"]
    assert math.isfinite(scored["score"]) and scored["decision"] in ("spoof", "bonafide")


# -- reading only the head of a file -------------------------------------------------------------
@pytest.mark.parametrize("rate, channels", [(16000, 1), (8000, 1), (22050, 2), (44100, 2)])
def test_a_head_read_is_the_head_of_the_full_decode(tmp_path, rate, channels):
    rng = np.random.default_rng(rate)
    path = tmp_path / "x.wav"
    sf.write(str(path), rng.normal(0, 0.1, (3 * rate + 17, channels)).astype(np.float32), rate, subtype="FLOAT")
    full = load_audio(path)
    for samples in (1, 100, 16000, 40000, 10**6):
        head = load_audio(path, max_samples=samples)
        assert np.array_equal(head, full[:samples]), samples


HEAD_MEMORY_SCRIPT = """
import resource, sys
from pathlib import Path
from dpda.data import AudioDataset, Utterance, load_audio

def grown(read):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    audio = read()
    assert len(audio) == 64000, len(audio)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024

path = Path(sys.argv[1])
dataset = AudioDataset([Utterance("long", path.name, 1)], path.parent, length=64000, crop="head")
print(grown(lambda: load_audio(path, 16000, 64000)), grown(lambda: dataset[0][0]))
"""


def test_a_head_read_decodes_only_the_head_of_a_long_file(tmp_path):
    path = tmp_path / "long.wav"  # two minutes of 48 kHz stereo: 46 MB of float samples
    sf.write(str(path), np.random.default_rng(0).normal(0, 0.1, (120 * 48000, 2)).astype(np.float32), 48000)
    result = subprocess.run(
        [sys.executable, "-c", HEAD_MEMORY_SCRIPT, str(path)], env=environment(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    megabytes = [int(value) for value in result.stdout.split()]
    assert max(megabytes) < 16, megabytes  # a whole decode holds the 46 MB and its mono mix


# -- the mono mix-down ---------------------------------------------------------------------------
@pytest.mark.parametrize("channels", ["opposite", "identical", "independent", "silent"])
def test_a_stereo_mix_down_whose_channels_cancel_is_warned_about(tmp_path, channels):
    rng = np.random.default_rng(0)
    left, other = rng.normal(0, 0.1, (2, RATE)).astype(np.float32)
    right = {"opposite": -left, "identical": left, "independent": other, "silent": 0 * left}[channels]
    if channels == "silent":
        left = right
    path = tmp_path / f"{channels}.wav"
    sf.write(str(path), np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        audio = load_audio(path)
    assert np.array_equal(audio, np.stack([left, right], axis=1).mean(axis=1))  # the mix-down is unchanged
    messages = [str(w.message) for w in caught]
    if channels == "opposite":
        assert len(messages) == 1 and str(path) in messages[0] and "cancel" in messages[0]
    else:
        assert messages == []
