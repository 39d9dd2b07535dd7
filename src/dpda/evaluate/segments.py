"""Long audio: scores of overlapping windows, with times, and one score for the whole recording.

A detector is trained on crops of a few seconds; a call recording or a podcast is scored window by
window (``window`` seconds every ``hop`` seconds, the last window ending at the end of the file so
that every sample is heard), and the file is decoded as it goes (``stream_audio``), so an hour of
audio needs the memory of one batch of windows. The recording's own score aggregates the windows':
``mean`` (an utterance-level score, steady over long files) or ``min`` (the most spoof-like window:
a fake passage spliced into genuine speech decides).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dpda.data.audio import stream_audio
from dpda.evaluate.calibration import Calibration
from dpda.evaluate.scoring import predict, scores_from_logits

Aggregate = Literal["mean", "min"]
AGGREGATES: tuple[Aggregate, ...] = ("mean", "min")


@dataclass(frozen=True)
class Windows:
    """How a long file is cut: window and hop in seconds, at ``sample_rate``."""

    window: float
    hop: float
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if not (self.window > 0 and self.hop > 0):
            raise ValueError(f"window and hop must be positive seconds, got {self.window} and {self.hop}")
        if self.hop > self.window:
            raise ValueError(f"hop ({self.hop} s) longer than the window ({self.window} s) would skip audio")

    @property
    def samples(self) -> tuple[int, int]:
        return round(self.window * self.sample_rate), round(self.hop * self.sample_rate)


def windows_of(chunks: Iterator[np.ndarray], windows: Windows) -> Iterator[tuple[int, np.ndarray]]:
    """(start sample, window) of every window of the stream ``chunks``: one every hop, then one
    ending at the last sample if the hops left some unheard; a stream shorter than one window is
    one window of all of it."""
    size, hop = windows.samples
    buffer = np.zeros(0, dtype=np.float32)
    start = 0  # the stream position of buffer[0]
    previous: np.ndarray | None = None  # the last window given
    for chunk in chunks:
        buffer = np.concatenate([buffer, chunk])
        while len(buffer) >= size:
            previous = buffer[:size]
            yield start, previous
            buffer, start = buffer[hop:], start + hop
    end = start + len(buffer)
    if previous is None:
        if end:  # shorter than one window
            yield 0, buffer
    elif end > start - hop + size:  # a tail the hops did not reach: the window ending at the end
        yield end - size, np.concatenate([previous[:hop], buffer])[-size:]


def score_windows(
    model: nn.Module,
    path: str | Path,
    windows: Windows,
    calibration: Calibration | None,
    *,
    score_kind: str,
    device: torch.device,
    batch_size: int = 8,
    aggregate: Aggregate = "mean",
) -> dict[str, Any]:
    """Every window's score (and calibrated probability and decision) with its start and end in
    seconds, and the file's aggregate score; the file is decoded as it goes."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; valid: {', '.join(AGGREGATES)}")
    rate = windows.sample_rate
    segments: list[dict[str, Any]] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:  # the windows of a batch are of one length (a short file has one window)
        stacked = torch.from_numpy(np.stack([audio for _, audio in pending]))
        batches = [(stacked, torch.zeros(len(pending), dtype=torch.long), [""] * len(pending))]
        _, logits, _ = predict(model, batches, device)
        for (start, audio), score in zip(pending, scores_from_logits(logits, score_kind).tolist()):
            segments.append(_verdict({"start": start / rate, "end": (start + len(audio)) / rate}, score, calibration))
        pending.clear()

    for item in windows_of(stream_audio(path, rate), windows):
        pending.append(item)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not segments:
        raise ValueError("no samples")
    scores = np.array([segment["score"] for segment in segments])
    whole = float(scores.mean() if aggregate == "mean" else scores.min())
    return {
        "seconds": round(segments[-1]["end"], 3),
        "window": windows.window,
        "hop": windows.hop,
        "aggregate": aggregate,
        **_verdict({}, whole, calibration),
        "segments": segments,
    }


def _verdict(record: dict[str, Any], score: float, calibration: Calibration | None) -> dict[str, Any]:
    """``record`` with the score, and where there is a calibration, P(spoof) and the decision."""
    record = {**{key: round(value, 3) for key, value in record.items()}, "score": round(score, 6)}
    return {**record, **calibration.verdict(score)} if calibration is not None else record
