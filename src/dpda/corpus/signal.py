"""The one signal path every corpus utterance takes, bona fide or spoofed.

Whatever made the audio, it leaves here the same way: channel (wideband, 8 kHz band-limit or
G.711 telephone), 16 kHz, DC removed, silence trimmed at both ends, RMS level
normalised, 16-bit. Treating both classes identically is what keeps a detector from telling
them apart by level, padding or sample rate instead of by the speech.
"""

from __future__ import annotations

import numpy as np

from dpda.data.audio import resample

SAMPLE_RATE = 16000
FRAME_SECONDS = 0.02
#: A frame is silent when its level is this far below the utterance's loudest frame.
SILENCE_DB = -40.0
#: RMS level of every (trimmed) utterance, and the peak it may not exceed.
TARGET_DBFS = -26.0
PEAK_LIMIT = 0.95
MIN_PAUSE_SECONDS = 0.15
#: Internal pauses are shortened to this: synthesisers pause at every comma, and long silences
#: would tell them apart from speech cut out of longer recordings.
MAX_PAUSE_SECONDS = 0.2
KEEP_SILENCE_SECONDS = 0.05
CHANNELS = ("wideband", "narrowband", "telephone")
NARROWBAND_RATE = 8000


def frame_levels(audio: np.ndarray, rate: int) -> np.ndarray:
    """RMS level in dB of consecutive 20 ms frames (the last partial frame dropped)."""
    size = max(1, int(rate * FRAME_SECONDS))
    count = len(audio) // size
    frames = audio[: count * size].reshape(count, size)
    return 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)


def active_frames(audio: np.ndarray, rate: int) -> np.ndarray:
    """Boolean mask of the frames within ``SILENCE_DB`` of the loudest one."""
    levels = frame_levels(audio, rate)
    if levels.size == 0:
        return levels.astype(bool)
    return levels > levels.max() + SILENCE_DB


def trim_silence(audio: np.ndarray, rate: int) -> np.ndarray:
    """``audio`` without its leading and trailing silence, keeping a 50 ms margin each side."""
    active = np.flatnonzero(active_frames(audio, rate))
    if active.size == 0:
        return audio[:0]
    size = int(rate * FRAME_SECONDS)
    margin = int(rate * KEEP_SILENCE_SECONDS)
    return audio[max(0, active[0] * size - margin) : min(len(audio), (active[-1] + 1) * size + margin)]


def shorten_pauses(audio: np.ndarray, rate: int) -> np.ndarray:
    """``audio`` with every silent stretch longer than ``MAX_PAUSE_SECONDS`` cut down to it
    (its middle removed)."""
    size = int(rate * FRAME_SECONDS)
    keep_frames = int(MAX_PAUSE_SECONDS / FRAME_SECONDS)
    silent = np.append(~active_frames(audio, rate), False)
    keep = np.ones(len(audio), dtype=bool)
    start = None
    for index, is_silent in enumerate(silent):
        if is_silent and start is None:
            start = index
        elif not is_silent and start is not None:
            if index - start > keep_frames:
                first = start + keep_frames // 2
                keep[first * size : (index - (keep_frames - keep_frames // 2)) * size] = False
            start = None
    return audio[keep]


def segment_at_pauses(audio: np.ndarray, rate: int, min_seconds: float, max_seconds: float) -> list[tuple[int, int]]:
    """Cut a recording at its pauses into (start, end) sample spans of ``min_seconds`` to
    ``max_seconds``: runs of speech separated by >= 150 ms of silence are joined greedily while
    they fit; a single run longer than the maximum is cut at its quietest frame."""
    size = int(rate * FRAME_SECONDS)
    active = active_frames(audio, rate)
    runs, start = [], None
    for index, is_active in enumerate(np.append(active, False)):
        if is_active and start is None:
            start = index
        elif not is_active and start is not None:
            runs.append([start, index])
            start = None
    gap = int(MIN_PAUSE_SECONDS / FRAME_SECONDS)
    merged: list[list[int]] = []
    for run in runs:  # pauses shorter than the minimum do not separate words
        if merged and run[0] - merged[-1][1] < gap:
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    levels = frame_levels(audio, rate)
    max_frames, min_frames = int(max_seconds / FRAME_SECONDS), int(np.ceil(min_seconds / FRAME_SECONDS))
    pieces: list[list[int]] = []
    for first, last in merged:
        while last - first > max_frames:
            window = levels[first + min_frames : first + max_frames]
            cut = first + min_frames + int(np.argmin(window))
            pieces.append([first, cut])
            first = cut
        pieces.append([first, last])
    spans, current = [], None
    for first, last in pieces:
        if current is not None and last - current[0] <= max_frames:
            current[1] = last
        else:
            if current is not None:
                spans.append(current)
            current = [first, last]
    if current is not None:
        spans.append(current)
    return [(first * size, last * size) for first, last in spans if last - first >= min_frames]


def mu_law(audio: np.ndarray) -> np.ndarray:
    """G.711 mu-law: 8-bit companded quantisation and back."""
    mu = 255.0
    clipped = np.clip(audio, -1.0, 1.0)
    encoded = np.sign(clipped) * np.log1p(mu * np.abs(clipped)) / np.log1p(mu)
    quantised = np.round((encoded + 1) / 2 * mu) / mu * 2 - 1
    return np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(mu)) / mu


def apply_channel(audio: np.ndarray, rate: int, channel: str) -> tuple[np.ndarray, int]:
    """Band-limit to 8 kHz sampling (``narrowband``), plus G.711 (``telephone``)."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; valid: {', '.join(CHANNELS)}")
    if channel == "wideband":
        return audio, rate
    audio = resample(audio, rate, NARROWBAND_RATE) if rate != NARROWBAND_RATE else audio
    if channel == "telephone":
        audio = mu_law(audio / max(PEAK_LIMIT, float(np.abs(audio).max())) * PEAK_LIMIT)
    return audio, NARROWBAND_RATE


def finish(audio: np.ndarray, rate: int, channel: str, max_seconds: float) -> np.ndarray:
    """The common path: channel, 16 kHz, DC, trimming, pauses shortened, at most ``max_seconds`` (cut at the
    quietest frame after the first half), RMS level; returns int16 samples at 16 kHz."""
    audio = np.asarray(audio, dtype=np.float64)
    audio, rate = apply_channel(audio, rate, channel)
    audio = resample(audio, rate, SAMPLE_RATE).astype(np.float64)
    audio = shorten_pauses(trim_silence(audio - audio.mean(), SAMPLE_RATE), SAMPLE_RATE)
    limit = int(max_seconds * SAMPLE_RATE)
    if len(audio) > limit:
        size = int(SAMPLE_RATE * FRAME_SECONDS)
        levels = frame_levels(audio[:limit], SAMPLE_RATE)
        half = len(levels) // 2
        audio = trim_silence(audio[: (half + int(np.argmin(levels[half:]))) * size], SAMPLE_RATE)
    if len(audio) < int(SAMPLE_RATE * FRAME_SECONDS) or not np.any(audio):
        raise ValueError("no speech left after trimming")
    gain = 10 ** (TARGET_DBFS / 20) / np.sqrt(np.mean(audio**2))
    gain = min(gain, PEAK_LIMIT / max(float(np.abs(audio).max()), 1e-9))
    return np.round(audio * gain * 32767).astype(np.int16)
