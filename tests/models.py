"""Tiny detectors for engine tests: (B, T) audio in, (B, 2) logits out."""

from __future__ import annotations

import torch
from torch import nn


class TinyDetector(nn.Module):
    """Conv front-end, optional BatchNorm, pooled linear head."""

    def __init__(self, batch_norm: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv1d(1, 8, kernel_size=9, stride=4)
        self.norm = nn.BatchNorm1d(8) if batch_norm else nn.Identity()
        self.hidden = nn.Linear(8, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.conv(x.unsqueeze(1))))
        return self.head(torch.tanh(self.hidden(h.mean(dim=2))))


class LoudOnlyBranch(TinyDetector):
    """A detector with a parameter that only loud inputs reach, and a frozen one."""

    def __init__(self) -> None:
        super().__init__()
        self.loud_gain = nn.Parameter(torch.tensor([0.5, -0.5]))
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.unused = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x) * self.frozen
        if x.abs().max() > 1.0:
            logits = logits + self.loud_gain * x.abs().mean(dim=1, keepdim=True)
        return logits


class OverflowsInEval(TinyDetector):
    """Finite weights and training logits, inf logits in eval mode: outputs that overflow while
    no gradient or weight shows it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits if self.training else logits * float("inf")


def batch(size: int = 6, length: int = 400, seed: int = 1):
    """Original and augmented audio and labels with both classes present."""
    generator = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(size, length, generator=generator)
    noise = 0.2 * torch.randn(size, length, generator=generator)
    x_aug = torch.tanh(2 * x) + noise  # a distortion plus noise, like RawBoost
    labels = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0] * (size // 12 + 1))[:size]
    return x, x_aug, labels
