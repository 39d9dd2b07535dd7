"""LFCC-LCNN as in the ASVspoof 2021 LA/DF baseline (Wang & Yamagishi; the LCNN-LSTM-sum model of
their Interspeech 2021 comparative study).

LFCC front-end (computed in torch on the batch's device, part of the forward pass):
  pre-emphasis 0.97 -> STFT (320-sample Hamming frames every 160 samples, centred with zero
  padding, 1024-point FFT) -> power spectrum, bins below ``max_freq`` of Nyquist only (0-4 kHz by
  default) -> 20 linear triangular filters -> log10(. + float32 eps) -> orthonormal DCT-II, 20
  coefficients, the first replaced by the log10 frame energy (power / n_fft summed over those bins)
  -> deltas and delta-deltas, ``d[t] = c[t+1] - c[t-1]`` with the edge frames repeated (no 1/2
  factor, as in the baseline) -> (B, frames, 60).

LCNN back-end: nine convolutions, each followed by max-feature-map (MFM: the element-wise maximum of
the two halves of the channels), four 2x2 max-pools, BatchNorm without affine parameters between
them, dropout 0.7; the (channel, feature) map of each frame is flattened (32 x 3 = 96), passed
through two bidirectional LSTM layers, added back to their input and averaged over frames; a
linear layer gives one score.

The baseline trains the score ``s`` with a sigmoid and binary cross-entropy (1 = bona fide); here
the logits are ``(0, s)``, on which softmax cross-entropy equals that loss and ``softmax[:, 1]`` is
``sigmoid(s)``. The Interspeech 2021 study's LFCC differs only in ``n_fft=512, max_freq=1.0``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from dpda.models.options import FromConfig

#: The baseline's floor inside the logarithms: silence gives log10(eps), not -inf.
LOG_FLOOR = torch.finfo(torch.float32).eps


class LFCC(nn.Module):
    """Linear-frequency cepstral coefficients with deltas: (B, T) -> (B, 1 + T // hop_length, 3 * n_coefficients).

    Fixed transforms (window, filterbank, DCT) are non-persistent buffers, so they follow the model
    across devices without entering the state dict. The filterbank places the kept FFT bins at
    ``linspace(0, max_freq * sample_rate / 2, n_bins)``, as the baseline does (for its 256 of 513
    bins this is 0.4 % wider than the bins' true frequencies), so its trained weights see the same
    features.
    """

    # Buffers: the (frame_length,) window, the (n_bins, n_filters) filterbank and the
    # (n_filters, n_coefficients) DCT.
    window: Tensor
    filterbank: Tensor
    dct: Tensor

    def __init__(
        self,
        *,
        frame_length: int = 320,
        hop_length: int = 160,
        n_fft: int = 1024,
        n_filters: int = 20,
        n_coefficients: int = 20,
        max_freq: float = 0.5,
        preemphasis: float = 0.97,
        energy: bool = True,
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        if not 0.0 < max_freq <= 1.0:
            raise ValueError(f"max_freq is a fraction of Nyquist in (0, 1]; got {max_freq}")
        if not 1 <= n_coefficients <= n_filters:
            raise ValueError(f"n_coefficients must be in [1, n_filters={n_filters}]; got {n_coefficients}")
        if frame_length > n_fft:
            raise ValueError(f"frame_length {frame_length} exceeds n_fft {n_fft}")
        self.frame_length, self.hop_length, self.n_fft = frame_length, hop_length, n_fft
        self.preemphasis, self.energy = preemphasis, energy
        self.n_bins = int(max_freq * (n_fft // 2 + 1))
        self.register_buffer("window", torch.hamming_window(frame_length), persistent=False)
        filterbank = _triangular_filterbank(self.n_bins, n_filters, max_freq * sample_rate / 2)
        self.register_buffer("filterbank", filterbank, persistent=False)
        self.register_buffer("dct", _dct_matrix(n_filters)[:n_coefficients].T.contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([x[:, :1], x[:, 1:] - self.preemphasis * x[:, :-1]], dim=1)
        spectrum = torch.stft(
            x,
            self.n_fft,
            self.hop_length,
            self.frame_length,
            self.window.to(x.dtype),
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spectrum[:, : self.n_bins].abs().square().transpose(1, 2)
        cepstra = torch.log10(power @ self.filterbank.to(x.dtype) + LOG_FLOOR) @ self.dct.to(x.dtype)
        if self.energy:
            log_energy = torch.log10(power.sum(dim=2, keepdim=True) / self.n_fft + LOG_FLOOR)
            cepstra = torch.cat([log_energy, cepstra[:, :, 1:]], dim=2)
        deltas = _delta(cepstra)
        return torch.cat([cepstra, deltas, _delta(deltas)], dim=2)


class MaxFeatureMap(nn.Module):
    """Max-feature-map: the element-wise maximum of the first and second halves of the channels, a
    competitive activation that halves the width (Wu et al., Light CNN)."""

    def forward(self, x: Tensor) -> Tensor:
        first, second = x.chunk(2, dim=1)
        return torch.where(first >= second, first, second)  # torch.maximum splits ties in backward: slower


class LFCCLCNN(FromConfig, nn.Module):
    """The ASVspoof 2021 LFCC-LCNN baseline: (B, T) 16 kHz audio -> (embedding (B, 96), logits (B, 2)).

    ``T`` must be at least :attr:`min_samples` (2400 with the defaults, 0.15 s): the four 2x2 pools
    need 16 frames. The embedding is the frame-averaged BLSTM-plus-skip vector before the output layer.

    Parameter names map onto the baseline's ``Model`` (see :meth:`load_baseline_state_dict`):
    ``transform.{i}`` is its ``m_transform.0.{i}`` (same layer indices), ``blstm.{i}`` its
    ``m_before_pooling.0.{i}.l_blstm``, ``output`` its ``m_output_act.0``.
    """

    def __init__(
        self,
        *,
        frame_length: int = 320,
        hop_length: int = 160,
        n_fft: int = 1024,
        n_filters: int = 20,
        n_coefficients: int = 20,
        max_freq: float = 0.5,
        preemphasis: float = 0.97,
        energy: bool = True,
        dropout: float = 0.7,
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        if 3 * n_coefficients < 16:
            raise ValueError(f"the four 2x2 pools need 3 * n_coefficients >= 16; got {n_coefficients}")
        self.lfcc = LFCC(
            frame_length=frame_length,
            hop_length=hop_length,
            n_fft=n_fft,
            n_filters=n_filters,
            n_coefficients=n_coefficients,
            max_freq=max_freq,
            preemphasis=preemphasis,
            energy=energy,
            sample_rate=sample_rate,
        )
        self.transform = nn.Sequential(
            *_conv_mfm(1, 32, 5),
            nn.MaxPool2d(2),
            *_conv_mfm(32, 32, 1),
            _norm(32),
            *_conv_mfm(32, 48, 3),
            nn.MaxPool2d(2),
            _norm(48),
            *_conv_mfm(48, 48, 1),
            _norm(48),
            *_conv_mfm(48, 64, 3),
            nn.MaxPool2d(2),
            *_conv_mfm(64, 64, 1),
            _norm(64),
            *_conv_mfm(64, 32, 3),
            _norm(32),
            *_conv_mfm(32, 32, 1),
            _norm(32),
            *_conv_mfm(32, 32, 3),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
        )
        width = 32 * (3 * n_coefficients // 16)
        self.blstm = nn.ModuleList(nn.LSTM(width, width // 2, bidirectional=True, batch_first=True) for _ in range(2))
        self.output = nn.Linear(width, 1)
        self.min_samples = 15 * hop_length

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] < self.min_samples:
            raise ValueError(f"LFCCLCNN takes (B, T) audio with T >= {self.min_samples}; got {tuple(x.shape)}")
        h = self.transform(self.lfcc(x).unsqueeze(1))
        h = h.permute(0, 2, 1, 3).flatten(2)
        recurrent = h
        for lstm in self.blstm:
            recurrent, _ = lstm(recurrent)
        embedding = (recurrent + h).mean(dim=1)
        score = self.output(embedding)
        return embedding, torch.cat([torch.zeros_like(score), score], dim=1)

    def load_baseline_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a checkpoint of the baseline's ``Model``, renaming its keys to these and dropping its
        fixed front-end tensors and unused input/output normalisation statistics."""
        renamed: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            key = key.removeprefix("module.")
            if key.startswith("m_frontend.") or key in {"input_mean", "input_std", "output_mean", "output_std"}:
                continue
            key = re.sub(r"^m_transform\.0\.", "transform.", key)
            key = re.sub(r"^m_before_pooling\.0\.(\d+)\.l_blstm\.", r"blstm.\1.", key)
            key = re.sub(r"^m_output_act\.0\.", "output.", key)
            renamed[key] = value
        self.load_state_dict(renamed)


def _conv_mfm(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    """A same-size convolution to twice ``out_channels``, then MFM down to ``out_channels``."""
    return [nn.Conv2d(in_channels, 2 * out_channels, kernel_size, padding=kernel_size // 2), MaxFeatureMap()]


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=False)


def _triangular_filterbank(n_bins: int, n_filters: int, top_hz: float) -> Tensor:
    """(n_bins, n_filters) triangles with equally spaced corners over ``[0, top_hz]``, each peaking
    at 1 on its centre and reaching 0 on its neighbours' centres."""
    freqs = torch.linspace(0.0, top_hz, n_bins, dtype=torch.float64)
    corners = torch.linspace(0.0, top_hz, n_filters + 2, dtype=torch.float64)
    low, centre, high = corners[:-2], corners[1:-1], corners[2:]
    rising = (freqs[:, None] - low) / (centre - low)
    falling = (high - freqs[:, None]) / (high - centre)
    return torch.minimum(rising, falling).clamp(min=0.0).float()


def _dct_matrix(n: int) -> Tensor:
    """The orthonormal DCT-II matrix, row ``k`` holding basis function ``k``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi * k * (2 * torch.arange(n, dtype=torch.float64) + 1) / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


def _delta(x: Tensor) -> Tensor:
    """``x[t + 1] - x[t - 1]`` along frames (dim 1), repeating the first and last frames."""
    padded = torch.cat([x[:, :1], x, x[:, -1:]], dim=1)
    return padded[:, 2:] - padded[:, :-2]
