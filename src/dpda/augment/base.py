"""The augmentation interface: batched, on the batch's device, every draw from a passed generator."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Augmented:
    """Augmented audio and the parameters drawn for each utterance.

    ``params`` maps a parameter name (e.g. ``"snr_db"``) to a tensor whose first dimension is the
    batch, so training can log what each utterance went through. Utterances an augmentation was
    not applied to carry NaN (float parameters) in its entries.
    """

    audio: Tensor
    params: dict[str, Tensor] = field(default_factory=dict)


class Augmentation(nn.Module, ABC):
    """(B, T) float audio in, (B, T) out, on the device of the batch.

    Every random draw comes from ``generator`` (a ``torch.Generator`` on the batch's device), so
    a seeded run repeats and resumes exactly. ``augment`` returns the audio with the drawn
    parameters; calling the module returns the audio only. ``param_names`` declares the
    parameters' keys before any batch is drawn.
    """

    @abstractmethod
    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Augmented:
        """Augment a (B, T) batch."""

    @abstractmethod
    def param_names(self) -> tuple[str, ...]:
        """Every key ``augment`` can put in ``params``, in the order it puts them, from the options
        alone: the training log fixes its columns before the first batch. A batch may hold a
        subset (a chain stage that selected no utterance), never another key."""

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.augment(x, generator).audio


def check_batch(x: Tensor, generator: torch.Generator | None) -> None:
    """A (B, T) floating-point batch, and a generator on its device."""
    if x.dim() != 2 or not x.dtype.is_floating_point:
        raise ValueError(f"expected a (batch, samples) floating-point tensor, got {tuple(x.shape)} {x.dtype}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            f"the generator is on {generator.device} but the batch is on {x.device}; "
            f"create it with torch.Generator(device=x.device)"
        )
