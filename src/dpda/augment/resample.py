"""Band-limited resampling of (B, T) audio in torch, on the batch's device."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from dpda.augment.ops import working_dtype

#: The resampling low-pass: its cutoff relative to the lower Nyquist frequency, the length of its
#: windowed sinc (zero crossings on each side) and its Kaiser window's beta (about 90 dB stopband).
ROLLOFF = 0.95
ZERO_CROSSINGS = 24
KAISER_BETA = 8.6


@lru_cache(maxsize=64)
def _sinc_kernels(orig: int, new: int) -> tuple[Tensor, int]:
    """Polyphase windowed-sinc kernels (new, 1, taps) for coprime ``orig -> new``, and the padding.

    Output sample ``new * m + p`` sits at input time ``m * orig + p * orig / new``; phase ``p``
    weights the inputs ``m * orig + k`` for ``k`` in ``[-pad, pad + orig)``. The low-pass (DC gain
    one) cuts at ``ROLLOFF`` times the lower of the two Nyquist frequencies; its Kaiser window
    spans ``ZERO_CROSSINGS`` zero crossings on each side.
    """
    cutoff = ROLLOFF * min(orig, new) / (2 * orig)  # cycles per input sample
    pad = math.ceil(ZERO_CROSSINGS / (2 * cutoff))
    k = torch.arange(-pad, pad + orig, dtype=torch.float64)
    phase = torch.arange(new, dtype=torch.float64)[:, None] * orig / new
    u = 2 * cutoff * (phase - k)  # time in units of the sinc's zero crossings
    inside = (1 - (u / ZERO_CROSSINGS) ** 2).clamp(min=0)
    window = torch.special.i0(KAISER_BETA * inside.sqrt()) / torch.special.i0(torch.tensor(KAISER_BETA))
    kernels = 2 * cutoff * torch.sinc(u) * torch.where(u.abs() < ZERO_CROSSINGS, window, 0.0)
    return kernels[:, None, :], pad


def resample(x: Tensor, orig_hz: int, new_hz: int) -> Tensor:
    """Resample (B, T) audio from ``orig_hz`` to ``new_hz`` with a polyphase windowed sinc.

    Runs as one strided ``conv1d`` over the batch, on its device; the result has
    ``ceil(T * new_hz / orig_hz)`` samples. The low-pass at the lower of the two Nyquist
    frequencies is flat to about 87 % of it, -6 dB at 95 %, -21 dB at it and about -90 dB from
    10 % above it: no audible aliasing or images.
    """
    if orig_hz == new_hz:
        return x
    divisor = math.gcd(orig_hz, new_hz)
    orig, new = orig_hz // divisor, new_hz // divisor
    dtype = working_dtype(x)
    kernels, pad = _sinc_kernels(orig, new)
    kernels = kernels.to(device=x.device, dtype=dtype)
    batch, length = x.shape
    out_length = -(-length * new // orig)
    frames = -(-out_length // new)
    right = (frames - 1) * orig + kernels.shape[-1] - (length + pad)
    padded = torch.nn.functional.pad(x.to(dtype)[:, None, :], (pad, max(right, 0)))
    y = torch.nn.functional.conv1d(padded, kernels, stride=orig)  # (B, new, frames)
    return y.transpose(1, 2).reshape(batch, -1)[:, :out_length]
