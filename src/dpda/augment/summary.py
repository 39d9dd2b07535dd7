"""The augmentation a batch went through, as numbers a training log can hold: the batch mean of
each per-utterance parameter (``Augmented.params``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

PREFIX = "aug/"


def summarise_augmentation(params: Mapping[str, Any]) -> dict[str, float]:
    """``aug/<key>`` -> the batch mean of each per-utterance augmentation parameter.

    ``params`` maps keys to tensors whose first dimension is the batch (the chain's
    ``Augmented.params``). Bools give the fraction of utterances that are true. Floats are
    averaged over their non-NaN entries (``nanmean``): NaN marks an utterance a stage did not
    apply to. Integers (indices, codes, counts) are averaged over their non-negative entries:
    ``-1`` is the chain's fill for utterances a stage did not apply to. A key with no defined
    entry (all NaN, all ``-1``, or empty) is left out, as are complex tensors. Tensors of more
    than one dimension are averaged over all their defined entries.

    Cost: the tensors are concatenated where they are (one kernel) and copied to the host in
    one transfer (one synchronisation); the means are computed there, in float64, with a fixed
    number of numpy calls whatever the number of keys.

    >>> import torch
    >>> summarise_augmentation({"noise.applied": torch.tensor([True, False, False, True]),
    ...                         "noise.snr_db": torch.tensor([5.0, float("nan"), float("nan"), 15.0]),
    ...                         "reverb.rir_index": torch.tensor([-1, 2, -1, 4]),
    ...                         "codec.bitrate": torch.tensor([float("nan")] * 4)})
    {'aug/noise.applied': 0.5, 'aug/noise.snr_db': 10.0, 'aug/reverb.rir_index': 3.0}
    """
    keys: list[str] = []
    parts: list[torch.Tensor] = []
    integer: list[bool] = []
    for key, value in params.items():
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if tensor.numel() == 0 or tensor.is_complex():
            continue
        keys.append(key)
        parts.append(tensor.reshape(-1))
        integer.append(not (tensor.is_floating_point() or tensor.dtype == torch.bool))
    if not parts:
        return {}
    if len({part.device for part in parts}) > 1:
        parts = [part.cpu() for part in parts]
    sizes = [part.numel() for part in parts]
    # the empty float32 tensor lifts the common dtype to at least float32 (ints stay exact)
    parts.append(torch.empty(0, dtype=torch.float32, device=parts[0].device))
    flat = torch.cat(parts).cpu().numpy().astype(np.float64)
    segment = np.repeat(np.arange(len(keys)), sizes)
    defined = ~(np.isnan(flat) | ((flat < 0) & np.repeat(np.array(integer), sizes)))
    sums = np.bincount(segment, weights=np.where(defined, flat, 0.0), minlength=len(keys))
    counts = np.bincount(segment, weights=defined, minlength=len(keys))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums / counts).tolist()
    return {PREFIX + key: mean for key, mean in zip(keys, means) if not math.isnan(mean)}
