"""XLSR-Mamba back-end: SSL frame features in, ``(embedding, logits)`` out.

The dual-column bidirectional Mamba of Xiao and Das (2024) as built by the reference code
(github.com/ductuantruong/dpda_ga, ``nets/mamba.py`` and ``nets/mamba_blocks.py``): one stack of
Mamba blocks reads the frames forwards, a second stack reads them reversed, each column ends in
a shared RMSNorm and its own attention pooling, and the two pooled vectors are concatenated,
projected and classified. The paper's ``num_mamba_encoders = 12`` means 6 blocks per column.

The Mamba (S6) mixer is written in plain PyTorch with the parameter names and shapes of
``mamba_ssm.modules.mamba_simple.Mamba``, so checkpoints trained with ``mamba_ssm`` load. The
selective scan runs as a chunked scan in plain PyTorch, or through ``mamba_ssm``'s CUDA kernel
when that package is installed and the tensors are on CUDA.

State-dict keys (the reference ``Model`` minus its ``ssl_model.`` entries):

* ``LL.{weight,bias}``, ``first_bn.*`` (``BatchNorm2d(1)``): the projection from the SSL features
* ``conformer.``: the mixer (the reference code names it so, though it is not a Conformer), with
  ``forward_layers.<i>.`` / ``backward_layers.<i>.`` + ``norm.weight`` and ``mixer.{A_log, D,
  in_proj.weight, conv1d.weight, conv1d.bias, x_proj.weight, dt_proj.weight, dt_proj.bias,
  out_proj.weight}``, then ``norm_f.weight``, ``f_attention_pool.*``, ``b_attention_pool.*``,
  ``LL.*`` (the column merge) and ``classifier.*``
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpda.models.projected import ProjectedBackEnd

ScanMethod = Literal["auto", "chunked", "sequential"]
SCAN_METHODS = ("auto", "chunked", "sequential")


def selective_scan_sequential(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The selective scan one step at a time: the plain definition, the reference for tests.

    ``u``, ``delta``: ``(batch, length, d_inner)``; ``A``: ``(d_inner, d_state)`` (negative);
    ``B``, ``C``: ``(batch, length, d_state)``; ``D``: ``(d_inner,)``. With the zero-order-hold
    decay ``exp(delta * A)`` and the Euler input ``delta * B * u`` the state follows
    ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t`` and the output is ``C_t h_t + D u_t``.
    """
    decay = torch.exp(delta.unsqueeze(-1) * A)  # (b, l, d, n)
    drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)
    decay_t, drive_t, C_t = decay.unbind(1), drive.unbind(1), C.unbind(1)
    state = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    # written into one tensor, not stacked from a list: the ONNX form of a scripted list has no types
    y = torch.empty_like(u)
    for t in range(len(decay_t)):
        state = torch.addcmul(drive_t[t], decay_t[t], state)
        y[:, t] = torch.einsum("bdn,bn->bd", state, C_t[t])
    return y + u * D


def selective_scan_chunked(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int | None = None
) -> Tensor:
    """The selective scan in about ``3 sqrt(length)`` vectorised steps instead of ``length``.

    Same arguments and result as :func:`selective_scan_sequential`. The sequence is cut into
    chunks (``chunk_size``, default ``ceil(sqrt(length))``), all advanced together:

    1. every chunk is scanned from a zero state to get its end state;
    2. a short scan over the chunks carries the true state into each one; a whole chunk decays
       by ``exp(A * sum(delta))``, its summed log-decay;
    3. every chunk is scanned again from its true starting state, reading out ``C h``.

    Only decays ``exp(negative)`` appear, so nothing overflows however large ``delta`` grows,
    and no ``(length x length)`` or per-chunk square tensors are formed: the work and memory are
    those of about two sequential scans, in far fewer (larger) operations, which is what costs
    on a CPU for a single utterance and for long ones.
    """
    batch, length, d_inner = u.shape
    d_state = A.shape[1]
    size = chunk_size or math.isqrt(length - 1) + 1
    n_chunks = -(-length // size)
    # Zero padding at the end (delta 0: decay 1, no input) leaves the real positions untouched.
    u, delta, B, C = (F.pad(t, (0, 0, 0, n_chunks * size - length)) for t in (u, delta, B, C))
    shape = (batch, n_chunks, size, d_inner, d_state)
    # unbind, not indexing, in the loops: an indexed slice's backward fills a full-size tensor.
    decay = torch.exp(delta.unsqueeze(-1) * A).view(shape).unbind(2)
    drive = ((delta * u).unsqueeze(-1) * B.unsqueeze(2)).view(shape).unbind(2)

    chunk_end = u.new_zeros(batch, n_chunks, d_inner, d_state)
    for decay_k, drive_k in zip(decay, drive):
        chunk_end = torch.addcmul(drive_k, decay_k, chunk_end)

    chunk_decay = torch.exp(delta.view(batch, n_chunks, size, d_inner).sum(dim=2).unsqueeze(-1) * A)
    carry = u.new_zeros(batch, d_inner, d_state)
    entering = []
    for decay_c, end_c in zip(chunk_decay.unbind(1), chunk_end.unbind(1)):
        entering.append(carry)
        carry = torch.addcmul(end_c, decay_c, carry)

    state = torch.stack(entering, dim=1)
    outputs = []
    for decay_k, drive_k, C_k in zip(decay, drive, C.view(batch, n_chunks, size, d_state).unbind(2)):
        state = torch.addcmul(drive_k, decay_k, state)
        outputs.append(torch.einsum("bcdn,bcn->bcd", state, C_k))
    y = torch.stack(outputs, dim=2).view(batch, n_chunks * size, d_inner)[:, :length]
    return y + u[:, :length] * D


@functools.lru_cache(maxsize=1)
def _cuda_kernel() -> Callable[..., Tensor] | None:
    """``mamba_ssm``'s CUDA selective scan, or ``None`` where the package is not installed."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError):
        return None
    return selective_scan_fn


@functools.lru_cache(maxsize=1)
def _scripted_sequential_scan() -> Callable[..., Tensor]:
    """:func:`selective_scan_sequential` compiled by ``torch.jit.script``, for tracing: a traced
    Python loop (or chunk count) is fixed at the example's length, a scripted loop runs as many
    times as each input has frames, so an exported detector scores every length."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        return torch.jit.script(selective_scan_sequential)


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, method: ScanMethod = "auto"
) -> Tensor:
    """Dispatch the selective scan; see :func:`selective_scan_sequential` for the arguments.

    ``"auto"`` uses the ``mamba_ssm`` CUDA kernel for CUDA tensors when it is installed and the
    chunked scan otherwise; while tracing (an export) every method is the scripted sequential
    scan. The scan runs in at least float32 (as the kernel does); the result has ``u``'s dtype.
    """
    if method not in SCAN_METHODS:
        raise ValueError(f"unknown scan method {method!r}; valid: {', '.join(SCAN_METHODS)}")
    dtype = u.dtype
    work = torch.promote_types(dtype, torch.float32)
    u, delta, A, B, C, D = (t.to(work) for t in (u, delta, A, B, C, D))
    kernel = _cuda_kernel() if method == "auto" and u.is_cuda else None
    if kernel is not None:
        u_, delta_, B_, C_ = (t.transpose(1, 2).contiguous() for t in (u, delta, B, C))  # length last
        y = kernel(u_, delta_, A.contiguous(), B_, C_, D).transpose(1, 2)
    elif torch.jit.is_tracing():
        y = _scripted_sequential_scan()(u, delta, A, B, C, D)
    elif method == "sequential":
        y = selective_scan_sequential(u, delta, A, B, C, D)
    else:
        y = selective_scan_chunked(u, delta, A, B, C, D)
    return y.to(dtype)


class Mamba(nn.Module):
    """The Mamba (S6) mixer: ``(B, L, d_model)`` -> ``(B, L, d_model)``, causal in time.

    Input projection into a signal and a gate; a causal depthwise convolution and SiLU on the
    signal; input-dependent ``delta`` (low rank, softplus), ``B`` and ``C``; the selective scan
    with the skip ``D``; gating by ``SiLU(gate)``; output projection. Parameters, shapes and
    initialisation are those of ``mamba_ssm``'s ``Mamba`` (``dt_rank = ceil(d_model / 16)``).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan: ScanMethod = "auto",
    ) -> None:
        super().__init__()
        if scan not in SCAN_METHODS:
            raise ValueError(f"unknown scan method {scan!r}; valid: {', '.join(SCAN_METHODS)}")
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.scan = scan
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self._init_delta(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_delta(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """Start with step sizes log-uniform in [dt_min, dt_max] and a variance-keeping weight."""
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = log_dt.exp().clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        signal, gate = self.in_proj(x).chunk(2, dim=-1)
        signal = self.act(self.conv1d(signal.transpose(1, 2))[..., :length].transpose(1, 2))
        dt, B, C = self.x_proj(signal).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        A = -torch.exp(self.A_log)
        y = selective_scan(signal, delta, A, B, C, self.D, method=self.scan)
        return self.out_proj(y * self.act(gate))


class MambaBlock(nn.Module):
    """Add the incoming residual, RMSNorm, Mamba; returns ``(mixer output, residual)``.

    The add-then-norm order of ``mamba_ssm``'s ``Block``; the residual stream is kept in float32.
    """

    def __init__(self, d_model: int, norm_eps: float, **mixer_options: Any) -> None:
        super().__init__()
        self.mixer = Mamba(d_model, **mixer_options)
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)

    def forward(self, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        residual = hidden if residual is None else hidden + residual
        residual = residual.to(torch.promote_types(residual.dtype, torch.float32))
        return self.mixer(self.norm(residual.to(self.norm.weight.dtype))), residual


class BiMambaMixer(nn.Module):
    """Two Mamba columns (forward and time-reversed), RMSNorm, attention pooling, merge, classifier.

    Plays the part of the reference code's ``MixerModel`` (the ``conformer.`` keys).

    ``reference_final_add`` (default ``True``) reproduces how the reference model computes (and
    how its released checkpoints were trained, on ``mamba_ssm``'s fused add+norm path): each
    column's final norm is applied to the column's *input* plus the residual stream entering its
    last block, so the last block of each column has no effect and receives no gradient. With
    ``False`` the columns end the textbook way, ``norm_f(last block output + residual)``.
    """

    def __init__(
        self,
        d_model: int,
        n_layer: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        norm_eps: float = 1e-5,
        dropout: float = 0.1,
        reference_final_add: bool = True,
        scan: ScanMethod = "auto",
    ) -> None:
        super().__init__()
        if n_layer < 1:
            raise ValueError(f"n_layer must be at least 1, got {n_layer}")
        self.reference_final_add = reference_final_add

        def new_block() -> MambaBlock:
            return MambaBlock(d_model, norm_eps, d_state=d_state, d_conv=d_conv, expand=expand, scan=scan)

        self.forward_layers = nn.ModuleList(new_block() for _ in range(n_layer))
        self.backward_layers = nn.ModuleList(new_block() for _ in range(n_layer))
        with torch.no_grad():  # GPT-2 style: residual branch outputs shrink with depth
            for block in [*self.forward_layers, *self.backward_layers]:
                block.mixer.out_proj.weight /= math.sqrt(n_layer)
        self.norm_f = nn.RMSNorm(d_model, eps=norm_eps)
        self.f_attention_pool = nn.Linear(d_model, 1)
        self.b_attention_pool = nn.Linear(d_model, 1)
        self.LL = nn.Linear(2 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, 2)

    def columns(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-frame outputs ``(B, L, d_model)`` of both columns (the backward one in reversed time)."""
        x = self.dropout(x)
        return self._column(self.forward_layers, x, x), self._column(self.backward_layers, x.flip(1), x)

    def _column(self, layers: nn.ModuleList, column_input: Tensor, x: Tensor) -> Tensor:
        active = layers[:-1] if self.reference_final_add else layers
        hidden, residual = column_input, None
        for block in active:
            hidden, residual = block(hidden, residual)
        stream = hidden if residual is None else hidden + residual
        if self.reference_final_add:
            stream = x + stream  # x in forward time order, also for the backward column
        return self.norm_f(stream.to(self.norm_f.weight.dtype))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        forward_frames, backward_frames = self.columns(x)
        pooled = [
            (F.softmax(pool(frames), dim=1).transpose(1, 2) @ frames).squeeze(1)
            for pool, frames in ((self.f_attention_pool, forward_frames), (self.b_attention_pool, backward_frames))
        ]
        embedding = self.LL(torch.cat(pooled, dim=1))
        return embedding, self.classifier(self.dropout(embedding))


class MambaBackEnd(ProjectedBackEnd):
    """XLSR-Mamba back-end.

    ``forward(features)`` takes SSL features ``(B, frames, ssl_dim)`` and returns
    ``(embedding, logits)``: the merged pooled columns ``(B, emb_size)`` (before the final
    dropout) and ``(B, 2)`` logits, index 1 = bona fide. The features are projected (``LL``),
    normalised by a single-channel BatchNorm (``first_bn``), passed through SELU, then through
    the bidirectional mixer with ``n_layers`` blocks per direction. Defaults are the reference
    code's (its ``num_mamba_encoders = 12`` is ``n_layers = 6``); ``reference_final_add`` is
    explained in :class:`BiMambaMixer`; ``scan`` picks the selective-scan implementation.
    """

    def __init__(
        self,
        *,
        ssl_dim: int = 1024,
        emb_size: int = 144,
        n_layers: int = 6,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        norm_eps: float = 1e-5,
        dropout: float = 0.1,
        reference_final_add: bool = True,
        scan: ScanMethod = "auto",
    ) -> None:
        super().__init__(
            ssl_dim,
            emb_size,
            BiMambaMixer(
                emb_size,
                n_layers,
                d_state=d_state,
                d_conv=d_conv,
                expand=expand,
                norm_eps=norm_eps,
                dropout=dropout,
                reference_final_add=reference_final_add,
                scan=scan,
            ),
        )
