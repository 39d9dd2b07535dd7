"""Resampling, band-limiting, speed perturbation and gain: what reaches the signal, exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpda.augment.channel import BandLimit, Gain, Speed
from dpda.augment.ops import crop_or_pad
from dpda.augment.resample import resample

RATE = 16000


def tone(frequency: float, samples: int = RATE, rate: int = RATE) -> torch.Tensor:
    return 0.5 * torch.sin(2 * math.pi * frequency * torch.arange(samples, dtype=torch.float64) / rate).float()


def dominant_frequency(audio: torch.Tensor, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(audio.double().numpy() * np.hanning(audio.shape[-1])))
    return float(np.fft.rfftfreq(audio.shape[-1], 1 / rate)[spectrum.argmax()])


def band_energy(audio: torch.Tensor, low: float, high: float, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(audio.double().numpy())) ** 2
    freqs = np.fft.rfftfreq(audio.shape[-1], 1 / rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_resample_keeps_the_band_and_removes_what_the_new_rate_cannot_hold():
    x = torch.stack([tone(440), tone(6000)])
    narrow = resample(x, RATE, 8000)
    assert narrow.shape == (2, 8000)
    assert dominant_frequency(narrow[0], 8000) == pytest.approx(440, abs=1)
    assert narrow[1, 100:-100].abs().max() < 1e-4 * x[1].abs().max()  # 6 kHz does not alias to 2 kHz
    back = resample(narrow, 8000, RATE)
    assert back.shape == (2, RATE)
    torch.testing.assert_close(back[0, 100:-100], x[0, 100:-100], atol=2e-3, rtol=0)


@pytest.mark.parametrize("orig, new", [(16000, 11025), (16000, 22050), (9, 10), (11, 10)])
def test_resample_length_and_frequency_for_any_ratio(orig, new):
    y = resample(tone(1000)[None], orig, new)
    assert y.shape == (1, math.ceil(RATE * new / orig))
    assert dominant_frequency(y[0], RATE * new / orig) == pytest.approx(1000, rel=0.005)


def test_fit_length_crops_the_end_or_zero_pads_it():
    x = torch.arange(1.0, 7.0).reshape(1, 6)
    assert torch.equal(crop_or_pad(x, 4), x[:, :4])
    assert torch.equal(crop_or_pad(x, 8), torch.cat([x, torch.zeros(1, 2)], dim=1))


def test_band_limit_removes_the_band_above_the_drawn_cutoff():
    x = torch.randn(6, RATE, generator=seeded(1)) * 0.1
    out = BandLimit(rates_hz=[8000, 11025, 12000]).augment(x, seeded())
    assert out.audio.shape == x.shape and out.audio.dtype == x.dtype
    rate = out.params["rate_hz"]
    assert set(rate.tolist()) <= {8000, 11025, 12000} and len(set(rate.tolist())) > 1
    torch.testing.assert_close(out.params["cutoff_hz"], 0.95 * rate / 2)
    for b in range(len(x)):
        nyquist = rate[b].item() / 2
        above = band_energy(out.audio[b], 1.1 * nyquist, RATE / 2)
        assert above < 1e-4 * band_energy(x[b], 1.1 * nyquist, RATE / 2)
        below = band_energy(out.audio[b], 100, 0.8 * nyquist)
        assert below == pytest.approx(band_energy(x[b], 100, 0.8 * nyquist), rel=0.01)


@pytest.mark.parametrize("speed", [0.8, 0.9, 1.1, 1.25])
def test_speed_scales_a_tone_frequency_and_the_timing(speed):
    x = tone(500)[None]
    x[0, 4000] += 5.0  # a click: it moves to 4000 / speed
    out = Speed(factors=[speed]).augment(x, seeded())
    assert out.audio.shape == x.shape
    assert out.params["speed"].item() == pytest.approx(speed)
    assert abs(int(out.audio[0].abs().argmax()) - 4000 / speed) <= 1
    shorter = int(RATE / speed) if speed > 1 else RATE
    assert dominant_frequency(out.audio[0, 200 : shorter - 200]) == pytest.approx(500 * speed, rel=0.01)
    if speed > 1:  # sped up: zero-padded at the end
        assert torch.all(out.audio[0, int(RATE / speed) + 1 :] == 0)


def test_speed_one_is_the_identity_and_factors_are_drawn_per_utterance():
    x = tone(300).repeat(64, 1)
    out = Speed(factors=[0.9, 1.0, 1.1]).augment(x, seeded())
    speeds = out.params["speed"]
    assert sorted(set(speeds.tolist())) == pytest.approx([0.9, 1.0, 1.1])
    assert torch.equal(out.audio[speeds == 1.0], x[speeds == 1.0])
    assert not torch.equal(out.audio[speeds == 0.9][0], x[0])


def test_gain_is_exact_in_db_and_drawn_per_utterance():
    x = torch.randn(16, 400, generator=seeded(3))
    out = Gain(gain_db=[-10, 5]).augment(x, seeded())
    gain = out.params["gain_db"]
    assert gain.min() >= -10 and gain.max() <= 5 and len(set(gain.tolist())) == 16
    torch.testing.assert_close(out.audio, x * 10 ** (gain[:, None] / 20), rtol=1e-6, atol=0)
    amplitude = (out.audio.abs().amax(1) / x.abs().amax(1)).log10() * 20
    torch.testing.assert_close(amplitude, gain, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "augmentation", [BandLimit([8000, 12000]), Speed([0.9, 1.1]), Gain([-3, 3])], ids=lambda a: a.name
)
def test_seeded_runs_repeat_and_dtypes_are_kept(augmentation):
    x = torch.randn(4, 3000, generator=seeded(5), dtype=torch.float64)
    first, again = augmentation.augment(x, seeded(7)), augmentation.augment(x, seeded(7))
    assert torch.equal(first.audio, again.audio)
    assert all(torch.equal(first.params[k], again.params[k]) for k in first.params)
    assert first.audio.dtype == torch.float64 and first.audio.shape == x.shape
    assert not torch.equal(augmentation.augment(x, seeded(8)).audio, first.audio)
    half = augmentation(x.bfloat16(), seeded(7))
    assert half.dtype == torch.bfloat16 and half.shape == x.shape


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: BandLimit(rates_hz=[16000]), "rates_hz"),
        (lambda: BandLimit(rates_hz=[20000], sample_rate=16000), "rates_hz"),
        (lambda: BandLimit(rates_hz=[]), "rates_hz"),
        (lambda: Speed(factors=[0.9, 0]), "factors"),
        (lambda: Speed(factors=[-1.1]), "factors"),
        (lambda: Speed(factors=[0.001]), "factors"),
        (lambda: Speed(factors=0.9), "factors"),
        (lambda: Speed(factors=["fast"]), "factors"),
        (lambda: BandLimit(rates_hz=[7999.5]), "rates_hz"),
        (lambda: Gain(gain_db=[6, -6]), "gain_db"),
        (lambda: Gain(gain_db=[1, 2, 3]), "gain_db"),
        (lambda: Gain(gain_db=["loud", 2]), "gain_db"),
        (lambda: Gain(gain_db=[0, float("inf")]), "gain_db"),
    ],
)
def test_bad_configuration_names_the_key(build, key):
    with pytest.raises(ValueError, match=key):
        build()
