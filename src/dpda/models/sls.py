"""XLSR-SLS back-end: every transformer layer's output in, ``(embedding, logits)`` out.

The Sensitive Layer Selection (SLS) classifier of Zhang, Wen and Hu, "Audio Deepfake Detection
with Self-Supervised XLS-R and SLS Classifier" (ACM Multimedia 2024; code:
github.com/QiShanZhang/SLSforADD). Instead of one hidden state of the front-end, it reads the
output of every transformer layer and weighs them per utterance:

1. each layer's output ``(frames, C)`` is averaged over time, ``fc0`` (``C -> 1``, shared by all
   layers) and a sigmoid give that layer's weight, so the weights depend on the input;
2. the layers are multiplied by their weights and summed: one ``(frames, C)`` map;
3. ``first_bn`` (``BatchNorm2d(1)``, over all frames and channels), SELU, a (3, 3) max pool
   and flattening give ``(frames // 3) * (C // 3)`` values (22,847 for XLS-R 300M's 201 frames
   of a 64,600-sample crop);
4. ``fc1`` (to ``hidden``, 1024) and SELU give the embedding; ``fc3`` (to 2), SELU and
   log-softmax give the logits, index 1 = bona fide.

Written from the paper and from what is known of its released ``model.py``; the code itself was
not at hand, so these readings are the plain ones and are stated here:

- the weights are sigmoids, each in (0, 1) and not normalised across layers (no softmax): the
  fused map is a weighted *sum*, not a mean;
- "every layer" is fairseq's ``layer_results``: the outputs of transformer layers 1..L (24 for
  XLS-R 300M), the last one *before* the encoder's final LayerNorm of a pre-norm model (that
  LayerNorm's weights then get no gradient, as in the paper code), not the CNN features that
  enter layer 1; taken by forward hooks on the encoder's layers, so that the states are the
  same under transformers 4 and 5, which record ``hidden_states`` differently;
- the logits are log-softmax outputs, as the released model returns them: the weighted
  cross-entropy of dpda is unchanged by it, and ``eval.score: bonafide_logit`` is then the
  published score (log P(bona fide)); SELU on the two ``fc3`` outputs precedes it, as there;
- no dropout.

One addition for lengths other than the training crop's: ``fc1`` is sized for ``frames`` frames
(201, the frame count of the published 64,600-sample crop), and the released model takes no
other length. Here an adaptive max pool over time (``adaptive_max_rows``) brings the pooled
map to ``frames // 3`` rows (a longer input's rows are pooled, a shorter one's repeated); at the
published length (201 to 203 frames) it is the identity, so the model is the published one there.

The front-end of ``xlsr_sls`` is :class:`LayerStackFrontEnd`, an ``SSLFrontEnd`` whose output is
the stack of those layer outputs, ``(B, L, frames, C)``; it takes every ``ssl`` option except
``layer``. Parameter names follow the released model (``fc0``, ``first_bn``, ``fc1``, ``fc3``;
the front-end under ``ssl_model.`` there, ``ssl.`` here), so ``dpda convert-paper FILE --model
xlsr_sls`` maps a released state dict key by key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpda.models.options import FromConfig
from dpda.models.ssl import SSLFrontEnd

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: XLS-R's frame count for the published 64,600-sample (about 4 s) crop.
PUBLISHED_FRAMES = 201
#: The (time, channel) max pool after the batch norm.
POOL = 3

#: The front-end whose forward pass is running in this thread (or task) and the list its layer
#: hooks fill: per context, not an attribute of the model, so that concurrent forward passes
#: (``dpda serve``'s threads) keep their own, and the model deep-copies and pickles as usual.
_CAPTURE: ContextVar[tuple[int, list[Tensor]] | None] = ContextVar("dpda_sls_capture", default=None)


def adaptive_max_rows(x: Tensor, rows: int) -> Tensor:
    """``F.adaptive_max_pool2d(x, (rows, x.shape[3]))`` of ``(B, C, n, W)``: row ``i`` is the max
    over input rows ``floor(i n / rows)`` to ``ceil((i + 1) n / rows) - 1``. Written as a gather
    and a max because exporters take no adaptive pooling of a length known only at run time
    (ONNX has none); with ``n == rows`` it is the identity."""
    n = x.shape[2]
    index = torch.arange(rows, device=x.device)
    starts = torch.div(index * n, rows, rounding_mode="floor")
    ends = torch.div((index + 1) * n + rows - 1, rows, rounding_mode="floor")
    width = (n + rows - 1) // rows + 1  # no bin is wider
    taken = torch.minimum(starts[:, None] + torch.arange(width, device=x.device), ends[:, None] - 1)
    gathered = x.index_select(2, taken.flatten())
    return gathered.view(x.shape[0], x.shape[1], rows, width, x.shape[3]).amax(dim=3)


class LayerStackFrontEnd(SSLFrontEnd):
    """``SSLFrontEnd`` whose ``forward(x: (B, T))`` returns every transformer layer's output,
    ``(B, L, frames, hidden)``, layer 1 first: what the SLS back-end weighs.

    The options are ``SSLFrontEnd``'s (``freeze``, ``normalize``, ``feature_grad_mult``,
    ``gradient_checkpointing``, ``config_overrides``, ...) except ``layer``, which has no meaning
    here and must be left at ``"last"``. With ``layerdrop > 0`` (dpda sets 0 unless asked) a
    dropped layer is missing from the stack in that training step.
    """

    def __init__(self, source: str | os.PathLike[str] | PretrainedConfig | Mapping[str, Any], **options: Any) -> None:
        layer = options.get("layer", "last")
        if layer != "last":
            raise ValueError(
                f"ssl.layer {layer!r}: the SLS back-end reads every transformer layer's output and "
                "weighs them itself; leave ssl.layer out"
            )
        super().__init__(source, **options)
        layers = getattr(getattr(self.model, "encoder", None), "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) != self.num_layers:
            raise ValueError(
                f"{type(self.model).__name__}: expected encoder.layers with {self.num_layers} transformer layers"
            )
        for layer_module in layers:
            layer_module.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        """Keep a layer's output while this front-end's ``_hidden_states`` runs (not when
        gradient checkpointing recomputes the layer in the backward pass)."""
        current = _CAPTURE.get()
        if current is not None and current[0] == id(self):
            current[1].append(output[0] if isinstance(output, tuple) else output)

    def _hidden_states(self, x: Tensor) -> Tensor:
        """The outputs of transformer layers 1..L stacked on dim 1: ``(B, L, frames, hidden)``."""
        captured: list[Tensor] = []
        token = _CAPTURE.set((id(self), captured))
        try:
            self.model(x)
        finally:
            _CAPTURE.reset(token)
        if not captured:  # only where layerdrop dropped them all
            raise RuntimeError("no transformer layer of the SSL front-end ran in this forward pass (layerdrop?)")
        return torch.stack(captured, dim=1)


class SLSBackEnd(FromConfig, nn.Module):
    """The SLS classifier: layer outputs ``(B, L, frames, ssl_dim)`` -> ``(embedding (B,
    hidden), logits (B, 2))``, index 1 = bona fide (see the module docstring).

    ``frames``: the frame count ``fc1`` is sized for (the published 201); ``hidden``: ``fc1``'s
    width (the published 1024). Any number of layers ``L`` works (``fc0`` is shared by all), as
    does any frame count of at least 3.
    """

    def __init__(self, *, ssl_dim: int = 1024, frames: int = PUBLISHED_FRAMES, hidden: int = 1024) -> None:
        super().__init__()
        for key, value in (("ssl_dim", ssl_dim), ("frames", frames)):
            if not isinstance(value, int) or isinstance(value, bool) or value < POOL:
                raise ValueError(f"xlsr_sls: {key} must be an int >= {POOL}, got {value!r}")
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ValueError(f"xlsr_sls: hidden must be an int >= 1, got {hidden!r}")
        self.ssl_dim = ssl_dim
        self.frames = frames
        self.rows = frames // POOL
        self.fc0 = nn.Linear(ssl_dim, 1)
        self.first_bn = nn.BatchNorm2d(num_features=1)
        self.selu = nn.SELU()
        self.fc1 = nn.Linear(self.rows * (ssl_dim // POOL), hidden)
        self.fc3 = nn.Linear(hidden, 2)

    def layer_weights(self, layers: Tensor) -> Tensor:
        """Each utterance's weight of each layer, ``(B, L)`` in (0, 1): sigmoid of ``fc0`` on the
        layer's time-averaged output."""
        return torch.sigmoid(self.fc0(layers.mean(dim=2))).squeeze(-1)

    def forward(self, layers: Tensor) -> tuple[Tensor, Tensor]:
        if layers.dim() != 4 or layers.shape[1] == 0 or layers.shape[2] < POOL or layers.shape[3] != self.ssl_dim:
            raise ValueError(
                f"expected layer outputs of shape (batch, layers >= 1, frames >= {POOL}, {self.ssl_dim}) "
                f"(model xlsr_sls builds its front-end to give them), got {tuple(layers.shape)}"
            )
        fused = torch.einsum("bl,bltc->btc", self.layer_weights(layers), layers)
        x = self.selu(self.first_bn(fused.unsqueeze(1)))
        x = F.max_pool2d(x, (POOL, POOL))  # (B, 1, frames // 3, ssl_dim // 3)
        x = adaptive_max_rows(x, self.rows)  # the identity at the published length
        embedding = self.selu(self.fc1(torch.flatten(x, 1)))
        logits = F.log_softmax(self.selu(self.fc3(embedding)), dim=1)
        return embedding, logits


__all__ = ["POOL", "PUBLISHED_FRAMES", "LayerStackFrontEnd", "SLSBackEnd", "adaptive_max_rows"]
