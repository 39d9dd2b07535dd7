"""Tensor operations and configuration checks that several augmentations share."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def check_range(
    key: str, value: Sequence[float], low: float | None = None, high: float | None = None
) -> tuple[float, float]:
    """A ``[low, high]`` pair from a configuration, inside the given limits, as floats."""
    lo, hi = check_list(key, value, "a [low, high] pair of numbers", size=2)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{key}: the range must be finite, got [{lo}, {hi}]")
    if lo > hi:
        raise ValueError(f"{key}: the range is inverted, low {lo} > high {hi}")
    if (low is not None and lo < low) or (high is not None and hi > high):
        raise ValueError(f"{key}: [{lo}, {hi}] is outside the allowed [{low}, {high}]")
    return lo, hi


def check_list(key: str, value: object, expected: str, size: int | None = None) -> list[float]:
    """A non-empty list of numbers from a configuration (of ``size`` items if given), as floats."""
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or not value
        or (size is not None and len(value) != size)
    ):
        raise ValueError(f"{key}: expected {expected}, got {value!r}")
    try:
        return [float(item) for item in value]
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected {expected}, got {value!r}") from None


def draw_uniform(
    low: Tensor | float, high: Tensor | float, size: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """``size`` float32 values uniform in ``[low, high]`` (scalars or per-utterance tensors)."""
    u = torch.rand(size, generator=generator, device=device)
    return low + (high - low) * u


def crop_or_pad(x: Tensor, length: int) -> Tensor:
    """Crop the end off, or zero-pad the end of, (B, L) audio so that it has ``length`` samples."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def apply_by_group(x: Tensor, groups: Tensor, fn: Callable[[int, Tensor], Tensor]) -> Tensor:
    """``fn(group, x[members])`` for each distinct value of ``groups`` (B,), put back in place.

    Operations with one fixed setting per call (a resampling ratio, a codec) stay batched within
    each group.
    """
    out = x.clone()
    for group in torch.unique(groups).tolist():
        members = (groups == group).nonzero().squeeze(1)
        out[members] = fn(int(group), x[members]).to(out.dtype)
    return out


def working_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision input (FFTs and convolutions there are unsupported or lossy)."""
    return torch.promote_types(x.dtype, torch.float32)


def mean_power(x: Tensor) -> Tensor:
    """Mean square per utterance of (B, T) audio."""
    return x.pow(2).mean(dim=-1)


def safe_ratio(target: Tensor, current: Tensor) -> Tensor:
    """``target / current``, and 0 where ``current`` is 0: scaling silence leaves it silent, not NaN."""
    return torch.where(current > 0, target / torch.where(current > 0, current, 1.0), 0.0)


def add_at_snr(x: Tensor, added: Tensor, snr_db: Tensor) -> Tensor:
    """``x + g * added`` with ``g`` per utterance such that ``power(x) / power(g * added)`` is ``snr_db``.

    The SNR is measured against the utterance's mean power over all T samples. A silent
    utterance or a silent added signal gets nothing added (``g = 0``), never NaN.
    """
    gain = (safe_ratio(mean_power(x), mean_power(added)) * torch.pow(10.0, -snr_db.to(x.dtype) / 10)).sqrt()
    return x + gain[:, None] * added
