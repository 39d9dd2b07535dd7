"""Audio decoding, resampling and the crop/pad policies on real files written with soundfile."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from dpda.data.audio import PAPER_LENGTH, fit_length, load_audio, repeat_pad


def tone(frequency: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    "rate, fmt, subtype",
    [
        (16000, "WAV", "PCM_16"),
        (8000, "FLAC", "PCM_16"),
        (22050, "WAV", "FLOAT"),
        (44100, "OGG", "VORBIS"),
        (48000, "FLAC", "PCM_24"),
    ],
)
def test_load_resamples_to_16k_mono(tmp_path, rate, fmt, subtype):
    stereo = np.stack([tone(440, 1.0, rate), tone(440, 1.0, rate)], axis=1)
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, stereo, rate, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 16000) <= 2
    assert dominant_frequency(audio, 16000) == pytest.approx(440, abs=2)
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.03)


def test_downsampling_removes_content_above_the_new_nyquist(tmp_path):
    mixture = tone(1000, 1.0, 44100) + tone(12000, 1.0, 44100)
    sf.write(tmp_path / "x.wav", mixture, 44100, subtype="FLOAT")
    spectrum = np.abs(np.fft.rfft(load_audio(tmp_path / "x.wav")))
    freqs = np.fft.rfftfreq(16000, 1 / 16000)
    assert spectrum[np.abs(freqs - 1000) < 5].max() > 1000 * spectrum[freqs > 7000].max()


def test_paper_policy_takes_the_first_samples_and_repeat_pads():
    long = np.arange(70000, dtype=np.float32)
    assert np.array_equal(fit_length(long, PAPER_LENGTH, "head"), long[:PAPER_LENGTH])
    short = np.arange(30000, dtype=np.float32)
    padded = fit_length(short, PAPER_LENGTH, "head")
    assert np.array_equal(padded, np.concatenate([short, short, short[:6800]]))


def test_random_crop_is_a_seeded_window():
    audio = np.arange(50000, dtype=np.float32)
    first = fit_length(audio, 16000, "random", np.random.default_rng(7))
    again = fit_length(audio, 16000, "random", np.random.default_rng(7))
    assert np.array_equal(first, again) and len(first) == 16000
    assert np.array_equal(first, np.arange(first[0], first[0] + 16000, dtype=np.float32))
    starts = {fit_length(audio, 16000, "random", np.random.default_rng(s))[0] for s in range(20)}
    assert len(starts) > 10


def test_full_policy_keeps_length_up_to_a_maximum():
    audio = np.ones(40000, dtype=np.float32)
    assert len(fit_length(audio, None, "full")) == 40000
    assert len(fit_length(audio, 32000, "full")) == 32000
    assert len(fit_length(audio[:100], 32000, "full")) == 100


def test_policy_errors():
    audio = np.ones(10, dtype=np.float32)
    with pytest.raises(ValueError, match="valid policies"):
        fit_length(audio, 5, "middle")
    with pytest.raises(ValueError, match="needs a length"):
        fit_length(audio, None, "head")
    with pytest.raises(ValueError, match="positive"):
        fit_length(audio, 0, "full")
    with pytest.raises(ValueError, match="random generator"):
        fit_length(audio, 5, "random")
    with pytest.raises(ValueError, match="zero samples"):
        repeat_pad(np.zeros(0, dtype=np.float32), 5)
