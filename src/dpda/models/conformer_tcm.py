"""XLSR-Conformer-TCM back-end: SSL frame features in, ``(embedding, logits)`` out.

The Conformer of Truong et al. (Interspeech 2024) whose self-attention is the temporal-channel
modelling (TCM) variant: besides the frames and the class token, every attention layer sees one
extra "head token" per head, a summary of that head's channel slice averaged over time, and the
class token's output then absorbs the mean of the head tokens and of the frame tokens. This lets
the class token model channel-wise (per-head) context, not only temporal context.

The module and parameter names follow the reference code (github.com/ductuantruong/dpda_ga,
``nets/conformer_tcm.py`` and ``nets/conformer.py``) so that a released checkpoint's back-end
part loads key by key once its ``ssl_model.`` entries are dropped. The back-end's state dict:

* ``LL.{weight,bias}``: SSL dimension -> ``emb_size``
* ``first_bn.{weight,bias,running_mean,running_var,num_batches_tracked}``: ``BatchNorm2d(1)``
* ``conformer.positional_emb``: fixed sinusoidal table ``(1, 10000, emb_size)``, a frozen
  ``nn.Parameter`` as in the reference code: an optimizer that holds it only moves it by weight
  decay on a zero gradient, which the paper's aligners hand it (``dualpath.zero_missing_grads``)
* ``conformer.class_token`` ``(1, emb_size)``; ``conformer.fc5.{weight,bias}``: the classifier
* ``conformer.encoder_blocks.<i>.`` followed by

  - ``ff1.fn.norm.*``, ``ff1.fn.fn.net.0.*``, ``ff1.fn.fn.net.3.*`` (and the same for ``ff2``):
    half-step feed-forward modules, pre-norm, scaled by 0.5
  - ``attn.norm.*``, ``attn.fn.{qkv.weight, proj.*, ht_proj.*, ht_norm.*, pos_embed}``: TCM
  - ``conv.net.0.*`` (LayerNorm), ``conv.net.2.*`` (pointwise conv), ``conv.net.4.conv.*``
    (depthwise conv), ``conv.net.5.*`` (BatchNorm1d), ``conv.net.7.*`` (pointwise conv)
  - ``post_norm.*``
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpda.models.projected import ProjectedBackEnd

#: Rows of the stored sinusoidal table; longer inputs get a table computed on the fly.
POSITION_TABLE_ROWS = 10000


def sinusoidal_positions(n_positions: int, dim: int) -> Tensor:
    """``(1, n_positions, dim)`` sinusoids: sine on even channels, cosine on odd ones.

    Channel pairs ``(2i, 2i + 1)`` share the frequency ``10000 ** (-2i / dim)``. The angles are
    formed in float64 and rounded to float32 before the sine, as in the reference table.
    """
    position = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)
    pair = torch.arange(dim, dtype=torch.float64) // 2
    angle = (position / 10000 ** (2 * pair / dim)).float()
    table = torch.empty_like(angle)
    table[:, 0::2] = angle[:, 0::2].sin()
    table[:, 1::2] = angle[:, 1::2].cos()
    return table.unsqueeze(0)


class Scale(nn.Module):
    """``fn(x) * scale``: the Macaron half-step of the feed-forward modules."""

    def __init__(self, scale: float, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) * self.scale


class PreNorm(nn.Module):
    """LayerNorm, then ``fn``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    """Linear (``mult`` times wider), Swish, Linear; ``net`` indices match the reference."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TCMAttention(nn.Module):
    """Multi-head self-attention with one learned head token per head (the TCM module).

    Token 0 of the input must be the class token. For head ``h`` the head token is built from
    the time-average of that head's ``dim_head`` channels: ``ht_proj`` lifts it to ``dim``, the
    result is split into ``heads`` slices of ``dim_head`` that are layer-normalised (``ht_norm``)
    and GELU-activated, and ``pos_embed[h]`` is added. The ``heads`` head tokens join the
    sequence for ordinary attention; afterwards they are dropped, and the class token's output
    gains the mean of the head-token outputs plus the mean of the frame outputs.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"emb_size {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dim_head = dim // heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.act = nn.GELU()
        self.ht_proj = nn.Linear(self.dim_head, dim)
        self.ht_norm = nn.LayerNorm(self.dim_head)
        self.pos_embed = nn.Parameter(torch.zeros(1, heads, dim))

    def forward(self, x: Tensor) -> Tensor:
        batch, n_tokens, dim = x.shape
        heads, dim_head = self.heads, self.dim_head
        summary = x.view(batch, n_tokens, heads, dim_head).mean(dim=1)  # (B, heads, dim_head)
        head_tokens = self.ht_proj(summary).view(batch, heads, heads, dim_head)
        head_tokens = self.act(self.ht_norm(head_tokens)).flatten(2) + self.pos_embed
        tokens = torch.cat([x, head_tokens], dim=1)

        q, k, v = self.qkv(tokens).view(batch, n_tokens + heads, 3, heads, dim_head).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        mixed = self.proj(mixed.transpose(1, 2).reshape(batch, n_tokens + heads, dim))

        cls, frames, head_out = mixed.split([1, n_tokens - 1, heads], dim=1)
        cls = cls + head_out.mean(dim=1, keepdim=True) + frames.mean(dim=1, keepdim=True)
        return self.proj_drop(torch.cat([cls, frames], dim=1))


class Transpose(nn.Module):
    """Swap the time and channel axes (``(B, N, C)`` <-> ``(B, C, N)``) inside a Sequential."""

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)


class DepthwiseConv1d(nn.Module):
    """Per-channel convolution, zero-padded so the output keeps the input length."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        left = kernel_size // 2
        self.padding = (left, left - (kernel_size + 1) % 2)
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.padding))


class ConvModule(nn.Module):
    """LayerNorm, pointwise conv + GLU, depthwise conv, BatchNorm, Swish, pointwise conv."""

    def __init__(self, dim: int, expansion_factor: int = 2, kernel_size: int = 31, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * expansion_factor
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            Transpose(),
            nn.Conv1d(dim, 2 * inner, 1),
            nn.GLU(dim=1),
            DepthwiseConv1d(inner, kernel_size),
            nn.BatchNorm1d(inner),
            nn.SiLU(),
            nn.Conv1d(inner, dim, 1),
            Transpose(),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConformerBlock(nn.Module):
    """Half feed-forward, TCM attention, convolution, half feed-forward, each residual; LayerNorm."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ff_mult: int = 4,
        conv_expansion_factor: int = 2,
        conv_kernel_size: int = 31,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.ff1 = Scale(0.5, PreNorm(dim, FeedForward(dim, ff_mult, dropout)))
        self.attn = PreNorm(dim, TCMAttention(dim, heads, dropout))
        self.conv = ConvModule(dim, conv_expansion_factor, conv_kernel_size, dropout)
        self.ff2 = Scale(0.5, PreNorm(dim, FeedForward(dim, ff_mult, dropout)))
        self.post_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ff1(x)
        x = x + self.attn(x)
        x = x + self.conv(x)
        x = x + self.ff2(x)
        return self.post_norm(x)


class TCMConformer(nn.Module):
    """Positions added to the frames, class token prepended, Conformer blocks, class token -> fc5.

    Plays the part of the reference code's ``MyConformer`` (the ``conformer.`` keys).
    """

    def __init__(
        self,
        emb_size: int,
        heads: int,
        ff_mult: int,
        exp_fac: int,
        kernel_size: int,
        n_encoders: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.positional_emb = nn.Parameter(sinusoidal_positions(POSITION_TABLE_ROWS, emb_size), requires_grad=False)
        self.class_token = nn.Parameter(torch.rand(1, emb_size))
        self.encoder_blocks = nn.ModuleList(
            ConformerBlock(emb_size, heads, ff_mult, exp_fac, kernel_size, dropout) for _ in range(n_encoders)
        )
        self.fc5 = nn.Linear(emb_size, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n_frames = x.shape[1]
        if n_frames <= self.positional_emb.shape[1]:
            positions = self.positional_emb[:, :n_frames]
        else:
            positions = sinusoidal_positions(n_frames, x.shape[2]).to(x)
        x = x + positions
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.encoder_blocks:
            x = block(x)
        embedding = x[:, 0]
        return embedding, self.fc5(embedding)


class ConformerTCMBackEnd(ProjectedBackEnd):
    """XLSR-Conformer-TCM back-end.

    ``forward(features)`` takes SSL features ``(B, frames, ssl_dim)`` and returns
    ``(embedding, logits)``: the class token's final state ``(B, emb_size)`` and ``(B, 2)``
    logits, index 1 = bona fide. The features are projected (``LL``), normalised by a
    single-channel BatchNorm over all frames and channels (``first_bn``), passed through SELU and
    then through the TCM Conformer. Defaults are those of the reference code.
    """

    def __init__(
        self,
        *,
        ssl_dim: int = 1024,
        emb_size: int = 144,
        heads: int = 4,
        kernel_size: int = 31,
        n_encoders: int = 4,
        ff_mult: int = 4,
        exp_fac: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            ssl_dim, emb_size, TCMConformer(emb_size, heads, ff_mult, exp_fac, kernel_size, n_encoders, dropout)
        )
