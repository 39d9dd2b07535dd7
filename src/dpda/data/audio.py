"""Audio I/O through soundfile: mono, 16 kHz (polyphase resampling), and crop/pad policies.

Files are decoded in blocks and each block is mixed down at once, so a long multi-channel file is
never held whole, and a caller that keeps only the head (``max_samples``) reads only the frames
that head needs: scoring a ten-minute file at ``eval.max_seconds`` costs seconds of audio.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from dpda.names import CROP_POLICIES, CropPolicy

SAMPLE_RATE = 16000
#: The paper code's training length: the first 66,800 samples (about 4.2 s at 16 kHz).
PAPER_LENGTH = 66800
#: Frames decoded at a time (all channels); only their mono mix is kept.
BLOCK_FRAMES = 1 << 16
#: A mono mix with less than this share of the channels' mean energy is warned about: channels
#: that cancel (L = -R, a polarity-inverted channel) become near silence.
CANCELLED_ENERGY = 1e-3


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_samples: int | None = None) -> np.ndarray:
    """Decode any format soundfile reads into mono float32 at ``sample_rate``; with
    ``max_samples``, only its first ``max_samples`` samples, decoding no more of the file than they need.

    Channels are averaged; other rates are converted with a polyphase filter
    (``scipy.signal.resample_poly``), which keeps the band below the new Nyquist frequency flat.
    """
    with sf.SoundFile(str(path)) as file:
        rate = file.samplerate
        frames = None if max_samples is None else _frames_needed(max_samples, rate, sample_rate)
        mono = _read_mono(file, frames, path)
    audio = resample(mono, rate, sample_rate)
    return audio if max_samples is None else audio[:max_samples]


def duration(path: str | Path) -> float:
    """The file's length in seconds, from its header (nothing is decoded)."""
    return float(sf.info(str(path)).duration)


def _frames_needed(samples: int, rate: int, target_rate: int) -> int:
    """Input frames that the first ``samples`` output samples of ``resample`` depend on: output
    sample k sits at input position k * rate / target_rate, and resample_poly's default filter
    reaches 10 * max(up, down) upsampled samples to either side of it."""
    if rate == target_rate:
        return samples
    divisor = gcd(rate, target_rate)
    up, down = target_rate // divisor, rate // divisor
    return -(-(samples * down + 10 * max(up, down)) // up) + 1


def _read_mono(file: sf.SoundFile, frames: int | None, path: str | Path) -> np.ndarray:
    """The first ``frames`` frames (all when None) averaged over channels, block by block."""
    blocks = []
    channel_energy = np.zeros(file.channels)
    mono_energy = 0.0
    left = frames
    while left is None or left > 0:
        block = file.read(BLOCK_FRAMES if left is None else min(BLOCK_FRAMES, left), dtype="float32", always_2d=True)
        if not len(block):
            break
        mono = block.mean(axis=1) if file.channels > 1 else block[:, 0]
        if file.channels > 1:
            channel_energy += np.square(block, dtype=np.float64).sum(axis=0)
            mono_energy += float(np.square(mono, dtype=np.float64).sum())
        blocks.append(mono)
        left = None if left is None else left - len(block)
    if mono_energy < CANCELLED_ENERGY * channel_energy.mean():  # never for silent channels: 0 < 0
        warnings.warn(
            f"{path}: its {file.channels} channels cancel when mixed down to mono (the mix keeps "
            f"{mono_energy / channel_energy.mean():.1e} of their energy; one channel's polarity "
            "inverted?): the model hears near silence",
            stacklevel=3,
        )
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def stream_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, chunk_seconds: float = 30.0) -> Iterator[np.ndarray]:
    """The mono audio of ``path`` at ``sample_rate`` as consecutive chunks of about
    ``chunk_seconds``, decoding the file as it goes: an hour-long file never lies in memory whole.

    Their concatenation equals ``load_audio(path, sample_rate)``: each chunk is resampled with
    enough input on either side for the filter (``_frames_needed``'s reach), and only its own
    output samples are kept.
    """
    with sf.SoundFile(str(path)) as file:
        rate = file.samplerate
        if rate == sample_rate:
            while len(chunk := _read_mono(file, max(1, round(chunk_seconds * rate)), path)):
                yield chunk
            return
        divisor = gcd(rate, sample_rate)
        up, down = sample_rate // divisor, rate // divisor
        # chunks and context in whole periods of `down` input frames, so that every piece starts on
        # the output grid; the context covers the filter's reach
        step = max(1, round(chunk_seconds * rate / down)) * down
        reach = -(-_frames_needed(0, rate, sample_rate) // down) * down
        before = np.zeros(0, dtype=np.float32)
        current = _read_mono(file, step, path)
        consumed = produced = 0
        while len(current):
            after = _read_mono(file, step, path)
            context = np.concatenate([before, current, after[:reach]])
            first = len(before) * up // down
            consumed += len(current)
            count = -(-consumed * up // down) - produced
            yield resample(context, rate, sample_rate)[first : first + count]
            produced += count
            before, current = np.concatenate([before, current])[-reach:], after


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
