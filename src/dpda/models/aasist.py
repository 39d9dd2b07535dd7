"""AASIST: spectro-temporal graph attention on raw audio (Jung et al., ICASSP 2022).

The pieces, in the order data flows through them:

- :class:`SincConv`: fixed mel-spaced band-pass filters on the waveform (not trained);
- :class:`Residual2DEncoder`: six residual 2-D convolution blocks on the (filter, time) map;
- :class:`GraphLayers`: spectral and temporal graph attention (GAT), two branches of
  heterogeneous stacking graph attention (HS-GAL) with a master node, graph pooling, a readout
  (max of abs and mean of the nodes of each type, plus the master node) and a linear output;
  :class:`GraphBackEnd` is these layers on their own, node sets in;
- :class:`AASIST`: the three above, as clovaai/aasist builds them;
- :class:`XLSRAASISTBackEnd`: the same encoder and graph back-end on self-supervised features,
  as in SSL_Anti-spoofing (Tak et al., Odyssey 2022) and the dual-path paper's ``nets/aasist.py``.

Parameter and buffer names are those of the published code, so that published state dicts load
with ``strict=True`` and no renaming. That is why the graph layers live at the top level of
``AASIST`` (``GAT_layer_S``, ``pos_S``, ``master1``, ...): both models *are*
:class:`GraphLayers` with their own front-end added, instead of holding them as a child.
The same constraint explains the one-element ``nn.Sequential`` around each residual block
(keys ``encoder.{i}.0.*``) and the Sequential indices of ``attention`` in the SSL back-end.

Both models return ``(embedding, logits)``: the readout (B, 5 * gat_dims[1]) after its dropout,
which is what the output layer sees, and logits (B, 2) with index 1 = bona fide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpda.models.options import checked_options

#: clovaai's ``config/AASIST.conf`` ``model_config`` (the published AASIST.pth, 297,866 parameters).
AASIST_CONFIG: dict[str, Any] = {
    "nb_samp": 64600,
    "first_conv": 128,
    "filts": [70, [1, 32], [32, 32], [32, 64], [64, 64]],
    "gat_dims": [64, 32],
    "pool_ratios": [0.5, 0.7, 0.5, 0.5],
    "temperatures": [2.0, 2.0, 100.0, 100.0],
}

#: clovaai's ``config/AASIST-L.conf`` ``model_config`` (the light model, 85,306 parameters).
AASIST_L_CONFIG: dict[str, Any] = {
    "nb_samp": 64600,
    "first_conv": 128,
    "filts": [70, [1, 32], [32, 32], [32, 24], [24, 24]],
    "gat_dims": [24, 32],
    "pool_ratios": [0.4, 0.5, 0.7, 0.5],
    "temperatures": [2.0, 2.0, 100.0, 100.0],
}

#: Encoder widths of the SSL back-end: 128 projected feature bins, then the AASIST blocks.
XLSR_FILTS: tuple[Any, ...] = (128, (1, 32), (32, 32), (32, 64), (64, 64))


# ------------------------------------------------------------------------------------------
# Front-end
# ------------------------------------------------------------------------------------------
def _hz_to_mel(hz: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class SincConv(nn.Module):
    """Fixed bank of Hamming-windowed ideal band-pass filters, mel-spaced from 0 to Nyquist.

    Unlike SincNet the cut-off frequencies are not learnt (AASIST keeps them fixed), so the
    filters are a non-persistent buffer: they follow ``.to(device)`` but are not part of the
    state dict, as in the published checkpoints. An even ``kernel_size`` is made odd so that
    each filter is symmetric (128 gives 129 taps).
    """

    band_pass: Tensor  # (out_channels, 1, kernel_size), a buffer

    def __init__(self, out_channels: int, kernel_size: int, sample_rate: int = 16000) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.kernel_size = kernel_size + 1 - kernel_size % 2
        self.sample_rate = sample_rate
        nyquist = torch.tensor(sample_rate / 2, dtype=torch.float64)
        mel_edges = torch.linspace(0.0, float(_hz_to_mel(nyquist)), out_channels + 1, dtype=torch.float64)
        edges = _mel_to_hz(mel_edges)
        half = (self.kernel_size - 1) // 2
        taps = torch.arange(-half, half + 1, dtype=torch.float64)

        def low_pass(cutoff: Tensor) -> Tensor:
            normalised = 2.0 * cutoff[:, None] / sample_rate
            return normalised * torch.sinc(normalised * taps)

        window = torch.hamming_window(self.kernel_size, periodic=False, dtype=torch.float64)
        filters = (low_pass(edges[1:]) - low_pass(edges[:-1])) * window
        self.register_buffer("band_pass", filters.float().unsqueeze(1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T) waveform -> (B, out_channels, T - kernel_size + 1) band-passed signals."""
        return F.conv1d(x.unsqueeze(1), self.band_pass)


# ------------------------------------------------------------------------------------------
# Encoder
# ------------------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """Two (2, 3) convolutions with a (1, 3)-convolution shortcut when the width changes.

    The published blocks compute ``bn1``/SELU on the input and then discard the result:
    ``conv1`` reads the raw input. That is reproduced here, since the released weights were
    trained that way. ``bn1`` exists only so that checkpoints load; its parameters never get a
    gradient in the original either, so they are frozen (``requires_grad=False``), which keeps
    them out of optimisers' and gradient aligners' way without changing any update.
    ``time_pooling`` adds AASIST's (1, 3) max pooling over time; the SSL back-end has none.
    """

    def __init__(self, in_channels: int, out_channels: int, first: bool, time_pooling: bool) -> None:
        super().__init__()
        if not first:
            self.bn1 = nn.BatchNorm2d(in_channels)
            self.bn1.requires_grad_(False)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=(2, 3), padding=(1, 1))
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=(2, 3), padding=(0, 1))
        self.conv_downsample = (
            nn.Conv2d(in_channels, out_channels, kernel_size=(1, 3), padding=(0, 1))
            if in_channels != out_channels
            else None
        )
        self.time_pooling = time_pooling

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W), or W // 3 with time pooling."""
        out = self.conv2(F.selu(self.bn2(self.conv1(x))))  # (2, 3) kernels: H + 1, then H
        shortcut = x if self.conv_downsample is None else self.conv_downsample(x)
        out = out + shortcut
        return F.max_pool2d(out, (1, 3)) if self.time_pooling else out


class Residual2DEncoder(nn.Sequential):
    """AASIST's encoder: blocks for ``widths[0..3]``, then ``widths[3]`` twice more (six in all).

    ``widths`` are (in, out) channel pairs, ``filts[1:]`` of a clovaai configuration. Each block
    sits in a one-element ``nn.Sequential`` so that keys read ``encoder.{i}.0.*`` as published.
    """

    def __init__(self, widths: Sequence[Sequence[int]], time_pooling: bool) -> None:
        pairs = [tuple(int(c) for c in pair) for pair in widths]
        if len(pairs) != 4 or any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"encoder widths must be four [in, out] pairs, got {widths!r}")
        if pairs[0][0] != 1:
            raise ValueError(f"the encoder reads one input channel, so filts[1][0] must be 1, got {list(pairs[0])!r}")
        pairs += [pairs[-1]] * 2
        for previous, current in pairwise(pairs):
            if previous[1] != current[0]:
                raise ValueError(f"encoder widths do not chain: {list(previous)} then {list(current)}")
        super().__init__(
            *(
                nn.Sequential(ResidualBlock(c_in, c_out, first=index == 0, time_pooling=time_pooling))
                for index, (c_in, c_out) in enumerate(pairs)
            )
        )
        self.out_channels = pairs[-1][1]


# ------------------------------------------------------------------------------------------
# Graph layers
# ------------------------------------------------------------------------------------------
def _xavier_column(dim: int) -> nn.Parameter:
    """An attention vector (dim, 1), Xavier-normal as published."""
    weight = torch.empty(dim, 1)
    nn.init.xavier_normal_(weight)
    return nn.Parameter(weight)


def _node_batch_norm(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """BatchNorm with every node of every graph as one sample: (B, N, D) -> (B, N, D)."""
    return bn(x.reshape(-1, x.shape[-1])).view_as(x)


def _aggregate(scores: Tensor, x: Tensor) -> Tensor:
    """Each node's new value: the softmax over its edge scores (B, N, N) weighting all nodes."""
    return torch.matmul(scores.softmax(dim=-1), x)


class GraphAttentionLayer(nn.Module):
    """Graph attention over a fully connected graph of one node type (GAT-S or GAT-T).

    An edge's score is ``tanh(att_proj(h_i * h_j)) . att_weight / temperature``; the output is
    ``proj_with_att(attended) + proj_without_att(h)``, node-wise BatchNorm and SELU.
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float) -> None:
        super().__init__()
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_weight = _xavier_column(out_dim)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(0.2)
        self.temperature = temperature

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, in_dim) -> (B, N, out_dim)."""
        x = self.input_drop(x)
        pairs = torch.tanh(self.att_proj(x.unsqueeze(2) * x.unsqueeze(1)))  # (B, N, N, out)
        scores = torch.matmul(pairs, self.att_weight).squeeze(-1) / self.temperature
        out = self.proj_with_att(_aggregate(scores, x)) + self.proj_without_att(x)
        return F.selu(_node_batch_norm(self.bn, out))


class HeteroGraphAttentionLayer(nn.Module):
    """HS-GAL: attention over the union of two node types, with a master node that reads all.

    Each type first gets its own linear map (``proj_type1``/``proj_type2``). Edge scores use
    ``att_weight11`` within type 1, ``att_weight22`` within type 2 and ``att_weight12`` across
    types (both directions). The master node attends to every node through its own projections
    (``att_projM``, ``att_weightM``, ``proj_with_attM``, ``proj_without_attM``) and, unlike the
    nodes, is not normalised or activated.
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float) -> None:
        super().__init__()
        self.proj_type1 = nn.Linear(in_dim, in_dim)
        self.proj_type2 = nn.Linear(in_dim, in_dim)
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_projM = nn.Linear(in_dim, out_dim)
        self.att_weight11 = _xavier_column(out_dim)
        self.att_weight22 = _xavier_column(out_dim)
        self.att_weight12 = _xavier_column(out_dim)
        self.att_weightM = _xavier_column(out_dim)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.proj_with_attM = nn.Linear(in_dim, out_dim)
        self.proj_without_attM = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(0.2)
        self.temperature = temperature

    def forward(self, x1: Tensor, x2: Tensor, master: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Nodes (B, N1, in), (B, N2, in) and master (B, 1, in) -> the same with out_dim."""
        n1, n2 = x1.shape[1], x2.shape[1]
        x = self.input_drop(torch.cat([self.proj_type1(x1), self.proj_type2(x2)], dim=1))

        pairs = torch.tanh(self.att_proj(x.unsqueeze(2) * x.unsqueeze(1)))  # (B, N, N, out)
        weights = torch.cat([self.att_weight11, self.att_weight22, self.att_weight12], dim=1)
        node_type = torch.cat([x.new_zeros(n1, dtype=torch.long), x.new_ones(n2, dtype=torch.long)])
        block = torch.where(node_type[:, None] == node_type[None, :], node_type[:, None], 2)  # (N, N)
        all_scores = torch.matmul(pairs, weights)  # (B, N, N, 3): one column per weight vector
        scores = all_scores.gather(-1, block.expand(x.shape[0], -1, -1).unsqueeze(-1)).squeeze(-1)
        scores = scores / self.temperature

        master_scores = torch.matmul(torch.tanh(self.att_projM(x * master)), self.att_weightM)
        master_attention = (master_scores / self.temperature).softmax(dim=1)  # (B, N, 1) over nodes
        attended = torch.matmul(master_attention.transpose(1, 2), x)  # (B, 1, in)
        master = self.proj_with_attM(attended) + self.proj_without_attM(master)

        out = self.proj_with_att(_aggregate(scores, x)) + self.proj_without_att(x)
        out = F.selu(_node_batch_norm(self.bn, out))
        return out[:, :n1], out[:, n1:], master


class GraphPool(nn.Module):
    """Keeps the ``ratio`` best-scoring nodes (at least one), each scaled by its sigmoid score."""

    def __init__(self, ratio: float, in_dim: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.ratio = ratio
        self.proj = nn.Linear(in_dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        """(B, N, D) -> (B, max(int(N * ratio), 1), D), best scores first."""
        scores = torch.sigmoid(self.proj(self.drop(h)))  # (B, N, 1)
        keep = kept_nodes(h, self.ratio)
        index = scores.sort(dim=1, descending=True).indices[:, :keep].expand(-1, -1, h.shape[-1])
        return torch.gather(h * scores, 1, index)


def kept_nodes(h: Tensor, ratio: float) -> int | Tensor:
    """How many of ``h``'s nodes (dim 1) a pool keeps: ``max(int(N * ratio), 1)`` in float64, as
    the published code computes it (an integer form keeps one node more for some N, e.g. 90 at 0.7).

    While tracing (``torch.jit.trace``, the TorchScript-based ONNX export) the count is computed in
    the graph from the input's shape, so that an exported model keeps the right number at every
    length instead of the example's; a one-element float64 tensor because that exporter computes
    a scalar constant in float32."""
    if not torch.jit.is_tracing():
        return max(int(h.shape[1] * ratio), 1)
    nodes = torch._shape_as_tensor(h)[1:2].double()
    return (nodes * torch.full((1,), ratio, dtype=torch.float64)).floor().clamp(min=1).long()[0]


class GraphLayers(nn.Module):
    """AASIST's graph back-end, from spectral and temporal node sets to (embedding, logits).

    Layout (clovaai names): ``pos_S`` is added to the spectral nodes; ``GAT_layer_S``/``_T`` and
    ``pool_S``/``_T`` refine and prune each type; two independent branches (``*1`` and ``*2``),
    each HS-GAL -> pooling -> HS-GAL added residually and starting from its own learnt master
    node (``master1``, ``master2``), are merged by an element-wise max; the readout
    concatenates max |node| and mean node of the temporal then spectral type, and the master
    node, and ``out_layer`` maps it to two logits.

    ``pool_ratios`` and ``temperatures`` have four entries as in the published configurations;
    entry 0 is for the spectral GAT/pool, 1 for the temporal ones, 2 for all HS-GAL layers and
    their pools, and entry 3 is unused (as published).
    Subclasses add a forward: :class:`GraphBackEnd` takes the node sets, the models a front-end
    that makes them; each calls :meth:`graph`.
    """

    def __init__(
        self,
        node_dim: int,
        spectral_nodes: int,
        gat_dims: Sequence[int],
        pool_ratios: Sequence[float],
        temperatures: Sequence[float],
    ) -> None:
        super().__init__()
        if len(gat_dims) != 2:
            raise ValueError(f"gat_dims must have 2 entries, got {list(gat_dims)}")
        if len(pool_ratios) != 4 or len(temperatures) != 4:
            raise ValueError(
                f"pool_ratios and temperatures must have 4 entries, got {list(pool_ratios)} and {list(temperatures)}"
            )
        gat, hetero = int(gat_dims[0]), int(gat_dims[1])
        self.pos_S = nn.Parameter(torch.randn(1, spectral_nodes, node_dim))
        self.master1 = nn.Parameter(torch.randn(1, 1, gat))
        self.master2 = nn.Parameter(torch.randn(1, 1, gat))
        self.GAT_layer_S = GraphAttentionLayer(node_dim, gat, temperatures[0])
        self.GAT_layer_T = GraphAttentionLayer(node_dim, gat, temperatures[1])
        self.HtrgGAT_layer_ST11 = HeteroGraphAttentionLayer(gat, hetero, temperatures[2])
        self.HtrgGAT_layer_ST12 = HeteroGraphAttentionLayer(hetero, hetero, temperatures[2])
        self.HtrgGAT_layer_ST21 = HeteroGraphAttentionLayer(gat, hetero, temperatures[2])
        self.HtrgGAT_layer_ST22 = HeteroGraphAttentionLayer(hetero, hetero, temperatures[2])
        self.pool_S = GraphPool(pool_ratios[0], gat)
        self.pool_T = GraphPool(pool_ratios[1], gat)
        self.pool_hS1 = GraphPool(pool_ratios[2], hetero)
        self.pool_hT1 = GraphPool(pool_ratios[2], hetero)
        self.pool_hS2 = GraphPool(pool_ratios[2], hetero)
        self.pool_hT2 = GraphPool(pool_ratios[2], hetero)
        self.drop = nn.Dropout(0.5)
        self.drop_way = nn.Dropout(0.2)
        self.out_layer = nn.Linear(5 * hetero, 2)
        self.embedding_dim = 5 * hetero

    def graph(self, spectral: Tensor, temporal: Tensor) -> tuple[Tensor, Tensor]:
        """Spectral nodes (B, spectral_nodes, node_dim), temporal (B, N_T, node_dim) -> outputs."""
        # the call order below matches the published code, so dropout draws line up too
        spectral = self.pool_S(self.GAT_layer_S(spectral + self.pos_S))
        temporal = self.pool_T(self.GAT_layer_T(temporal))
        batch = spectral.shape[0]
        t1, s1, m1 = self._branch(
            temporal, spectral, self.master1.expand(batch, -1, -1),
            self.HtrgGAT_layer_ST11, self.HtrgGAT_layer_ST12, self.pool_hS1, self.pool_hT1,
        )  # fmt: skip
        t2, s2, m2 = self._branch(
            temporal, spectral, self.master2.expand(batch, -1, -1),
            self.HtrgGAT_layer_ST21, self.HtrgGAT_layer_ST22, self.pool_hS2, self.pool_hT2,
        )  # fmt: skip
        t1, t2, s1, s2, m1, m2 = (self.drop_way(h) for h in (t1, t2, s1, s2, m1, m2))
        temporal, spectral, master = torch.maximum(t1, t2), torch.maximum(s1, s2), torch.maximum(m1, m2)
        embedding = torch.cat(
            [
                temporal.abs().amax(dim=1),
                temporal.mean(dim=1),
                spectral.abs().amax(dim=1),
                spectral.mean(dim=1),
                master.squeeze(1),
            ],
            dim=1,
        )
        embedding = self.drop(embedding)
        return embedding, self.out_layer(embedding)

    @staticmethod
    def _branch(
        temporal: Tensor,
        spectral: Tensor,
        master: Tensor,
        first: HeteroGraphAttentionLayer,
        second: HeteroGraphAttentionLayer,
        pool_spectral: GraphPool,
        pool_temporal: GraphPool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """HS-GAL, pool each type, then a second HS-GAL added residually."""
        temporal, spectral, master = first(temporal, spectral, master)
        spectral = pool_spectral(spectral)
        temporal = pool_temporal(temporal)
        temporal_aug, spectral_aug, master_aug = second(temporal, spectral, master)
        return temporal + temporal_aug, spectral + spectral_aug, master + master_aug


class GraphBackEnd(GraphLayers):
    """The graph back-end on its own: node sets in, ``(embedding, logits)`` out (see :class:`GraphLayers`)."""

    def forward(self, spectral: Tensor, temporal: Tensor) -> tuple[Tensor, Tensor]:
        """Spectral nodes (B, spectral_nodes, node_dim), temporal (B, N_T, node_dim) -> outputs."""
        return self.graph(spectral, temporal)


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------
class AASIST(GraphLayers):
    """AASIST on raw audio: (B, T) float32 at 16 kHz -> (embedding (B, 5 * gat_dims[1]), logits (B, 2)).

    The keyword arguments are the keys of clovaai's ``model_config``; ``AASIST(**AASIST_CONFIG)``
    and ``AASIST(**AASIST_L_CONFIG)`` are the published models. ``nb_samp`` is the training crop
    length (64600 samples, about 4 s) and does not shape the network: any T of at least
    :attr:`min_samples` works. ``filts[0]`` sinc filters, max-pooled by 3, give the
    ``filts[0] // 3`` spectral nodes (23) whose positions ``pos_S`` encodes.
    """

    def __init__(
        self,
        nb_samp: int = 64600,
        first_conv: int = 128,
        filts: Sequence[Any] = (70, (1, 32), (32, 32), (32, 64), (64, 64)),
        gat_dims: Sequence[int] = (64, 32),
        pool_ratios: Sequence[float] = (0.5, 0.7, 0.5, 0.5),
        temperatures: Sequence[float] = (2.0, 2.0, 100.0, 100.0),
    ) -> None:
        if len(filts) != 5:
            raise ValueError(f"filts must be [n_sinc_filters, 4 x [in, out]], got {filts!r}")
        encoder = Residual2DEncoder(filts[1:], time_pooling=True)
        super().__init__(encoder.out_channels, int(filts[0]) // 3, gat_dims, pool_ratios, temperatures)
        self.nb_samp = nb_samp
        self.conv_time = SincConv(int(filts[0]), first_conv)
        self.first_bn = nn.BatchNorm2d(1)
        self.encoder = encoder

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AASIST:
        """Build from a clovaai ``model_config`` dict; unknown keys are an error.

        The ``architecture`` entry those dicts carry is accepted when it names AASIST.
        """
        keys = dict(config)
        architecture = keys.pop("architecture", "AASIST")
        if architecture != "AASIST":
            raise ValueError(f"model_config names architecture {architecture!r}, not 'AASIST'")
        return cls(**checked_options(cls, keys, "AASIST config"))

    @property
    def min_samples(self) -> int:
        """Shortest input: the sinc taps, then a pool by 3 in front and in each of the six blocks."""
        return self.conv_time.kernel_size - 1 + 3 ** (1 + len(self.encoder))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) audio -> (embedding, logits); logit 1 is bona fide."""
        if x.dim() != 2:
            raise ValueError(f"AASIST expects audio of shape (B, T), got {tuple(x.shape)}")
        if x.shape[1] < self.min_samples:
            raise ValueError(f"AASIST needs at least {self.min_samples} samples, got {x.shape[1]}")
        x = self.conv_time(x).unsqueeze(1).abs()  # (B, 1, filters, time)
        x = F.selu(self.first_bn(F.max_pool2d(x, (3, 3))))
        e = self.encoder(x)  # (B, C, spectral nodes, time nodes)
        spectral = e.abs().amax(dim=3).transpose(1, 2)
        temporal = e.abs().amax(dim=2).transpose(1, 2)
        return self.graph(spectral, temporal)


class XLSRAASISTBackEnd(GraphLayers):
    """SSL_Anti-spoofing's AASIST back-end: SSL features (B, frames, ssl_dim) -> (embedding, logits).

    ``LL`` projects each frame to ``filts[0]`` (128) bins; the (1, bins, frames) map is
    max-pooled by (3, 3) and goes through ``first_bn`` + SELU, the residual encoder *without*
    time pooling, ``first_bn1`` + SELU, then ``attention`` (1x1 conv, SELU, BatchNorm, 1x1
    conv) gives weights whose softmax over time (over frequency) pools the map into the
    ``filts[0] // 3`` (42) spectral (the temporal) nodes of the graph back-end. Frames must be
    at least 3. The defaults are the published hyperparameters.

    Parameter names are those of the paper's ``nets/aasist.py`` ``Model`` (``LL``, ``first_bn``,
    ``first_bn1``, ``encoder.{i}.0.*``, ``attention.{0,2,3}.*``, ``pos_S``, ``master1``,
    ``master2``, ``GAT_layer_S``/``_T``, ``HtrgGAT_layer_ST11``..``ST22``, ``pool_S``, ``pool_T``,
    ``pool_hS1``..``pool_hT2``, ``out_layer``): a released checkpoint's keys minus those under
    ``ssl_model.`` (and any ``module.`` prefix) load here unchanged.
    """

    def __init__(
        self,
        ssl_dim: int = 1024,
        filts: Sequence[Any] = XLSR_FILTS,
        gat_dims: Sequence[int] = (64, 32),
        pool_ratios: Sequence[float] = (0.5, 0.5, 0.5, 0.5),
        temperatures: Sequence[float] = (2.0, 2.0, 100.0, 100.0),
    ) -> None:
        if len(filts) != 5:
            raise ValueError(f"filts must be [n_bins, 4 x [in, out]], got {filts!r}")
        encoder = Residual2DEncoder(filts[1:], time_pooling=False)
        channels = encoder.out_channels
        super().__init__(channels, int(filts[0]) // 3, gat_dims, pool_ratios, temperatures)
        self.LL = nn.Linear(ssl_dim, int(filts[0]))
        self.first_bn = nn.BatchNorm2d(1)
        self.encoder = encoder
        self.first_bn1 = nn.BatchNorm2d(channels)
        hidden = 2 * channels  # 128 as published
        self.attention = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.SELU(),
            nn.BatchNorm2d(hidden),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(B, frames, ssl_dim) features -> (embedding, logits); logit 1 is bona fide."""
        x = self.LL(features).transpose(1, 2).unsqueeze(1)  # (B, 1, bins, frames)
        x = F.selu(self.first_bn(F.max_pool2d(x, (3, 3))))
        x = F.selu(self.first_bn1(self.encoder(x)))
        weights = self.attention(x)
        spectral = (x * weights.softmax(dim=-1)).sum(dim=-1).transpose(1, 2)
        temporal = (x * weights.softmax(dim=-2)).sum(dim=-2).transpose(1, 2)
        return self.graph(spectral, temporal)


__all__ = [
    "AASIST",
    "AASIST_CONFIG",
    "AASIST_L_CONFIG",
    "XLSR_FILTS",
    "GraphAttentionLayer",
    "GraphBackEnd",
    "GraphLayers",
    "GraphPool",
    "HeteroGraphAttentionLayer",
    "Residual2DEncoder",
    "ResidualBlock",
    "SincConv",
    "XLSRAASISTBackEnd",
]
