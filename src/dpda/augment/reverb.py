"""Reverberation: convolution with room impulse responses from a folder, batched through the FFT."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from scipy.fft import next_fast_len
from torch import Tensor

from dpda.augment.base import Augmentation, Augmented, check_batch
from dpda.augment.clips import AUDIO_EXTENSIONS, ClipBank
from dpda.augment.ops import mean_power, safe_ratio, working_dtype

Rescale = Literal["energy", "peak", "none"]
RESCALES = ("energy", "peak", "none")


class Reverberation(Augmentation):
    """Convolve each utterance with an impulse response drawn uniformly from ``folder``.

    The RIR is scaled to unit energy and the output is read from the RIR's peak (the direct
    path) on, so reverberation adds a tail but no delay: the reverberant utterance stays aligned
    with the original (``rir_peak`` records the samples skipped). The output is then rescaled
    per utterance: ``energy`` (default) to the input's mean power, ``peak`` to its maximum
    absolute value, ``none`` leaves the unit-energy-RIR result. A silent input stays silent.
    Files (``extensions``, searched recursively, sorted) are read on the CPU and cached
    (``ClipBank``); the convolution runs on the batch's device.

    Parameters: ``rir_index`` (into the sorted file list) and ``rir_peak``.
    """

    name = "reverb"

    def __init__(
        self,
        folder: str | Path,
        rescale: Rescale = "energy",
        sample_rate: int = 16000,
        extensions: Sequence[str] = AUDIO_EXTENSIONS,
        cache_mb: float | None = 2048,
    ) -> None:
        super().__init__()
        if rescale not in RESCALES:
            raise ValueError(f"rescale: unknown value {rescale!r}; valid: {', '.join(RESCALES)}")
        self.rescale = rescale
        self.bank = ClipBank(folder, "folder", sample_rate, extensions, cache_mb)

    def param_names(self) -> tuple[str, ...]:
        return ("rir_index", "rir_peak")

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Augmented:
        check_batch(x, generator)
        batch, length = x.shape
        device, dtype = x.device, working_dtype(x)
        draws = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        rir_index = (draws * len(self.bank)).long().clamp(max=len(self.bank) - 1)
        clips = [self.bank[i] for i in rir_index.tolist()]
        rirs = torch.zeros(batch, max(c.numel() for c in clips))
        for b, clip in enumerate(clips):
            rirs[b, : clip.numel()] = clip
        rirs = rirs.to(device=device, dtype=dtype)
        norm = rirs.norm(dim=1, keepdim=True)
        rirs = rirs / torch.where(norm > 0, norm, 1.0)
        peak = rirs.abs().argmax(dim=1)

        source = x.to(dtype)
        n_fft = next_fast_len(length + rirs.shape[1] - 1, real=True)
        full = torch.fft.irfft(torch.fft.rfft(source, n_fft) * torch.fft.rfft(rirs, n_fft), n_fft)
        wet = full.gather(1, peak[:, None] + torch.arange(length, device=device))
        if self.rescale == "energy":
            wet = wet * safe_ratio(mean_power(source), mean_power(wet)).sqrt()[:, None]
        elif self.rescale == "peak":
            wet = wet * safe_ratio(source.abs().amax(dim=1), wet.abs().amax(dim=1))[:, None]
        return Augmented(wet.to(x.dtype), {"rir_index": rir_index, "rir_peak": peak})
