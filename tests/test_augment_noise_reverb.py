"""Additive MUSAN-style noise and RIR reverberation on tiny synthetic folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dpda.augment.clips import ClipBank
from dpda.augment.noise import CATEGORIES, AdditiveNoise
from dpda.augment.reverb import Reverberation

RATE = 16000
#: The speech "speakers" are pure tones at these frequencies, so a babble mix shows which were used.
SPEAKER_HZ = [300 + 200 * i for i in range(8)]
#: The synthetic RIRs: file name -> samples before the direct path.
RIR_DELAYS = {"a_room.wav": 40, "b_room.flac": 0, "c_room.wav": 120}


def write_musan(root: Path) -> Path:
    """noise/ (white noise, one file shorter than a second), music/ (tones at 8 kHz), speech/ (tones)."""
    rng = np.random.default_rng(0)
    for i, seconds in enumerate([2.0, 0.5, 1.5]):
        path = root / "noise" / "free-sound" / f"noise-{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32), RATE)
    (root / "music").mkdir()
    for i, hz in enumerate([1000, 1500]):
        t = np.arange(8000) / 8000
        sf.write(root / "music" / f"music-{i}.flac", (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 8000)
    (root / "speech").mkdir()
    for i, hz in enumerate(SPEAKER_HZ):
        t = np.arange(RATE) / RATE
        sf.write(root / "speech" / f"speaker-{i}.wav", (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32), RATE)
    return root


def write_rirs(folder: Path) -> Path:
    """Exponentially decaying noise tails behind a direct-path spike, at different delays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name, delay in RIR_DELAYS.items():
        rir = np.zeros(4000, dtype=np.float32)
        rir[delay] = 1.0
        tail = np.arange(1, 4000 - delay)
        rir[delay + 1 :] = np.clip(0.3 * rng.standard_normal(len(tail)), -0.8, 0.8) * np.exp(-tail / 600)
        sf.write(folder / name, rir, RATE, subtype="FLOAT" if name.endswith(".wav") else "PCM_24")
    return folder


@pytest.fixture
def musan(tmp_path: Path) -> Path:
    return write_musan(tmp_path / "musan")


@pytest.fixture
def rirs(tmp_path: Path) -> Path:
    return write_rirs(tmp_path / "rirs")


def speech_like(batch: int, seed: int = 0, samples: int = RATE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    envelope = 0.5 + 0.5 * torch.sin(torch.linspace(0, 12, samples)) ** 2
    return 0.1 * torch.randn(batch, samples, generator=g) * envelope


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def snr_db(clean: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(clean.double().pow(2).mean(1) / (mixed.double() - clean.double()).pow(2).mean(1))


def test_noise_is_added_at_the_drawn_snr_within_each_category_range(musan):
    ranges = {"noise": (0.0, 15.0), "music": (5.0, 15.0), "babble": (13.0, 20.0)}
    x = speech_like(32)
    out = AdditiveNoise(musan, snr_db=ranges).augment(x, seeded())
    assert out.audio.shape == x.shape and out.audio.dtype == x.dtype
    drawn = out.params["snr_db"]
    torch.testing.assert_close(snr_db(x, out.audio), drawn.double(), atol=1e-3, rtol=0)
    categories = out.params["category"]
    assert set(categories.tolist()) == {0, 1, 2}
    for b, category in enumerate(categories.tolist()):
        low, high = ranges[CATEGORIES[category]]
        assert low <= drawn[b] <= high


def test_babble_sums_several_speech_files_and_records_them(musan):
    x = speech_like(12)
    out = AdditiveNoise(musan, snr_db={"babble": (15, 15)}, babble_speakers=(3, 5)).augment(x, seeded(2))
    sources, index = out.params["num_sources"], out.params["noise_index"]
    assert index.shape == (12, 5) and sources.min() >= 3 and sources.max() <= 5
    assert torch.equal((index >= 0).sum(1), sources)
    for b in range(12):
        added = np.abs(np.fft.rfft((out.audio[b] - x[b]).double().numpy()))
        peaks = set(np.nonzero(added > 0.1 * added.max())[0].tolist())  # 1 Hz bins
        assert peaks == {SPEAKER_HZ[i] for i in index[b].tolist() if i >= 0}
    assert len(set(index.flatten().tolist())) > 5  # different speakers across utterances


def test_single_sources_use_one_file_and_short_files_repeat(musan):
    x = speech_like(16)
    out = AdditiveNoise(musan, snr_db={"noise": (5, 5), "music": (5, 5)}).augment(x, seeded(1))
    assert out.params["noise_index"].shape == (16, 1) and torch.all(out.params["num_sources"] == 1)
    assert len(set(out.params["noise_index"][out.params["category"] == 0, 0].tolist())) > 1
    torch.testing.assert_close(snr_db(x, out.audio), torch.full((16,), 5.0, dtype=torch.float64), atol=1e-3, rtol=0)


def test_files_are_resampled_and_cached(musan):
    bank = ClipBank(musan / "music", "root", RATE, cache_mb=0)
    clip = bank[1]
    assert clip.shape == (RATE,) and clip.dtype == torch.float32
    spectrum = np.abs(np.fft.rfft(clip.numpy()))
    assert int(spectrum.argmax()) == 1500
    assert bank[1] is clip  # kept in memory
    bank[0]
    assert list(bank._cache) == [0]  # over the budget: the least recently used clip is dropped
    x = speech_like(8)
    unbounded = AdditiveNoise(musan, cache_mb=None).augment(x, seeded(3))
    bounded = AdditiveNoise(musan, cache_mb=0).augment(x, seeded(3))
    assert torch.equal(unbounded.audio, bounded.audio)


def test_silent_utterances_stay_silent_without_nan(musan):
    x = speech_like(4)
    x[1] = 0
    out = AdditiveNoise(musan).augment(x, seeded())
    assert torch.isfinite(out.audio).all()
    assert torch.equal(out.audio[1], x[1])


@pytest.mark.parametrize("make", ["noise", "reverb"])
def test_seeded_runs_repeat_and_utterances_draw_independently(musan, rirs, make):
    augmentation = AdditiveNoise(musan) if make == "noise" else Reverberation(rirs)
    x = speech_like(1).repeat(16, 1).double()
    first, again = augmentation.augment(x, seeded(5)), augmentation.augment(x, seeded(5))
    assert torch.equal(first.audio, again.audio) and first.audio.dtype == torch.float64
    assert all(torch.equal(first.params[k], again.params[k]) for k in first.params)
    assert len({tuple(row.tolist()[:50]) for row in first.audio}) > 1
    assert not torch.equal(augmentation.augment(x, seeded(6)).audio, first.audio)


def test_reverberation_is_the_unit_energy_rir_convolution_read_from_the_direct_path(rirs):
    x = speech_like(6)
    out = Reverberation(rirs, rescale="none").augment(x, seeded())
    names = sorted(RIR_DELAYS)
    assert len(set(out.params["rir_index"].tolist())) > 1
    for b in range(6):
        name = names[out.params["rir_index"][b]]
        rir, _ = sf.read(rirs / name, dtype="float64")
        delay = RIR_DELAYS[name]
        assert out.params["rir_peak"][b] == delay
        expected = np.convolve(x[b].double().numpy(), rir / np.linalg.norm(rir))[delay : delay + RATE]
        np.testing.assert_allclose(out.audio[b].numpy(), expected, atol=2e-5)


def test_reverberation_adds_no_delay_and_keeps_the_energy(rirs):
    x = speech_like(8)
    out = Reverberation(rirs).augment(x, seeded(1))
    for b in range(8):
        n = 2 * RATE
        correlation = np.fft.irfft(np.fft.rfft(out.audio[b].numpy(), n) * np.conj(np.fft.rfft(x[b].numpy(), n)), n)
        assert int(np.argmax(correlation)) == 0
    torch.testing.assert_close(out.audio.pow(2).mean(1), x.pow(2).mean(1), rtol=1e-5, atol=0)
    assert not torch.allclose(out.audio, x, atol=1e-3)
    peak = Reverberation(rirs, rescale="peak").augment(x, seeded(1))
    torch.testing.assert_close(peak.audio.abs().amax(1), x.abs().amax(1), rtol=1e-6, atol=0)
    silent = Reverberation(rirs).augment(torch.zeros(2, RATE), seeded())
    assert torch.equal(silent.audio, torch.zeros(2, RATE))


@pytest.mark.parametrize(
    "build, words",
    [
        (lambda root, rirs: AdditiveNoise(root / "nowhere"), ["root (noise)", "nowhere", "does not exist"]),
        (lambda root, rirs: AdditiveNoise(root, extensions=[".mp3"]), ["root (noise)", ".mp3", "no"]),
        (lambda root, rirs: AdditiveNoise(root, snr_db={"music": (15, 5)}), ["snr_db.music", "inverted"]),
        (lambda root, rirs: AdditiveNoise(root, snr_db={"speech": (5, 15)}), ["snr_db", "noise, music, babble"]),
        (lambda root, rirs: AdditiveNoise(root, snr_db=[0, 15]), ["snr_db", "mapping"]),
        (lambda root, rirs: AdditiveNoise(root, snr_db={}), ["snr_db", "no category"]),
        (lambda root, rirs: AdditiveNoise(root, babble_speakers=(0, 3)), ["babble_speakers"]),
        (lambda root, rirs: AdditiveNoise(root, babble_speakers=(2.5, 3)), ["babble_speakers"]),
        (lambda root, rirs: Reverberation(rirs / "missing"), ["folder", "missing"]),
        (lambda root, rirs: Reverberation(root / "music", extensions=["wav"]), ["folder", ".wav", "music"]),
        (lambda root, rirs: Reverberation(rirs, rescale="rms"), ["rescale", "energy, peak, none"]),
    ],
)
def test_bad_configuration_names_the_key_and_the_folder(musan, rirs, build, words):
    with pytest.raises(ValueError) as error:
        build(musan, rirs)
    assert all(word in str(error.value) for word in words), str(error.value)
