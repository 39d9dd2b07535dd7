"""The self-supervised speech front-end: wav2vec 2.0 / XLS-R (300M, 1B, 2B) / MMS (300M, 1B),
WavLM, HuBERT, data2vec-audio, UniSpeech-SAT or Whisper's encoder as a Hugging Face
``transformers`` model; waveform (B, T) at 16 kHz in, frames (B, frames, hidden) out, 50 frames/s
for every kind (a 320-sample, 20 ms hop: ``SSLFrontEnd.hop_samples``, ``frame_rate``,
``num_frames``).

The kinds (``MODEL_TYPES``, a transformers config's ``model_type``): ``wav2vec2`` (wav2vec 2.0,
XLS-R and MMS, which share one architecture: MMS is a preset and a hub id, not a class),
``wavlm``, ``hubert``, ``data2vec-audio``, ``unispeech-sat``, all on the waveform through a CNN
feature encoder, and ``whisper``: the encoder of a Whisper checkpoint on a log-mel spectrogram
computed in the model, in torch, with its positional embeddings sliced to the input's length
rather than the input padded to 30 s (``dpda.models.whisper`` says what that changes).

The defaults reproduce how the paper code (SSL_Anti-spoofing, fine-tuning fairseq's XLS-R 300M)
uses the model, ``model(x, mask=False, features_only=True)["x"]``:

- ``normalize=False``: the waveform goes in as read, as the paper feeds it to fairseq's model
  (fairseq's model never normalises; its data loader does when a task says ``normalize``).
  Nothing else normalises: a folder's ``preprocessor_config.json`` is never read.
  ``normalize=True`` does what fairseq's loader does then: per utterance zero mean and unit
  variance (``layer_norm`` over the samples, eps 1e-5).
- no masking (``FINE_TUNE_DEFAULTS``): ``mask=False`` in the paper, so transformers'
  SpecAugment-style masking (``mask_time_prob``, ``mask_feature_prob``, applied in train mode) is
  off whatever the loaded config says, unless ``config_overrides`` asks for it; and every layer
  runs in every step (``layerdrop=0``, xlsr2_300m's value), which also keeps both dual-path
  passes on the same depth. Whisper: ``WHISPER_FINE_TUNE_DEFAULTS`` (its names for the same).
- dropouts: as the loaded config has them. fairseq builds the model from the checkpoint's saved
  configuration; a folder written by ``fairseq_convert`` carries those values, a hub config has
  its own, so a config that must match the paper states them in ``config_overrides``.
- ``feature_grad_mult`` (fairseq's option of that name, which transformers lacks): the gradient
  that reaches the CNN feature encoder is multiplied by it; 0 sends none (the encoder's weights
  get no gradient), 1 (xlsr2_300m's value) changes nothing. Whisper's counterpart is its two
  convolutions on the log-mel.

``config_overrides`` sets any transformers config value (dropouts, ``layerdrop``, masking).
A frozen front-end (``freeze=True``) gets no gradients and stays in eval mode whatever
``train()`` says, so its features are deterministic; it runs under ``torch.no_grad``. The
learned layer weights of ``layer="weighted"`` are trained in either case.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from dpda.models.whisper import WhisperAudioEncoder

Layer = Literal["last", "weighted"] | int

#: Config values applied before the model is built (see the module docstring for why).
FINE_TUNE_DEFAULTS: dict[str, Any] = {"mask_time_prob": 0.0, "mask_feature_prob": 0.0, "layerdrop": 0.0}
#: Whisper's names for them; SpecAugment, which only transformers' WhisperModel applies, is off
#: (and refused: dpda's Whisper front-end has no masking).
WHISPER_FINE_TUNE_DEFAULTS: dict[str, Any] = {
    "apply_spec_augment": False,
    "mask_time_prob": 0.0,
    "mask_feature_prob": 0.0,
    "encoder_layerdrop": 0.0,
}

#: The supported ``model_type`` values of a transformers config (their classes: ``_model_class``).
MODEL_TYPES = ("wav2vec2", "wavlm", "hubert", "data2vec-audio", "unispeech-sat", "whisper")
#: The kinds of ``tiny_config``: the model types, and ``mms`` (wav2vec 2.0's architecture, so
#: its tiny model is wav2vec2's, XLS-R layout).
TINY_KINDS = (*MODEL_TYPES, "mms")
#: The rate every front-end reads.
SAMPLE_RATE = 16000

#: Sizes of the tiny random models the tests use: fast on a CPU, every code path of a big one.
#: The feature encoder hops 320 samples (20 ms) like the real ones, so that back-ends see the
#: real frame counts (199 for 4 s) and attention stays cheap.
TINY_SIZES: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32, 32, 32),
    "conv_kernel": (10, 8, 8),
    "conv_stride": (5, 8, 8),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}

#: Wav2vec 2.0's tiny model is XLS-R-like: layer-norm feature encoder, pre-norm transformer.
_XLSR_LAYOUT: dict[str, Any] = {"feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True}
#: Per kind, what its tiny model sets besides ``TINY_SIZES``: data2vec-audio's positional
#: embedding is a stack of ``num_conv_pos_embeddings`` convolutions of ``conv_pos_kernel_size``
#: (not one 16-wide one); Whisper has its own names, the real 80 mel bins and strides (so 50
#: frames/s) and 1500 positions, and no decoder is built.
_TINY_EXTRA: dict[str, dict[str, Any]] = {
    "wav2vec2": _XLSR_LAYOUT,
    "mms": _XLSR_LAYOUT,
    "data2vec-audio": {"num_conv_pos_embeddings": 2, "conv_pos_kernel_size": 5},
}
TINY_WHISPER_SIZES: dict[str, Any] = {
    "d_model": TINY_SIZES["hidden_size"],
    "encoder_layers": TINY_SIZES["num_hidden_layers"],
    "encoder_attention_heads": TINY_SIZES["num_attention_heads"],
    "encoder_ffn_dim": TINY_SIZES["intermediate_size"],
    "decoder_layers": 1,
    "decoder_attention_heads": TINY_SIZES["num_attention_heads"],
    "decoder_ffn_dim": TINY_SIZES["intermediate_size"],
    "num_mel_bins": 80,
}


#: The published XLS-R shapes (Babu et al., 2021; the configs of facebook/wav2vec2-xls-r-300m, -1b
#: and -2b): 7-layer 512-channel feature encoder with layer norm (hop 320 samples), a 128-wide
#: positional convolution in 16 groups, pre-LN ("stable") transformer layers of 16 heads.
XLSR_PRESETS: dict[str, dict[str, Any]] = {
    "xlsr_300m": {"hidden_size": 1024, "num_hidden_layers": 24, "intermediate_size": 4096},
    "xlsr_1b": {"hidden_size": 1280, "num_hidden_layers": 48, "intermediate_size": 5120},
    "xlsr_2b": {"hidden_size": 1920, "num_hidden_layers": 48, "intermediate_size": 7680},
}
_XLSR_ENCODER: dict[str, Any] = {
    **_XLSR_LAYOUT,
    "conv_dim": (512,) * 7,
    "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
    "conv_stride": (5, 2, 2, 2, 2, 2, 2),
    "num_attention_heads": 16,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "hidden_act": "gelu",
    # fairseq's xlsr2_300m values, as the paper fine-tuned it (paper_checkpoint.XLSR2_300M_OPTIONS)
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
}

#: MMS (Pratap et al., 2023; facebook/mms-300m and facebook/mms-1b): wav2vec 2.0 pre-trained on
#: 1,400 languages at XLS-R's 300M and 1B shapes (the same 7-layer 512-channel layer-norm feature
#: encoder, pre-LN transformer of 16 heads: 24 x 1024 / 4096 and 48 x 1280 / 5120). Loading one
#: needs nothing of its own: its hub id or folder is a ``wav2vec2`` model.
MMS_PRESETS: dict[str, dict[str, Any]] = {"mms_300m": XLSR_PRESETS["xlsr_300m"], "mms_1b": XLSR_PRESETS["xlsr_1b"]}

#: The base shapes (facebook/wav2vec2-base, hubert-base-ls960, wavlm-base,
#: data2vec-audio-base, unispeech-sat-base): 12 post-LN transformer layers of 768 wide, 12 heads,
#: 3072 FFN, the 7-layer 512-channel feature encoder (hop 320). Options of a kind's own (WavLM's
#: relative position buckets, data2vec-audio's 5 positional convolutions of 19, the feature
#: encoder's norm) are transformers' defaults, which are these models' values.
_BASE: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
BASE_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "wav2vec2_base": ("wav2vec2", {**_BASE, "feat_extract_norm": "group", "do_stable_layer_norm": False}),
    "hubert_base": ("hubert", {**_BASE, "feat_extract_norm": "group", "do_stable_layer_norm": False}),
    "wavlm_base": ("wavlm", {**_BASE, "feat_extract_norm": "group", "do_stable_layer_norm": False}),
    "data2vec_audio_base": ("data2vec-audio", _BASE),
    "unispeech_sat_base": ("unispeech-sat", {**_BASE, "feat_extract_norm": "group", "do_stable_layer_norm": False}),
}


def _whisper_shape(width: int, layers: int, heads: int, mel_bins: int = 80) -> dict[str, Any]:
    """A Whisper size (Radford et al., 2022, table 1): encoder and decoder alike, FFN 4x wide."""
    return {
        "d_model": width,
        "encoder_layers": layers,
        "decoder_layers": layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": 4 * width,
        "decoder_ffn_dim": 4 * width,
        "num_mel_bins": mel_bins,
    }


#: The Whisper sizes (openai/whisper-tiny ... -large-v3; large-v3 reads 128 mel bins).
WHISPER_PRESETS: dict[str, dict[str, Any]] = {
    "whisper_tiny": _whisper_shape(384, 4, 6),
    "whisper_base": _whisper_shape(512, 6, 8),
    "whisper_small": _whisper_shape(768, 12, 12),
    "whisper_medium": _whisper_shape(1024, 24, 16),
    "whisper_large_v3": _whisper_shape(1280, 32, 20, mel_bins=128),
}

#: Every preset: name -> (model_type, config values).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: ("wav2vec2", {**_XLSR_ENCODER, **shape}) for name, shape in {**XLSR_PRESETS, **MMS_PRESETS}.items()},
    **BASE_PRESETS,
    **{name: ("whisper", shape) for name, shape in WHISPER_PRESETS.items()},
}


#: The module whose output carries the CNN front's gradient for ``feature_grad_mult``: the feature
#: encoder of the wav2vec 2.0 family; Whisper's second convolution (so both of its convolutions).
_FEATURE_ENCODER: dict[str, str] = {"whisper": "encoder.conv2"}


class _GradScale(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``scale`` (fairseq's ``GradMultiply``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def _model_class(model_type: str) -> type[PreTrainedModel]:
    """The bare encoder class for a config's ``model_type`` (imported late: transformers is slow
    to import and only this front-end needs it)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unsupported SSL model_type {model_type!r}; supported: {', '.join(MODEL_TYPES)}")
    if model_type == "whisper":
        from dpda.models.whisper import WhisperAudioEncoder

        return WhisperAudioEncoder
    from transformers import Data2VecAudioModel, HubertModel, UniSpeechSatModel, Wav2Vec2Model, WavLMModel

    classes: dict[str, type[PreTrainedModel]] = {
        "wav2vec2": Wav2Vec2Model,
        "wavlm": WavLMModel,
        "hubert": HubertModel,
        "data2vec-audio": Data2VecAudioModel,
        "unispeech-sat": UniSpeechSatModel,
    }
    return classes[model_type]


def preset_config(name: str) -> PretrainedConfig:
    """The transformers config of a published shape (``PRESETS``: XLS-R, MMS, the base models,
    Whisper), for a random-weight model of the real size: benchmarks, and checkpoints that bring
    their own weights."""
    from transformers import AutoConfig

    from dpda.suggest import did_you_mean

    if name not in PRESETS:
        raise ValueError(f"unknown SSL preset {name!r}{did_you_mean(name, list(PRESETS))}; valid: {', '.join(PRESETS)}")
    model_type, values = PRESETS[name]
    return AutoConfig.for_model(model_type, **values)


def tiny_config(kind: str = "wav2vec2", **overrides: Any) -> PretrainedConfig:
    """A tiny random-init configuration of ``kind`` (``TINY_KINDS``) for tests: ``TINY_SIZES``
    (Whisper: ``TINY_WHISPER_SIZES``), 320-sample frames like the real models."""
    from transformers import AutoConfig

    from dpda.suggest import did_you_mean

    if kind not in TINY_KINDS:
        raise ValueError(
            f"unknown tiny SSL kind {kind!r}{did_you_mean(kind, list(TINY_KINDS))}; valid: {', '.join(TINY_KINDS)}"
        )
    model_type = "wav2vec2" if kind == "mms" else kind
    sizes = TINY_WHISPER_SIZES if kind == "whisper" else TINY_SIZES
    return AutoConfig.for_model(model_type, **{**sizes, **_TINY_EXTRA.get(kind, {}), **overrides})


def fine_tune_defaults(model_type: str) -> dict[str, Any]:
    """The config values a front-end of ``model_type`` is built with unless overridden: no
    masking, no layer drop (``FINE_TUNE_DEFAULTS``, Whisper's names for them for Whisper)."""
    return dict(WHISPER_FINE_TUNE_DEFAULTS if model_type == "whisper" else FINE_TUNE_DEFAULTS)


def _apply_overrides(config: PretrainedConfig, overrides: Mapping[str, Any]) -> None:
    """Set config values, refusing names the config does not have (a typo would pass silently)."""
    unknown = sorted(name for name in overrides if not hasattr(config, name))
    if unknown:
        raise ValueError(f"{type(config).__name__} has no option(s) {', '.join(unknown)}")
    for name, value in overrides.items():
        setattr(config, name, value)


def _is_hub_id(source: str) -> bool:
    """``org/name`` or ``name``: anything else that is not an existing folder is a missing path."""
    return source.count("/") <= 1 and not source.startswith((".", "/", "~", "\\")) and "\\" not in source


def _load(
    source: str | os.PathLike[str] | PretrainedConfig | Mapping[str, Any],
    overrides: Mapping[str, Any],
    revision: str | None,
    local_files_only: bool,
) -> PreTrainedModel:
    """Build the transformers model: pretrained from a folder or hub id, random from a config;
    ``overrides`` go over ``fine_tune_defaults`` of the config's model type."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(source, (PretrainedConfig, Mapping)):
        if isinstance(source, Mapping):
            values = dict(source)
            if "model_type" not in values:
                raise ValueError("a config dict needs a 'model_type' (one of " + ", ".join(MODEL_TYPES) + ")")
            config = AutoConfig.for_model(values.pop("model_type"), **values)
        else:
            config = copy.deepcopy(source)
        model_class = _model_class(config.model_type)
        _apply_overrides(config, {**fine_tune_defaults(config.model_type), **overrides})
        return model_class(config)

    location = str(source)
    if not Path(location).expanduser().is_dir() and (isinstance(source, os.PathLike) or not _is_hub_id(location)):
        raise FileNotFoundError(f"SSL model folder not found: {location}")
    revision = "main" if revision is None else revision  # transformers' default, the hub's main branch
    config = AutoConfig.from_pretrained(location, revision=revision, local_files_only=local_files_only)
    model_class = _model_class(config.model_type)
    _apply_overrides(config, {**fine_tune_defaults(config.model_type), **overrides})
    loaded = model_class.from_pretrained(
        location,
        config=config,
        dtype=torch.float32,
        output_loading_info=True,
        revision=revision,
        local_files_only=local_files_only,
    )
    # output_loading_info=True makes it return (model, info); transformers annotates the model alone
    model, info = cast("tuple[PreTrainedModel, Mapping[str, Collection[str]]]", loaded)
    if info["missing_keys"]:
        # A missing weight would silently stay randomly initialised.
        raise ValueError(f"{location} lacks weights for: {', '.join(sorted(info['missing_keys']))}")
    return model


def _enable_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each layer's activations in the backward pass (transformers 5 renamed the call);
    non-reentrant checkpointing replays dropout's random numbers, so gradients are unchanged."""
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


class SSLFrontEnd(nn.Module):
    """SSL encoder features for a back-end: ``forward(x: (B, T) float32 16 kHz) -> (B, frames,
    output_dim)``.

    ``source``: a ``save_pretrained`` folder (e.g. one written by
    ``dpda.models.fairseq_convert.convert_fairseq_checkpoint``), a hub id such as
    ``"facebook/wav2vec2-xls-r-300m"``, ``"facebook/mms-300m"`` or ``"openai/whisper-small"``
    (downloaded unless cached; ``local_files_only=True`` never goes online), or a transformers
    config / dict with ``model_type`` for a random model.

    ``layer`` picks the hidden state, numbered 0 (the input of the first transformer layer:
    projected CNN features plus the convolutional position embedding; Whisper: its two
    convolutions plus the sinusoidal positions) to L (the model's output): ``"last"`` is L, which
    for pre-norm models (XLS-R, MMS, Whisper) includes the encoder's final LayerNorm,
    like fairseq's ``features_only`` output; an int i (negative counts from L) is the output of
    transformer layer i, the un-normalised residual stream for i < L; ``"weighted"`` is a learned
    softmax-weighted sum of all L + 1, weights initialised uniform. Layers above an int i still
    run (and get no gradient).
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | PretrainedConfig | Mapping[str, Any],
        *,
        layer: Layer = "last",
        freeze: bool = False,
        normalize: bool = False,
        gradient_checkpointing: bool = False,
        feature_grad_mult: float = 1.0,
        config_overrides: Mapping[str, Any] | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        super().__init__()
        number = isinstance(feature_grad_mult, (int, float)) and not isinstance(feature_grad_mult, bool)
        if not number or not (math.isfinite(feature_grad_mult) and feature_grad_mult >= 0):
            raise ValueError(f"feature_grad_mult must be a number >= 0, got {feature_grad_mult!r}")
        self.model = _load(source, dict(config_overrides or {}), revision, local_files_only)
        config = self.model.config
        self.model_type: str = config.model_type
        whisper = self.model_type == "whisper"
        self.num_layers: int = config.encoder_layers if whisper else config.num_hidden_layers
        self.output_dim: int = config.d_model if whisper else config.hidden_size
        #: Samples per output frame (320 for every published model: 20 ms, 50 frames/s).
        self.hop_samples: int = self._whisper().hop_samples if whisper else math.prod(config.conv_stride)
        self.frame_rate: float = SAMPLE_RATE / self.hop_samples
        self.layer = self._check_layer(layer)
        self.freeze = freeze
        self.normalize = normalize
        self.feature_grad_mult = float(feature_grad_mult)
        self.layer_weights = nn.Parameter(torch.zeros(self.num_layers + 1)) if layer == "weighted" else None
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        if gradient_checkpointing:
            _enable_checkpointing(self.model)
        if self.feature_grad_mult != 1.0:
            self.model.get_submodule(_FEATURE_ENCODER.get(self.model_type, "feature_extractor")).register_forward_hook(
                self._scale_feature_gradient
            )

    @classmethod
    def tiny(
        cls, kind: str = "wav2vec2", *, config_overrides: Mapping[str, Any] | None = None, **options: Any
    ) -> SSLFrontEnd:
        """A tiny random front-end of ``kind`` for tests (``tiny_config``)."""
        return cls(tiny_config(kind), config_overrides=config_overrides, **options)

    def _whisper(self) -> WhisperAudioEncoder:
        return cast("WhisperAudioEncoder", self.model)

    def num_frames(self, samples: int) -> int:
        """Output frames for an input of ``samples`` samples: the CNN feature encoder's
        ``(length - kernel) // stride + 1`` per layer (wav2vec 2.0 family), or Whisper's
        ``(samples // 160 - 1) // 2 + 1``."""
        if self.model_type == "whisper":
            return self._whisper().num_frames(samples)
        length = samples
        for kernel, stride in zip(self.model.config.conv_kernel, self.model.config.conv_stride, strict=True):
            length = (length - kernel) // stride + 1
        return max(length, 0)

    def _check_layer(self, layer: Layer) -> Layer:
        if layer in ("last", "weighted"):
            return layer
        if isinstance(layer, int) and not isinstance(layer, bool) and -self.num_layers - 1 <= layer <= self.num_layers:
            return layer % (self.num_layers + 1)
        raise ValueError(f"layer must be 'last', 'weighted' or an int in [-{self.num_layers + 1}, {self.num_layers}]")

    def train(self, mode: bool = True) -> SSLFrontEnd:
        """As ``nn.Module.train``, but a frozen SSL model stays in eval mode (no dropout)."""
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(x.shape)}")
        if self.normalize:
            x = F.layer_norm(x, x.shape[1:])
        with torch.no_grad() if self.freeze else contextlib.nullcontext():
            hidden = self._hidden_states(x)
        if self.layer_weights is None:
            return hidden
        weights = torch.softmax(self.layer_weights, dim=0).to(hidden.dtype)
        return torch.einsum("l,lbtc->btc", weights, hidden)

    def _scale_feature_gradient(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        """The CNN features with their gradient scaled by ``feature_grad_mult`` (cut at 0)."""
        if self.feature_grad_mult == 0:
            return output.detach()
        return _GradScale.apply(output, self.feature_grad_mult)

    def _hidden_states(self, x: Tensor) -> Tensor:
        """The selected hidden state (B, frames, hidden), or all L + 1 stacked for "weighted"."""
        want_all = self.layer == "weighted" or (self.layer != "last" and self.layer < self.num_layers)
        out = self.model(x, output_hidden_states=want_all)
        if not want_all:
            return out.last_hidden_state
        # transformers 5 records the last layer's output before a pre-norm model's final
        # LayerNorm, 4.x after it; the model output is the same in both.
        states = (*out.hidden_states[:-1], out.last_hidden_state)
        # here the layer is "weighted" or a number below L
        return states[self.layer] if isinstance(self.layer, int) else torch.stack(states)
