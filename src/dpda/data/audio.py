"""Audio I/O through soundfile: mono, 16 kHz (polyphase resampling), and crop/pad policies."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from dpda.names import CROP_POLICIES, CropPolicy

SAMPLE_RATE = 16000
#: The paper code's training length: the first 66,800 samples (about 4.2 s at 16 kHz).
PAPER_LENGTH = 66800


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any format soundfile reads into mono float32 at ``sample_rate``.

    Channels are averaged; other rates are converted with a polyphase filter
    (``scipy.signal.resample_poly``), which keeps the band below the new Nyquist frequency flat.
    """
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(mono, rate, sample_rate)


def resample(audio: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling from ``rate`` to ``target_rate`` (a no-op when they are equal)."""
    if rate == target_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    divisor = gcd(rate, target_rate)
    return resample_poly(audio, target_rate // divisor, rate // divisor).astype(np.float32)


def repeat_pad(audio: np.ndarray, length: int) -> np.ndarray:
    """Tile a short utterance until it is ``length`` samples long (the paper code's padding)."""
    if len(audio) == 0:
        raise ValueError("cannot pad an utterance with zero samples")
    repeats = -(-length // len(audio))
    return np.tile(audio, repeats)[:length]


def check_policy(length: int | None, policy: str) -> None:
    """A known crop policy with a usable length (only ``full`` may go without one)."""
    if policy not in CROP_POLICIES:
        raise ValueError(f"unknown crop policy {policy!r}; valid policies: {', '.join(CROP_POLICIES)}")
    if length is None and policy != "full":
        raise ValueError(f"crop policy {policy!r} needs a length")
    if length is not None and length <= 0:
        raise ValueError(f"length must be positive, got {length}")


def fit_length(
    audio: np.ndarray, length: int | None, policy: CropPolicy, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Apply a crop/pad policy.

    - ``head``: the first ``length`` samples, repeat-padding shorter utterances (the paper code);
    - ``random``: a random ``length``-sample window (training), repeat-padding shorter ones;
    - ``full``: the whole utterance, cut to at most ``length`` samples when a maximum is given
      (evaluation), never padded.
    """
    check_policy(length, policy)
    if length is None:
        return audio
    if policy == "full":
        return audio[:length]
    if len(audio) < length:
        return repeat_pad(audio, length)
    if policy == "random":
        if rng is None:
            raise ValueError("crop policy 'random' needs a random generator")
        start = int(rng.integers(0, len(audio) - length + 1))
        return audio[start : start + length]
    return audio[:length]
