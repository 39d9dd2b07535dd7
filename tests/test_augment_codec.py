"""G.711 telephone coding in torch and MP3 / Vorbis / Opus round trips through soundfile."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from dpda.augment.codec import CODECS, Codec, g711, lossy_roundtrip, mp3_bitrates

RATE = 16000


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def speech_band(batch: int, seed: int = 0) -> torch.Tensor:
    """Tones of 300-3000 Hz under a slow envelope, well inside the telephone band."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(RATE, dtype=torch.float64) / RATE
    hz = 300 + 2700 * torch.rand(batch, 3, generator=g, dtype=torch.float64)
    tones = torch.sin(2 * math.pi * hz[:, :, None] * t).sum(1)
    return (0.15 * tones * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))).float()


def snr_db(clean: torch.Tensor, coded: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(clean.pow(2).mean(-1) / (coded - clean).pow(2).mean(-1))


def high_band_energy(audio: torch.Tensor, above_hz: float) -> torch.Tensor:
    spectrum = torch.fft.rfft(audio.double()).abs() ** 2
    return spectrum[..., torch.fft.rfftfreq(audio.shape[-1], 1 / RATE) > above_hz].sum(-1)


@pytest.mark.parametrize("law, reference", [("mulaw", ("lin2ulaw", "ulaw2lin")), ("alaw", ("lin2alaw", "alaw2lin"))])
def test_g711_matches_the_reference_codec_on_every_16_bit_value(law, reference):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # Python < 3.13
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    encode, decode = (getattr(audioop, name) for name in reference)
    expected = np.frombuffer(decode(encode(pcm.tobytes(), 2), 2), dtype=np.int16)
    coded = g711(torch.from_numpy(pcm / 32768).float(), law) * 32768
    assert torch.equal(coded, torch.from_numpy(expected.astype(np.float32)))
    assert len(torch.unique(coded)) <= 256


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_telephone_channel_keeps_speech_and_removes_the_band_above_4_khz(law):
    x = speech_band(4)
    noise = 0.05 * torch.randn(4, RATE, generator=seeded(1))
    out = Codec(codecs=[law]).augment(x + noise, seeded())
    assert out.audio.shape == x.shape and out.audio.dtype == x.dtype
    assert torch.all(out.params["codec_id"] == CODECS.index(law))
    assert torch.all(out.params["bitrate_kbps"] == 64) and torch.isnan(out.params["quality"]).all()
    assert torch.all(high_band_energy(out.audio, 4400) < 1e-4 * high_band_energy(x + noise, 4400))
    clean = Codec(codecs=[law]).augment(x, seeded())
    assert torch.all(snr_db(x, clean.audio) > 30)  # 8-bit companding: about 35-38 dB


@pytest.mark.parametrize(
    "codec, setting",
    [("mp3", 16), ("mp3", 64), ("mp3", 160), ("vorbis", 0.0), ("vorbis", 1.0), ("opus", 6), ("opus", 32)],
)
def test_lossy_round_trips_are_finite_aligned_and_not_identical(codec, setting):
    x = speech_band(1)[0] + 0.05 * torch.randn(RATE, generator=seeded(1))  # broadband: one correlation peak
    decoded = lossy_roundtrip(x.numpy(), RATE, codec, setting)
    assert decoded.dtype == np.float32 and len(decoded) <= RATE and np.isfinite(decoded).all()
    assert len(decoded) >= RATE - 1152 or codec != "mp3"
    assert len(decoded) == RATE or codec == "mp3"
    assert not np.array_equal(decoded, x.numpy()[: len(decoded)])
    n = 2 * RATE
    correlation = np.fft.irfft(np.fft.rfft(decoded, n) * np.conj(np.fft.rfft(x.numpy(), n)), n)
    assert int(np.argmax(correlation)) == 0  # no codec delay left
    floor = 0 if setting in (6, 16) else 8  # very low bitrates keep the sound, not the waveform
    assert snr_db(x[: len(decoded)], torch.from_numpy(decoded)) > floor


def test_higher_bitrates_code_more_faithfully():
    x = speech_band(1, seed=3)[0].numpy()
    for codec, low, high in [("mp3", 24, 128), ("opus", 8, 64), ("vorbis", 0.0, 1.0)]:
        errors = [np.mean((lossy_roundtrip(x, RATE, codec, s) - x) ** 2) for s in (low, high)]
        assert errors[1] < errors[0], codec


def test_codecs_and_settings_are_drawn_per_utterance_and_recorded():
    x = speech_band(1).repeat(24, 1)
    codec = Codec(
        codecs=list(CODECS), bitrate_kbps={"mp3": [32, 96], "opus": [10, 20]}, vorbis_quality=[0.2, 0.4], workers=3
    )
    out = codec.augment(x, seeded())
    assert out.audio.shape == x.shape and torch.isfinite(out.audio).all()
    ids, bitrate, quality = out.params["codec_id"], out.params["bitrate_kbps"], out.params["quality"]
    assert set(ids.tolist()) == set(range(len(CODECS)))
    for b in range(len(x)):
        name = CODECS[ids[b]]
        if name == "mp3":
            assert bitrate[b].item() in {32, 40, 48, 56, 64, 80, 96}
        elif name == "opus":
            assert 10 <= bitrate[b] <= 20 and bitrate[b] == bitrate[b].round()
        elif name == "vorbis":
            assert math.isnan(bitrate[b]) and 0.2 <= quality[b] <= 0.4
        else:
            assert bitrate[b] == 64
        assert math.isnan(quality[b]) == (name != "vorbis")
    again = codec.augment(x, seeded())
    assert torch.equal(out.audio, again.audio) and torch.equal(out.params["codec_id"], again.params["codec_id"])
    assert len({tuple(row[:200].tolist()) for row in out.audio}) > len(CODECS)


def test_half_precision_and_double_batches_keep_their_dtype():
    x = speech_band(2).double()
    for dtype in (torch.float64, torch.bfloat16):
        out = Codec(codecs=["mulaw", "mp3"]).augment(x.to(dtype), seeded())
        assert out.audio.dtype == dtype and out.audio.shape == x.shape


def test_mp3_bitrates_follow_the_mpeg_version_of_the_sample_rate():
    assert mp3_bitrates(8000)[-1] == 64 and mp3_bitrates(16000)[-1] == 160 and mp3_bitrates(44100)[0] == 32


@pytest.mark.parametrize(
    "options, words",
    [
        ({"codecs": ["mp3", "aac"]}, ["codecs", "aac", "mulaw, alaw, mp3, vorbis, opus"]),
        ({"codecs": []}, ["codecs"]),
        ({"codecs": "mp3"}, ["codecs"]),
        ({"codecs": ["mp3"], "bitrate_kbps": {"mp3": [8, 320]}}, ["bitrate_kbps.mp3", "outside"]),
        ({"codecs": ["mp3"], "bitrate_kbps": {"mp3": [60, 62]}}, ["bitrate_kbps.mp3", "none of"]),
        ({"codecs": ["opus"], "bitrate_kbps": {"opus": [2, 20]}}, ["bitrate_kbps.opus", "outside"]),
        ({"codecs": ["opus"], "bitrate_kbps": {"opus": [20, 10]}}, ["bitrate_kbps.opus", "inverted"]),
        ({"codecs": ["vorbis"], "bitrate_kbps": {"vorbis": [64, 96]}}, ["bitrate_kbps", "mp3, opus"]),
        ({"codecs": ["vorbis"], "vorbis_quality": [0.5, 1.5]}, ["vorbis_quality"]),
        ({"codecs": ["opus"], "sample_rate": 44100}, ["sample_rate", "Opus"]),
        ({"codecs": ["mp3"], "workers": 0}, ["workers"]),
        ({"codecs": ["mp3"], "bitrate_kbps": [32, 64]}, ["bitrate_kbps", "mapping"]),
    ],
)
def test_bad_configuration_names_the_key_and_the_valid_values(options, words):
    with pytest.raises(ValueError) as error:
        Codec(**options)
    assert all(word in str(error.value) for word in words), str(error.value)
