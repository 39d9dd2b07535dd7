"""``dpda serve``: a trained detector behind HTTP (FastAPI on uvicorn), with a web page at ``/``.

``POST /v1/score`` takes one audio file (multipart field ``file``) and answers the raw score, the
calibrated probability that it is spoofed and the decision; a file longer than ``Limits.window``
is scored window by window (``dpda.evaluate.segments``) and the answer carries the segments.
``GET /v1/health`` and ``GET /v1/model`` (the package's facts) answer at once; ``/docs`` is the
OpenAPI page.

Every upload goes to a temporary folder of its own (the client's file name is never used), which
is removed when the request ends, however it ends. Limits are checked as the bytes arrive (upload
size) and from the header before decoding (duration); bad audio (empty, not audio, silent,
NaN/inf samples) is a 4xx JSON error ``{"error": {"code", "message"}}`` naming the problem.

Concurrent requests of short audio are batched: each waits up to ``Limits.batch_wait_ms`` for
others, and up to ``Limits.max_batch`` inputs of one length go through the model in one forward
pass. At most ``Limits.max_concurrent`` forward passes run at once, on as many threads of the
service's own (so the event loop keeps answering, and the model's working memory stays in the
allocator arenas of those few threads instead of spreading over every worker thread).
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
import torch
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import ClientDisconnect

from dpda import __version__
from dpda.data.audio import fit_length, load_audio
from dpda.deploy.package import core_facts, is_package, read_facts
from dpda.evaluate.evaluation import Detector
from dpda.evaluate.scoring import predict, scores_from_logits
from dpda.evaluate.segments import Windows, score_windows

#: Samples whose peak is below this are silence: nothing for a detector to judge.
SILENCE = 1e-4
UPLOAD_CHUNK = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the service."""

    max_upload_mb: float = 50.0  # bytes of the uploaded file
    max_seconds: float = 600.0  # duration of the audio
    max_concurrent: int = 1  # forward passes at once (one device: more only queue there)
    max_batch: int = 8  # short inputs of one length scored in one forward pass
    batch_wait_ms: float = 5.0  # how long a short input waits for others to batch with
    window: float = 8.0  # longer audio is scored window by window, this many seconds each
    hop: float = 4.0  # seconds between windows

    def __post_init__(self) -> None:
        for key in ("max_upload_mb", "max_seconds", "window", "hop"):
            if not getattr(self, key) > 0 or not math.isfinite(getattr(self, key)):
                raise ValueError(f"{key} must be a positive number, got {getattr(self, key)}")
        for key in ("max_concurrent", "max_batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if not self.batch_wait_ms >= 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        Windows(self.window, self.hop)  # hop <= window


class RequestError(Exception):
    """A request the service refuses: the HTTP status, a stable code and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def model_facts(detector: Detector) -> dict[str, Any]:
    """What ``GET /v1/model`` says: a package's ``config.json``, or the same core facts of a
    checkpoint."""
    if is_package(detector.path.parent):
        return read_facts(detector.path.parent)
    return core_facts(detector.config, detector.config.model, detector.calibration)


class Batcher:
    """Short inputs from concurrent requests gathered into forward passes of up to ``max_batch``."""

    def __init__(self, detector: Detector, device: torch.device, limits: Limits) -> None:
        self.detector, self.device, self.limits = detector, device, limits
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[float]]] = asyncio.Queue()
        self.passes = asyncio.Semaphore(limits.max_concurrent)
        self.threads = ThreadPoolExecutor(limits.max_concurrent, thread_name_prefix="dpda-forward")
        self.task: asyncio.Task[None] | None = None
        self.running: set[asyncio.Task[None]] = set()
        self.batches: list[int] = []  # sizes of the forward passes run (the service's own statistics)
        self.coming = 0  # requests uploaded and being decoded: a batch waits for them, never for nobody

    async def score(self, audio: np.ndarray) -> float:
        if self.task is None:
            self.task = asyncio.create_task(self._run())
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        await self.queue.put((audio, future))
        return await future

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            deadline = asyncio.get_running_loop().time() + self.limits.batch_wait_ms / 1000
            while len(items) < self.limits.max_batch and (self.coming or not self.queue.empty()):
                left = deadline - asyncio.get_running_loop().time()
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout=max(left, 0)))
                except asyncio.TimeoutError:
                    break
            by_length: dict[int, list[tuple[np.ndarray, asyncio.Future[float]]]] = {}
            for item in items:
                by_length.setdefault(len(item[0]), []).append(item)
            for group in by_length.values():
                await self.passes.acquire()
                task = asyncio.create_task(self._forward(group))
                self.running.add(task)  # the loop keeps only weak references to tasks
                task.add_done_callback(self.running.discard)

    async def _forward(self, group: list[tuple[np.ndarray, asyncio.Future[float]]]) -> None:
        try:
            scores = await self.on_model_thread(self._scores, np.stack([audio for audio, _ in group]))
            self.batches.append(len(group))
            for (_, future), score in zip(group, scores):
                if not future.done():
                    future.set_result(score)
        except Exception as error:  # the model failed on this batch: every request in it hears why
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
        finally:
            self.passes.release()

    async def on_model_thread(self, work: Callable[..., T], *args: Any, **options: Any) -> T:
        """``work(*args, **options)`` on one of the forward-pass threads."""
        return await asyncio.get_running_loop().run_in_executor(self.threads, partial(work, *args, **options))

    def _scores(self, audio: np.ndarray) -> list[float]:
        batch = [(torch.from_numpy(audio), torch.zeros(len(audio), dtype=torch.long), [""] * len(audio))]
        with torch.inference_mode():
            _, logits, _ = predict(self.detector.model, batch, self.device)
        return [float(s) for s in scores_from_logits(logits, self.detector.config.eval.score)]


def create_app(detector: Detector, device: torch.device, limits: Limits | None = None) -> FastAPI:
    """The service of ``detector`` (in eval mode on ``device``)."""
    limits = limits or Limits()
    facts = model_facts(detector)
    config = detector.config
    rate = config.data.sample_rate
    head = round(config.eval.max_seconds * rate) if config.eval.max_seconds else None
    batcher = Batcher(detector, device, limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.threads.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="dpda speech deepfake detector",
        version=__version__,
        description=f"Scores audio with {facts['name']} ({facts['model'].get('name')}).",
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def refused(_: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "")
        if request.method == "POST" and not kind.startswith("multipart/form-data"):
            found = kind or "no content type"
            return _error(415, "unsupported_media_type", f"expected multipart/form-data, got {found!r}")
        fields = ", ".join(".".join(map(str, e.get("loc", ()))) for e in error.errors())
        return _error(400, "malformed_request", f"expected a multipart/form-data body with a 'file' part ({fields})")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("dpda.deploy").joinpath("web/index.html").read_text(encoding="utf-8"))

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": facts["name"], "dpda_version": __version__}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return {**facts, "limits": asdict(limits)}

    @app.post("/v1/score")
    async def score(request: Request, file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
        with tempfile.TemporaryDirectory(prefix="dpda-serve-") as folder:
            path = Path(folder) / "upload"
            await _receive(file, path, limits)
            seconds = _check_audio(path, limits)
            if seconds > limits.window:
                _check_samples(path)
                return await _score_long(path, seconds)
            batcher.coming += 1
            try:
                audio = _decoded(path, rate, head)
            finally:
                batcher.coming -= 1
            return _answer(await batcher.score(audio), seconds)

    async def _score_long(path: Path, seconds: float) -> dict[str, Any]:
        async with _limited(batcher.passes):
            scored = await batcher.on_model_thread(
                score_windows,
                detector.model,
                path,
                Windows(limits.window, limits.hop, rate),
                detector.calibration,
                score_kind=config.eval.score,
                device=device,
                batch_size=limits.max_batch,
            )
        if not all(math.isfinite(segment["score"]) for segment in scored["segments"]):
            raise RequestError(422, "non_finite_score", "the model's score came out NaN or infinite for this audio")
        return {**_answer(scored["score"], seconds), "aggregate": scored["aggregate"], "segments": scored["segments"]}

    def _answer(value: float, seconds: float) -> dict[str, Any]:
        if not math.isfinite(value):
            raise RequestError(422, "non_finite_score", "the model's score came out NaN or infinite for this audio")
        answer: dict[str, Any] = {"seconds": round(seconds, 3), "score": round(value, 6)}
        calibration = detector.calibration
        if calibration is not None:
            answer.update(calibration.verdict(value), threshold=round(calibration.threshold, 6))
        return answer

    return app


class _limited:
    """``async with`` over a semaphore that the batcher shares."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore = semaphore

    async def __aenter__(self) -> None:
        await self.semaphore.acquire()

    async def __aexit__(self, *_: object) -> None:
        self.semaphore.release()


async def _receive(file: UploadFile, path: Path, limits: Limits) -> None:
    """Copy the upload to ``path``, refusing it once it passes the size limit."""
    limit = int(limits.max_upload_mb * 2**20)
    size = 0
    try:
        with path.open("wb") as out:
            while chunk := await file.read(UPLOAD_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise RequestError(
                        413, "upload_too_large", f"the upload is over the limit of {limits.max_upload_mb:g} MB"
                    )
                out.write(chunk)
    except ClientDisconnect:
        raise RequestError(400, "client_disconnected", "the client went away during the upload") from None
    if size == 0:
        raise RequestError(400, "empty_upload", "the uploaded file is empty (0 bytes)")


def _check_audio(path: Path, limits: Limits) -> float:
    """The audio's duration from its header, refusing what is not audio, empty or too long."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise RequestError(
            415, "not_audio", f"the file is not audio that soundfile reads (WAV, FLAC, OGG, MP3, ...): {_reason(error)}"
        ) from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise RequestError(400, "empty_audio", "the audio has no samples")
    seconds = info.frames / info.samplerate
    if seconds > limits.max_seconds:
        raise RequestError(
            413, "audio_too_long", f"the audio lasts {seconds:.1f} s, over the limit of {limits.max_seconds:g} s"
        )
    return seconds


def _check_samples(path: Path) -> None:
    """Refuse a long file with NaN/inf samples (float files) or silence, reading it block by block."""
    peak = 0.0
    try:
        for block in sf.blocks(str(path), blocksize=1 << 16, dtype="float32", always_2d=True):
            peak = max(peak, _peak(block))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise RequestError(400, "corrupt_audio", f"the audio cannot be decoded: {_reason(error)}") from None
    _refuse_silence(peak)


def _peak(samples: np.ndarray) -> float:
    if not np.isfinite(samples).all():
        raise RequestError(400, "non_finite_audio", "the audio holds NaN or infinite samples")
    return float(np.abs(samples).max(initial=0.0))


def _refuse_silence(peak: float) -> None:
    if peak < SILENCE:
        raise RequestError(400, "silent_audio", f"the audio is silent (peak {peak:.1e}): nothing to judge")


def _reason(error: Exception) -> str:
    """libsndfile's reason, without the server's temporary path it names."""
    return str(getattr(error, "error_string", None) or error).split(": ")[-1]


def _decoded(path: Path, rate: int, head: int | None) -> np.ndarray:
    """Short audio as the model scores it (at ``rate``, its head of ``head`` samples, repeat-padded),
    decoded once and refused if it holds NaN/inf or silence."""
    try:
        audio = load_audio(path, rate, head)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise RequestError(400, "corrupt_audio", f"the audio cannot be decoded: {_reason(error)}") from None
    _refuse_silence(_peak(audio))
    return fit_length(audio, head, "head") if head else audio


def run(detector: Detector, device: torch.device, host: str, port: int, limits: Limits) -> None:
    """Serve until interrupted."""
    import uvicorn

    uvicorn.run(create_app(detector, device, limits), host=host, port=port, log_level="info")
