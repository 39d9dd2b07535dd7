"""Codecs: the G.711 telephone channel (mu-law, A-law) in torch, and MP3 / Ogg Vorbis / Ogg Opus
coding through soundfile.

G.711 runs batched on the batch's device. The lossy codecs have no tensor form: each utterance
is encoded into an in-memory file and decoded back on the CPU (libsndfile, in a small thread pool;
libsndfile releases the GIL), then aligned to the input, cut to T samples and moved back.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from dpda.augment.base import Augmentation, Augmented, check_batch
from dpda.augment.ops import apply_by_group, check_range, crop_or_pad, draw_uniform
from dpda.augment.resample import resample

G711_CODECS = ("mulaw", "alaw")
LOSSY_CODECS = ("mp3", "vorbis", "opus")
#: ``codec_id`` in the parameters is the index into this tuple.
CODECS = G711_CODECS + LOSSY_CODECS
TELEPHONE_RATE = 8000
G711_KBPS = 64.0
#: Constant bitrates LAME encodes (kbps): MPEG-1 from 32 kHz, MPEG-2 from 16 kHz, MPEG-2.5 below,
#: where libsndfile caps them at 64 kbps.
MP3_BITRATES = {
    32000: (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    16000: (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    0: (8, 16, 24, 32, 40, 48, 56, 64),
}
#: libsndfile's Opus bitrate range (kbps, mono) and the sample rates Opus accepts.
OPUS_KBPS = (6.0, 256.0)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_FORMATS = {"mp3": ("MP3", "MPEG_LAYER_III"), "vorbis": ("OGG", "VORBIS"), "opus": ("OGG", "OPUS")}


def mp3_bitrates(sample_rate: int) -> tuple[int, ...]:
    """The constant MP3 bitrates (kbps) available at ``sample_rate``."""
    return next(rates for floor, rates in MP3_BITRATES.items() if sample_rate >= floor)


def _segment_quantize(magnitude: Tensor) -> Tensor:
    """G.711's segments: 16 levels per octave, each value replaced by its interval's centre.

    The step is ``2 ** max(floor(log2(magnitude)) - 4, 1)``.
    """
    _, exponent = torch.frexp(magnitude.clamp(min=1))  # magnitude in [2**(exponent-1), 2**exponent)
    step = torch.pow(2.0, (exponent - 5).clamp(min=1).to(magnitude.dtype))
    return (torch.floor(magnitude / step) + 0.5) * step


def g711(x: Tensor, law: str) -> Tensor:
    """Encode and decode 8 kHz audio with G.711 mu-law or A-law, 8 bits a sample.

    Floats in [-1, 1] map to 16-bit PCM (values beyond clip, as on a telephone line); then, as in
    the ITU-T reference code, mu-law keeps 14 bits and adds the bias 33, A-law keeps 13 bits and
    codes a negative value ``v`` as ``-1 - v``; both decode to the centre of the interval.
    """
    pcm = torch.clamp(torch.round(x * 32768), -32768, 32767)
    if law == "mulaw":
        value = torch.floor(pcm / 4)
        decoded = _segment_quantize((value.abs() + 33).clamp(max=8191)) * 4 - 132
    elif law == "alaw":
        value = torch.floor(pcm / 8)
        decoded = _segment_quantize(torch.where(value < 0, -value - 1, value).clamp(max=4095)) * 8
    else:
        raise ValueError(f"unknown G.711 law {law!r}; valid: {', '.join(G711_CODECS)}")
    return torch.where(value < 0, -decoded, decoded) / 32768


def _compression_level(codec: str, setting: float, sample_rate: int) -> float:
    """libsndfile's compression level in [0, 1] for an MP3/Opus bitrate or a Vorbis quality.

    libsndfile maps the level linearly onto the codec's range and truncates to an integer
    bitrate; the half-unit offset makes the truncation land on the requested value.
    """
    if codec == "vorbis":
        return 1.0 - setting
    if codec == "mp3":
        rates = mp3_bitrates(sample_rate)
        low, high = rates[0], rates[-1]
        return min(max((high - setting - 0.5) / (high - low), 0.0), 1.0)
    opus_low, opus_high = OPUS_KBPS
    return min(max((opus_high - setting - 0.0005) / (opus_high - opus_low), 0.0), 1.0)


def _align(decoded: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Skip the decoder's extra leading samples, if any: the lag of the cross-correlation peak.

    MP3 at low bitrates (32 kbps and below at 16 kHz) comes back longer, the encoder delay still in
    front; at higher bitrates, and with Vorbis and Opus, the decoder returns the input length.
    """
    extra = len(decoded) - len(reference)
    if extra <= 0:
        return decoded
    n = 1 << math.ceil(math.log2(len(decoded) + len(reference)))
    correlation = np.fft.irfft(np.fft.rfft(decoded, n) * np.conj(np.fft.rfft(reference, n)), n)
    lag = int(np.argmax(correlation[: extra + 1]))
    return decoded[lag : lag + len(reference)]


def lossy_roundtrip(audio: np.ndarray, sample_rate: int, codec: str, setting: float) -> np.ndarray:
    """Encode mono float32 ``audio`` into an in-memory MP3/Vorbis/Opus file and decode it back.

    ``setting`` is the bitrate in kbps (MP3 constant bitrate, Opus) or the quality in [0, 1]
    (Vorbis). The result is aligned to the input and has at most its length.
    """
    fmt, subtype = _FORMATS[codec]
    buffer = io.BytesIO()
    sf.write(
        buffer,
        audio,
        sample_rate,
        format=fmt,
        subtype=subtype,
        compression_level=_compression_level(codec, setting, sample_rate),
        bitrate_mode="CONSTANT" if codec == "mp3" else None,
    )
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    return _align(decoded, audio)


class Codec(Augmentation):
    """Code each utterance with a codec drawn uniformly from ``codecs``.

    - ``mulaw``, ``alaw``: the telephone channel, resampled to 8 kHz (band below about 4 kHz),
      G.711 at 64 kbps, and back; batched on the device.
    - ``mp3`` (constant bitrate, one of LAME's bitrates in ``bitrate_kbps["mp3"]``), ``opus``
      (bitrate uniform in ``bitrate_kbps["opus"]``, whole kbps) and ``vorbis`` (quality uniform in
      ``vorbis_quality``, 0 = worst): per utterance on the CPU through soundfile, ``workers``
      threads; the decoded audio is aligned to the input and cut or zero-padded to T.

    Parameters: ``codec_id`` (index into ``CODECS``), ``bitrate_kbps`` (NaN for Vorbis),
    ``quality`` (Vorbis only, NaN otherwise).
    """

    name = "codec"

    def __init__(
        self,
        codecs: Sequence[str] = G711_CODECS,
        bitrate_kbps: Mapping[str, Sequence[float]] | None = None,
        vorbis_quality: Sequence[float] = (0.0, 1.0),
        sample_rate: int = 16000,
        workers: int = 4,
    ) -> None:
        super().__init__()
        if isinstance(codecs, str) or not codecs:
            raise ValueError(f"codecs: expected a non-empty list of names from {', '.join(CODECS)}, got {codecs!r}")
        unknown = [c for c in codecs if c not in CODECS]
        if unknown:
            raise ValueError(f"codecs: unknown codec(s) {unknown}; valid codecs: {', '.join(CODECS)}")
        if "opus" in codecs and sample_rate not in OPUS_RATES:
            raise ValueError(f"sample_rate: Opus needs one of {OPUS_RATES} Hz, got {sample_rate}")
        if workers < 1:
            raise ValueError(f"workers: must be at least 1, got {workers}")
        limits = {"mp3": mp3_bitrates(sample_rate), "opus": OPUS_KBPS}
        if bitrate_kbps is not None and not isinstance(bitrate_kbps, Mapping):
            raise ValueError(f"bitrate_kbps: expected a mapping codec -> [low, high], got {bitrate_kbps!r}")
        bitrate_kbps = dict(bitrate_kbps or {})
        unexpected = sorted(set(bitrate_kbps) - set(limits))
        if unexpected:
            raise ValueError(f"bitrate_kbps: no bitrate for {unexpected}; bitrates are set for: mp3, opus")
        ranges = {
            c: check_range(f"bitrate_kbps.{c}", bitrate_kbps.get(c, (lim[0], lim[-1])), lim[0], lim[-1])
            for c, lim in limits.items()
        }
        low, high = ranges["mp3"]
        self.mp3_choices = [rate for rate in limits["mp3"] if low <= rate <= high]
        if not self.mp3_choices:
            raise ValueError(f"bitrate_kbps.mp3: [{low}, {high}] holds none of the MP3 bitrates {limits['mp3']}")
        self.opus_kbps = ranges["opus"]
        self.vorbis_quality = check_range("vorbis_quality", vorbis_quality, 0.0, 1.0)
        self.codec_ids = [CODECS.index(c) for c in codecs]
        self.sample_rate = sample_rate
        self.workers = workers

    def param_names(self) -> tuple[str, ...]:
        """All three whatever ``codecs``: a setting the drawn codec lacks is NaN."""
        return ("codec_id", "bitrate_kbps", "quality")

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Augmented:
        check_batch(x, generator)
        batch, device = x.shape[0], x.device
        ids = torch.tensor(self.codec_ids, device=device)
        codec_id = ids[torch.randint(len(ids), (batch,), generator=generator, device=device)]
        mp3_kbps = torch.tensor(self.mp3_choices, dtype=torch.float32, device=device)[
            torch.randint(len(self.mp3_choices), (batch,), generator=generator, device=device)
        ]
        opus_kbps = torch.round(draw_uniform(*self.opus_kbps, batch, generator, device))
        quality = draw_uniform(*self.vorbis_quality, batch, generator, device)

        def uses(*names: str) -> Tensor:
            return torch.isin(codec_id, torch.tensor([CODECS.index(n) for n in names], device=device))

        nan = torch.full_like(quality, math.nan)
        bitrate = torch.where(uses("mp3"), mp3_kbps, torch.where(uses("opus"), opus_kbps, nan))
        bitrate = torch.where(uses(*G711_CODECS), G711_KBPS, bitrate)
        quality = torch.where(uses("vorbis"), quality, nan)
        settings = torch.where(uses("vorbis"), quality, bitrate)

        def code(codec: int, audio: Tensor) -> Tensor:
            if CODECS[codec] in G711_CODECS:
                return self._telephone(audio, CODECS[codec])
            return self._lossy(audio, CODECS[codec], settings[codec_id == codec].tolist())

        audio = apply_by_group(x, codec_id, code)
        return Augmented(audio, {"codec_id": codec_id, "bitrate_kbps": bitrate, "quality": quality})

    def _telephone(self, x: Tensor, law: str) -> Tensor:
        narrow = resample(x, self.sample_rate, TELEPHONE_RATE)
        return crop_or_pad(resample(g711(narrow, law), TELEPHONE_RATE, self.sample_rate), x.shape[1])

    def _lossy(self, x: Tensor, codec: str, settings: list[float]) -> Tensor:
        rows = x.detach().float().cpu().numpy()

        def roundtrip(b: int) -> Tensor:
            decoded = lossy_roundtrip(rows[b], self.sample_rate, codec, settings[b])
            return crop_or_pad(torch.from_numpy(np.ascontiguousarray(decoded)), x.shape[1])

        with ThreadPoolExecutor(max_workers=min(self.workers, len(rows))) as pool:
            decoded = list(pool.map(roundtrip, range(len(rows))))
        return torch.stack(decoded).to(device=x.device, dtype=x.dtype)
