"""``dpda serve``: the real service on a real socket (uvicorn in a thread), a really trained detector."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_runs import served

from dpda.deploy.service import Limits, create_app
from dpda.evaluate.evaluation import load_detector, score_files


@pytest.fixture(scope="module")
def run(lfcc_run) -> Path:
    return lfcc_run[1]


@pytest.fixture(scope="module")
def service(run) -> Iterator[tuple[str, object]]:
    detector = load_detector(run, torch.device("cpu"))
    limits = Limits(max_upload_mb=1.0, max_seconds=20.0, window=2.0, hop=1.0, max_batch=8, batch_wait_ms=50.0)
    app = create_app(detector, torch.device("cpu"), limits)
    with served(app) as base:
        yield base, app


def wav(path: Path, seconds: float, seed: int = 0, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), np.random.default_rng(seed).normal(0, 0.1, int(seconds * rate)), rate, subtype=subtype)
    return path


def post(base: str, path: Path | None = None, content: bytes | None = None) -> httpx.Response:
    data = path.read_bytes() if path is not None else content
    return httpx.post(f"{base}/v1/score", files={"file": ("clip.wav", data, "audio/wav")}, timeout=60)


def leftovers() -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob("dpda-serve-*"))


def test_health_model_and_docs(service):
    base, _ = service
    assert httpx.get(f"{base}/v1/health").json()["status"] == "ok"
    facts = httpx.get(f"{base}/v1/model").json()
    assert facts["model"] == {"name": "lfcc_lcnn"} and facts["calibration"]["fitted_on"] == "dev"
    assert facts["limits"]["max_upload_mb"] == 1.0
    assert httpx.get(f"{base}/docs").status_code == 200
    assert "/v1/score" in httpx.get(f"{base}/openapi.json").json()["paths"]


def test_a_short_file_scores_as_dpda_score_does(service, run, tmp_path):
    base, _ = service
    clip = wav(tmp_path / "a.wav", 1.5)
    answer = post(base, clip).json()
    (expected,) = score_files(load_detector(run, torch.device("cpu")), [clip], torch.device("cpu"))
    assert answer["score"] == pytest.approx(expected["score"], abs=1e-5)
    assert answer["decision"] == expected["decision"] and answer["p_spoof"] == pytest.approx(
        expected["p_spoof"], abs=1e-5
    )
    assert "segments" not in answer


def test_long_audio_gets_segments(service, tmp_path):
    base, _ = service
    answer = post(base, wav(tmp_path / "long.flac", 4.5, rate=22050)).json()
    assert [s["start"] for s in answer["segments"]] == [0.0, 1.0, 2.0, 2.5]
    assert answer["aggregate"] == "mean" and answer["seconds"] == 4.5
    assert answer["score"] == pytest.approx(np.mean([s["score"] for s in answer["segments"]]), abs=1e-5)


def test_concurrent_requests_are_batched_and_score_as_alone_on_the_service_s_one_model_thread(service, tmp_path):
    base, app = service
    clips = [wav(tmp_path / f"c{i}.wav", 1.0, seed=i) for i in range(6)]
    alone = [post(base, clip).json()["score"] for clip in clips]
    app.state.batcher.batches.clear()
    threads: set[str] = set()
    hook = app.state.batcher.detector.model.register_forward_hook(
        lambda *_: threads.add(threading.current_thread().name)
    )
    try:
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda clip: post(base, clip).json()["score"], clips))
        post(base, wav(tmp_path / "long.wav", 4.5))  # windowed on the same thread
    finally:
        hook.remove()
    assert together == pytest.approx(alone, abs=1e-5)
    assert max(app.state.batcher.batches) > 1, app.state.batcher.batches
    assert threads == {"dpda-forward_0"}  # max_concurrent 1: one thread holds the model's working memory


def samples_file(folder: Path, samples: np.ndarray, subtype: str) -> bytes:
    sf.write(str(folder / "x.wav"), samples, 16000, subtype=subtype)
    return (folder / "x.wav").read_bytes()


BAD_UPLOADS = {
    "empty_upload": (lambda d: b"", 400),
    "not_audio": (lambda d: b"RIFF\x00\x00\x00\x00WAVEjunk" * 10, 415),
    "empty_audio": (lambda d: wav(d / "s.wav", 1.0).read_bytes()[:44], 400),  # a header, no frames
    "silent_audio": (lambda d: samples_file(d, np.zeros(16000), "PCM_16"), 400),
    "non_finite_audio": (lambda d: samples_file(d, np.full(16000, np.nan, dtype=np.float32), "FLOAT"), 400),
    "audio_too_long": (lambda d: wav(d / "long.flac", 25.0).read_bytes(), 413),
    "upload_too_large": (lambda d: wav(d / "big.wav", 40.0, subtype="FLOAT").read_bytes(), 413),
}


@pytest.mark.parametrize("code", BAD_UPLOADS)
def test_bad_audio_is_a_named_4xx_and_leaves_nothing(service, tmp_path, code):
    base, _ = service
    make, status = BAD_UPLOADS[code]
    before = leftovers()
    response = post(base, content=make(tmp_path))
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]
    assert str(tempfile.gettempdir()) not in response.json()["error"]["message"]
    assert leftovers() == before
    assert post(base, wav(tmp_path / "ok.wav", 1.0)).status_code == 200


def test_malformed_requests_and_a_vanished_client_leave_it_answering(service, tmp_path):
    base, _ = service
    plain = httpx.post(f"{base}/v1/score", content=b"abc", headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and plain.json()["error"]["code"] == "unsupported_media_type"
    no_file = httpx.post(f"{base}/v1/score", files={"other": ("a.wav", b"x")})
    assert no_file.status_code == 400 and no_file.json()["error"]["code"] == "malformed_request"
    host, port = base.removeprefix("http://").split(":")
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="../../etc/x.wav"\r\n\r\n' + b"\0" * 5000
    with socket.create_connection((host, int(port))) as client:  # promises 1 MB, sends 5 kB, hangs up
        client.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000\r\n\r\n" + body
        )
    time.sleep(0.5)
    assert post(base, wav(tmp_path / "ok.wav", 1.0)).status_code == 200
    assert not list(Path(tempfile.gettempdir()).glob("dpda-serve-*")), "a temporary folder was left behind"
    assert not Path("/etc/x.wav").exists()


def test_limits_are_checked():
    with pytest.raises(ValueError, match="hop"):
        Limits(window=1.0, hop=2.0)
    with pytest.raises(ValueError, match="max_batch"):
        Limits(max_batch=0)
    with pytest.raises(ValueError, match="max_upload_mb"):
        Limits(max_upload_mb=float("nan"))
