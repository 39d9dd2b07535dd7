"""RawNet2 (Tak et al., ICASSP 2021) as in the ASVspoof 2021 LA/DF baseline.

Layer order, for a waveform ``x`` of ``T`` samples (defaults of the baseline's
``model_config_RawNet.yaml``: ``first_conv: 1024``, ``filts: [20, [20, 20], [20, 128], [128, 128]]``,
``gru_node: 1024``, ``nb_gru_layer: 3``, ``nb_fc_node: 1024``):

  fixed sinc band-pass filters (20 mel-spaced bands, 1025 taps, no padding)
  -> |.| -> max-pool 3 -> BatchNorm -> SELU
  -> 2 residual blocks of 20 channels, then 4 of 128; each block: conv3 -> BN -> LeakyReLU(0.3)
     -> conv3, plus the (1x1-projected when the width changes) input, max-pool 3, then filter-wise
     feature map scaling (FMS): ``s = sigmoid(W mean_t(h) + b)``, ``h * s + s``
  -> BatchNorm -> SELU -> 3-layer GRU (1024) -> last time step -> FC 1024 -> FC 2.

The baseline's residual blocks compute ``BN -> LeakyReLU`` of the input and then discard it
(``conv1`` reads the raw input), so its trained weights expect no pre-activation: that is the
default here, and those unused ``bn1`` layers are not built. ``pre_activation=True`` gives the
block of the paper's figure (BN and LeakyReLU before ``conv1`` in all blocks but the first), with
``bn1`` layers; its parameter count then equals the baseline's count exactly.

The published 25.43M parameters (the RawNet2 row of the AASIST paper, Jung et al., ICASSP 2022)
match ``sinc_filters=128, channels=(128, 512), pre_activation=True`` (25,433,602); the 2021
baseline's own configuration has 17,621,410 (17,620,562 here without the unused ``bn1``).

Outputs follow the baseline's class order, which is dpda's: index 1 = bona fide (the baseline scores
with ``log_softmax(out)[:, 1]``); ``logits`` are the scores before that log-softmax.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpda.models.options import FromConfig


class SincFilterbank(nn.Module):
    """Fixed band-pass FIR filters with mel-spaced cut-offs: hand-designed, not learnt, as in the
    baseline (its ``SincConv``), so they live in a non-persistent buffer, outside the parameters and
    the state dict.

    Band ``i`` passes ``[e_i, e_{i+1}]`` where the ``n_filters + 1`` edges are equally spaced in mel
    from 0 Hz to Nyquist; its taps are the difference of two ideal low-pass sinc responses times a
    symmetric Hamming window. An even ``kernel_size`` is rounded up to the next odd length.
    """

    filters: Tensor  # (n_filters, 1, kernel_size), a buffer

    def __init__(self, n_filters: int, kernel_size: int, sample_rate: int = 16000) -> None:
        super().__init__()
        self.kernel_size = kernel_size + 1 - kernel_size % 2
        mel_max = 2595.0 * math.log10(1.0 + (sample_rate / 2) / 700.0)
        edges = 700.0 * (10.0 ** (torch.linspace(0.0, mel_max, n_filters + 1, dtype=torch.float64) / 2595.0) - 1.0)
        half = (self.kernel_size - 1) // 2
        n = torch.arange(-half, half + 1, dtype=torch.float64)
        low_pass = (2 * edges[:, None] / sample_rate) * torch.sinc(2 * edges[:, None] * n / sample_rate)
        window = torch.hamming_window(self.kernel_size, periodic=False, dtype=torch.float64)
        taps = (low_pass[1:] - low_pass[:-1]) * window
        self.register_buffer("filters", taps.float().unsqueeze(1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, T) -> (B, n_filters, T - kernel_size + 1)."""
        return F.conv1d(x, self.filters.to(x.dtype))


class ResidualBlock(nn.Module):
    """One RawNet2 residual block followed by its filter-wise feature map scaling (FMS).

    FMS rescales each channel by a sigmoid gate from its time average and adds the gate as a bias,
    ``h * s + s``, as the baseline does.
    """

    def __init__(self, in_channels: int, out_channels: int, pre_activation: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm1d(in_channels) if pre_activation else None
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_downsample = (
            nn.Conv1d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )
        self.fms = nn.Linear(out_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.bn1(x), 0.3) if self.bn1 is not None else x
        out = self.conv2(F.leaky_relu(self.bn2(self.conv1(out)), 0.3))
        identity = self.conv_downsample(x) if self.conv_downsample is not None else x
        out = F.max_pool1d(out + identity, 3)
        scale = torch.sigmoid(self.fms(out.mean(dim=2))).unsqueeze(2)
        return out * scale + scale


class RawNet2(FromConfig, nn.Module):
    """The ASVspoof 2021 RawNet2 baseline: (B, T) 16 kHz audio -> (embedding (B, fc_hidden), logits (B, 2)).

    ``T`` must be at least :attr:`min_samples` (3211 with the defaults, about 0.2 s): the sinc
    filters and seven max-pools of 3 must leave one GRU step. The baseline trains on 64,600 samples.

    Parameter names follow the baseline's so that its checkpoints load through
    :meth:`load_baseline_state_dict`: ``first_bn``, ``bn_before_gru``, ``gru``, ``fc1_gru``,
    ``fc2_gru`` are the baseline's names; its ``block{i}.0.*`` is ``blocks.{i}.*`` here and its
    ``fc_attention{i}.0.*`` is ``blocks.{i}.fms.*``. The sinc filters are fixed and not in the state
    dict (neither are they in the baseline's).

    ``channels`` and ``blocks`` give the width and depth of the two stages: the baseline's ``filts``
    ``[s, [s, c1], [c1, c2], ...]`` is ``sinc_filters=s, channels=(c1, c2)`` and its (hard-coded)
    two blocks then four are ``blocks=(2, 4)``. The embedding is the first FC layer's output.
    """

    def __init__(
        self,
        *,
        sinc_filters: int = 20,
        sinc_kernel_size: int = 1024,
        channels: tuple[int, int] = (20, 128),
        blocks: tuple[int, int] = (2, 4),
        gru_hidden: int = 1024,
        gru_layers: int = 3,
        fc_hidden: int = 1024,
        pre_activation: bool = False,
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        if len(channels) != 2 or len(blocks) != 2 or min(blocks) < 1:
            raise ValueError(f"channels and blocks take two stages each, blocks >= 1; got {channels}, {blocks}")
        self.sinc = SincFilterbank(sinc_filters, sinc_kernel_size, sample_rate)
        self.first_bn = nn.BatchNorm1d(sinc_filters)
        widths = [sinc_filters] + [channels[0]] * blocks[0] + [channels[1]] * blocks[1]
        self.blocks = nn.ModuleList(
            ResidualBlock(widths[i], widths[i + 1], pre_activation and i > 0) for i in range(len(widths) - 1)
        )
        self.bn_before_gru = nn.BatchNorm1d(channels[1])
        self.gru = nn.GRU(channels[1], gru_hidden, num_layers=gru_layers, batch_first=True)
        self.fc1_gru = nn.Linear(gru_hidden, fc_hidden)
        self.fc2_gru = nn.Linear(fc_hidden, 2)
        self.min_samples = self.sinc.kernel_size - 1 + 3 ** (len(self.blocks) + 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] < self.min_samples:
            raise ValueError(f"RawNet2 takes (B, T) audio with T >= {self.min_samples}; got {tuple(x.shape)}")
        h = F.max_pool1d(self.sinc(x.unsqueeze(1)).abs(), 3)
        h = F.selu(self.first_bn(h))
        for block in self.blocks:
            h = block(h)
        h = F.selu(self.bn_before_gru(h))
        out, _ = self.gru(h.transpose(1, 2))
        embedding = self.fc1_gru(out[:, -1])
        return embedding, self.fc2_gru(embedding)

    def load_baseline_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a checkpoint of the baseline's ``RawNet`` (``DataParallel``'s ``module.`` prefix
        allowed), renaming its keys to these and dropping the ``bn1`` entries that the baseline never
        applies (kept when ``pre_activation=True``)."""
        own = self.state_dict().keys()
        renamed: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            key = key.removeprefix("module.")
            key = re.sub(r"^block(\d+)\.0\.", r"blocks.\1.", key)
            key = re.sub(r"^fc_attention(\d+)\.0\.", r"blocks.\1.fms.", key)
            if ".bn1." in key and key not in own:
                continue
            renamed[key] = value
        self.load_state_dict(renamed)
