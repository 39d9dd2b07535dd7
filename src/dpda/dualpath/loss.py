"""Per-path losses as (numerator, denominator) pairs, so that accumulation and DDP stay exact.

A mean loss over a batch is ``sum_i w_i l_i / sum_i w_i``. The engine back-propagates only the
numerator and divides the gradient by the denominator summed over every micro-batch and every
rank at step time, so K micro-batches on N ranks give exactly the gradient of the loss on the
whole K x N batch, even with class weights and uneven label counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


def logits_of(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    """Models return logits, or ``(embedding, logits)``."""
    return output[-1] if isinstance(output, (tuple, list)) else output


class PathLoss(Protocol):
    def __call__(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(numerator, denominator)``: the loss is ``numerator / denominator``."""


class WeightedCrossEntropy:
    """Class-weighted cross-entropy; the paper's default weights [0.1, 0.9] for [spoof, bona fide].

    ``numerator / denominator`` equals ``F.cross_entropy(logits, labels, weight=w)`` (mean
    reduction), the loss of the paper's code.
    """

    def __init__(self, weights: Sequence[float] = (0.1, 0.9)) -> None:
        if len(weights) < 2 or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"class weights must be >= 0, at least two, not all zero; got {list(weights)}")
        self.weights = torch.tensor(list(weights), dtype=torch.float32)

    def __call__(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if logits.dim() != 2 or logits.shape[1] != len(self.weights):
            raise ValueError(f"expected logits of shape (batch, {len(self.weights)}), got {tuple(logits.shape)}")
        weights = self.weights.to(logits.device)
        numerator = F.cross_entropy(logits.float(), labels, weight=weights, reduction="sum")
        return numerator, weights[labels].sum()

    def __repr__(self) -> str:
        return f"WeightedCrossEntropy(weights={self.weights.tolist()})"


def set_loss(loss: PathLoss, logits: Tensor, labels: Tensor, batch_size: int | None = None) -> float:
    """The loss over a whole (dev) set, from its logits and labels in set order.

    ``batch_size`` None: one pooled loss, ``sum numerator / sum denominator``. Otherwise the mean
    over consecutive batches of ``batch_size`` of each batch's own loss, weighted by the number of
    utterances in the batch: the paper code's dev loss (batches of 8 in protocol order). The two
    differ because a batch's class weights normalise within the batch.
    """
    if batch_size is None:
        numerator, denominator = loss(logits, labels)
        return float(numerator / denominator)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    total = 0.0
    for start in range(0, len(labels), batch_size):
        batch = slice(start, start + batch_size)
        numerator, denominator = loss(logits[batch], labels[batch])
        total += float(numerator / denominator) * len(labels[batch])
    return total / len(labels) if len(labels) else float("nan")
