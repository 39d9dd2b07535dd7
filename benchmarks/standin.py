"""An AASIST-L-sized stand-in detector for the engine benchmarks, until the models issue lands.

Like AASIST-L it runs a fixed (non-trainable) band-pass filterbank of 70 channels over the raw
waveform, then 2-D residual blocks with BatchNorm on the (70 x time) map, with about as many
trainable parameters (~85k); its compute is dominated by the same early 2-D convolutions.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, (2, 3), padding=(1, 1))
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, (2, 3), padding=(0, 1))
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()
        self.pool = nn.MaxPool2d((1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.selu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.pool(torch.selu(h + self.skip(x)))


class AASISTLStandIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.filterbank = nn.Conv1d(1, 70, 129, bias=False)
        self.filterbank.weight.requires_grad_(False)  # AASIST's sinc filters are fixed too
        self.first_norm = nn.BatchNorm2d(1)
        self.blocks = nn.Sequential(ResidualBlock(1, 32), ResidualBlock(32, 32),
                                    ResidualBlock(32, 24), ResidualBlock(24, 24))
        self.graph = nn.Sequential(nn.Linear(24, 96), nn.SELU(), nn.Linear(96, 96), nn.SELU(),
                                   nn.Linear(96, 96), nn.SELU())
        self.attention = nn.Linear(96, 1)
        self.head = nn.Linear(96, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.filterbank(x.unsqueeze(1)).abs().unsqueeze(1)  # (B, 1, 70, T)
        h = torch.selu(self.first_norm(nn.functional.max_pool2d(h, 3)))
        h = self.blocks(h)  # (B, 24, F, T')
        nodes = self.graph(h.amax(dim=3).transpose(1, 2))  # (B, F, 96): one node per band
        weights = torch.softmax(self.attention(nodes), dim=1)
        return self.head((weights * nodes).sum(dim=1))


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
