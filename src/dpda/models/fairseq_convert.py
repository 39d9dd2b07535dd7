"""fairseq wav2vec 2.0 / XLS-R checkpoints (e.g. the paper's ``xlsr2_300m.pt``) to a transformers
``Wav2Vec2Model`` folder, without fairseq and without running code from the checkpoint.

Loading: ``torch.load(weights_only=True)`` rebuilds tensors and plain containers only. Globals
the checkpoint names are first read off its pickle without executing it; besides torch's own
tensor globals, only ``SAFE_GLOBALS`` (harmless builtins and numpy scalars/arrays) and inert
stand-ins for configuration objects (``RECORD_NAMESPACES``: ``argparse.Namespace`` args,
omegaconf ``DictConfig`` cfgs, fairseq enums and dataclasses referenced from them) are allowed.
Any other global is an error naming all of them, raised before anything is unpickled; ``torch.*``
names are left to torch's unpickler, which refuses (and names) any but its tensor-rebuilding ones.
Needs torch >= 2.6.

Mapping (``fairseq_to_transformers``): the key table ``RULES`` renames the encoder's parameters
(the same correspondence as transformers' own conversion script), ``TRAINING_ONLY`` parts of the
pre-training model (quantizer, projection heads) are dropped, and any other fairseq key, or any
model weight left unfilled, is an error listing all of them. Sizes come from the tensor shapes;
what shapes cannot tell (attention heads, strides, pre- or post-norm) comes from the checkpoint's
``cfg``/``args``, with the standard wav2vec 2.0 values when those are missing.

Configuration (``conversion_report``): every option of the checkpoint's model configuration is
accounted for, as fairseq builds its model from it. Dropouts and LayerDrop go into the
transformers config (``DROPOUTS``); ``feature_grad_mult``, which transformers lacks, becomes the
``SSLFrontEnd`` keyword of that name; masking is off (the paper calls the model with
``mask=False``); what is not carried is listed with the reason in the folder's ``conversion.json``.
"""

from __future__ import annotations

import ast
import codecs
import collections
import json
import os
import pickletools
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

import numpy as np
import torch
from torch import Tensor

from dpda.atomic import atomic_folder
from dpda.errors import DpdaError

if TYPE_CHECKING:
    from transformers import Wav2Vec2Config

# ----------------------------------------------------------------------------------------------
# Restricted loading


class ConversionError(DpdaError, ValueError):
    """A checkpoint that cannot be read or converted: not ``torch.save`` output, not a fairseq
    model, or a configuration that disagrees with its tensors."""


class UnsafeCheckpointError(ConversionError):
    """The checkpoint names globals that loading it would have to import or call."""


_Record = TypeVar("_Record", bound="ConfigRecord")


class ConfigRecord:
    """Inert stand-in for a configuration object: it keeps what unpickling hands it (constructor
    arguments, state) and runs nothing. ``global_name`` is the global it replaces."""

    global_name = ""
    args: tuple[object, ...]  # the constructor's arguments
    state: object  # what __setstate__ received, None if nothing

    def __new__(cls: type[_Record], *args: Any, **kwargs: Any) -> _Record:
        record = super().__new__(cls)
        record.args, record.state = args, None
        return record

    def __setstate__(self, state: Any) -> None:
        self.state = state


#: Globals under these names are rebuilt as ``ConfigRecord`` s (they carry configuration only).
RECORD_NAMESPACES = ("argparse.", "omegaconf.", "fairseq.", "typing.")


def _as_dict(*args: Any) -> dict:
    """``collections.defaultdict`` rebuilt as a plain dict: its default factory never runs."""
    return {}


def _safe_globals() -> dict[str, Any]:
    """Harmless globals by the name a pickle uses for them (numpy's module moved in 2.0)."""
    names: dict[str, Any] = {
        f"builtins.{t.__name__}": t
        for t in (int, float, complex, bool, str, bytes, bytearray, dict, list, tuple, set, frozenset, slice)
    }
    names["collections.OrderedDict"] = collections.OrderedDict
    names["_codecs.encode"] = codecs.encode  # how protocol 2 pickles bytes
    names["collections.defaultdict"] = _as_dict
    scalar, reconstruct = np.float64(0).__reduce__()[0], np.zeros(1).__reduce__()[0]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[f"{module}.scalar"] = scalar
        names[f"{module}._reconstruct"] = reconstruct
    names["numpy.ndarray"] = np.ndarray
    names["numpy.dtype"] = np.dtype
    for name in dir(getattr(np, "dtypes", None)):  # dtype instances are rebuilt with BUILD
        dtype_class = getattr(np.dtypes, name)
        if isinstance(dtype_class, type) and issubclass(dtype_class, np.dtype):
            names[f"numpy.dtypes.{name}"] = dtype_class
    return names


#: The allow-list beyond torch's own tensor-rebuilding globals.
SAFE_GLOBALS: dict[str, Any] = _safe_globals()


def _pickle_globals(path: Path) -> set[str]:
    """Every global a ``torch.save`` file's pickle names, read by disassembly (nothing runs)."""
    names: set[str] = set()

    def scan(stream: Any) -> None:
        try:
            ops = [(opcode.name, arg) for opcode, arg, _ in pickletools.genops(stream)]
        except (ValueError, EOFError) as error:
            raise ConversionError(f"{path}: not a torch.save file (its pickle does not parse: {error})") from None
        for opcode, arg in ops:
            if opcode in ("GLOBAL", "INST"):
                assert isinstance(arg, str)  # pickletools reads their argument as "module name"
                module, name = arg.split(" ", 1)
                module, name = _compat_name(module, name)
                names.add(f"{module}.{name}")
            elif opcode == "STACK_GLOBAL":
                raise UnsafeCheckpointError(f"{path}: pickle protocol 4+ globals are not supported")

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            records = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(records) != 1:
                raise ConversionError(f"{path} is a zip file but not a torch.save checkpoint")
            with archive.open(records[0]) as stream:
                scan(stream)
    else:  # legacy format: magic number, protocol, system info, then the object
        with open(path, "rb") as stream:
            for _ in range(4):
                scan(stream)
    return names


def _compat_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (``__builtin__.long``) as Python 3's unpickler reads them."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _record_class(global_name: str) -> type[ConfigRecord]:
    return type(global_name.rsplit(".", 1)[-1], (ConfigRecord,), {"global_name": global_name})


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with the allow-list above: tensors, plain containers and ``ConfigRecord`` s.

    Requires torch >= 2.6 (``safe_globals`` with explicit names)."""
    path = Path(path)
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 6):
        raise RuntimeError(f"loading fairseq checkpoints safely needs torch >= 2.6, found {torch.__version__}")
    # all of SAFE_GLOBALS: numpy's dtype classes are rebuilt without being named in the pickle
    allowed: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (value, name) for name, value in SAFE_GLOBALS.items()
    ]
    refused = []
    for name in sorted(_pickle_globals(path)):
        if name in SAFE_GLOBALS:
            continue
        if name.startswith(RECORD_NAMESPACES):
            allowed.append((_record_class(name), name))
        elif not name.startswith("torch."):  # torch's unpickler polices its own names
            refused.append(name)
    if refused:
        raise UnsafeCheckpointError(
            f"{path} refers to globals outside the allow-list, not loaded (nothing was run): {', '.join(refused)}"
        )
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def plain(value: Any) -> Any:
    """Configuration as plain dicts, lists and scalars: a Namespace or dataclass becomes the dict
    of its fields, an omegaconf container its content, a node its value, an enum its value."""
    if isinstance(value, type) and issubclass(value, ConfigRecord):
        return value.global_name
    if isinstance(value, ConfigRecord):
        state = value.state
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            if "_content" in state:
                return plain(state["_content"])
            if "_val" in state:
                return plain(state["_val"])
            return {k: plain(v) for k, v in state.items()}
        return plain(value.args[0]) if value.args else None
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


#: Where a detector of the paper code keeps its fairseq front-end (``dpda.models.paper_checkpoint``).
DETECTOR_FRONTEND = "ssl_model.model."


def load_fairseq_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The model state dict and the configuration (``cfg``, or the legacy ``args``, as plain
    dicts; empty when absent) of a fairseq checkpoint, or of a bare state dict."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"{path}: expected a dict, got {type(checkpoint).__name__}")
    if isinstance(checkpoint.get("model"), Mapping):
        cfg = checkpoint.get("cfg") or checkpoint.get("args") or {}
        return dict(checkpoint["model"]), plain(cfg)
    if checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
        return dict(checkpoint), {}
    raise ConversionError(f"{path}: neither a fairseq checkpoint (no 'model') nor a state dict")


# ----------------------------------------------------------------------------------------------
# Names

_POS = "encoder.pos_conv_embed.conv"
_LAYER = r"encoder\.layers\.(\d+)\."

#: fairseq name (full match) -> transformers ``Wav2Vec2Model`` name.
RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
        # group norm (first layer only) is module 2; layer norm is module 1 of module 2
        (
            r"feature_extractor\.conv_layers\.(\d+)\.2(?:\.1)?\.(weight|bias)",
            r"feature_extractor.conv_layers.\1.layer_norm.\2",
        ),
        (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
        (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
        (r"encoder\.pos_conv\.0\.bias", f"{_POS}.bias"),
        (
            r"encoder\.pos_conv\.0\.(?:weight_g|parametrizations\.weight\.original0)",
            f"{_POS}.parametrizations.weight.original0",
        ),
        (
            r"encoder\.pos_conv\.0\.(?:weight_v|parametrizations\.weight\.original1)",
            f"{_POS}.parametrizations.weight.original1",
        ),
        (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
        (_LAYER + r"self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
        (_LAYER + r"self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
        (_LAYER + r"fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
        (_LAYER + r"fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
        (_LAYER + r"final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
    ]
]

#: Parts of the pre-training model that the encoder does not use (``mask_emb`` replaces masked
#: frames, and the front-end never masks: see ``NOT_CARRIED``).
TRAINING_ONLY = (
    "quantizer.",
    "project_q.",
    "final_proj.",
    "label_embs_concat",
    "input_quantizer.",
    "project_inp.",
    "target_glu.",
    "mask_emb",
)


def map_fairseq_keys(state: Mapping[str, Tensor], prefix: str = "") -> tuple[dict[str, Tensor], list[str]]:
    """The encoder's tensors under transformers names, and the keys that have none. Only keys
    under ``prefix`` are read (e.g. ``"ssl_model.model."`` in the paper's released detectors);
    training-only parts are dropped."""
    if prefix and not any(key.startswith(prefix) for key in state):
        raise ConversionError(f"no key starts with the prefix {prefix!r}")
    renamed: dict[str, Tensor] = {}
    unmapped = []
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name.startswith(TRAINING_ONLY):
            continue
        target = next((pattern.sub(repl, name) for pattern, repl in RULES if pattern.fullmatch(name)), None)
        if target is None:
            unmapped.append(key)
        else:
            renamed[target] = tensor
    return renamed, unmapped


def rename_fairseq_keys(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """``map_fairseq_keys``, with any unknown key an error listing them all."""
    renamed, unmapped = map_fairseq_keys(state, prefix)
    if unmapped:
        raise ConversionError(f"{len(unmapped)} fairseq key(s) have no transformers counterpart: {', '.join(unmapped)}")
    return renamed


# ----------------------------------------------------------------------------------------------
# Configuration

#: fairseq's default feature encoder (every released wav2vec 2.0 / XLS-R model uses it): its
#: strides are assumed for a checkpoint without config whose kernels are these.
STANDARD_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2

#: Attention heads by model width when the checkpoint has no config: base 12, large/XLS-R 16.
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16, 1920: 16}

#: fairseq ``activation_fn`` -> transformers ``hidden_act``.
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_accurate": "gelu_new", "gelu_fast": "gelu_new"}

#: fairseq option -> (transformers option, fairseq's default). The same places on both sides:
#: ``dropout`` after the positional convolution and on both residual branches of every layer
#: (transformers' ``hidden_dropout``), ``attention_dropout`` on the attention weights,
#: ``activation_dropout`` after the FFN activation, ``dropout_input`` after the feature projection
#: (``feat_proj_dropout``), ``encoder_layerdrop`` the probability of skipping a layer in training.
DROPOUTS = {
    "dropout": ("hidden_dropout", 0.1),
    "attention_dropout": ("attention_dropout", 0.1),
    "activation_dropout": ("activation_dropout", 0.0),
    "dropout_input": ("feat_proj_dropout", 0.0),
    "encoder_layerdrop": ("layerdrop", 0.0),
}

#: fairseq options that shape the encoder -> the transformers options they become (the values
#: come from the tensors; a config that disagrees with them is refused).
STRUCTURE = {
    "extractor_mode": "feat_extract_norm",
    "conv_feature_layers": "conv_dim, conv_kernel, conv_stride",
    "conv_bias": "conv_bias",
    "encoder_layers": "num_hidden_layers",
    "encoder_embed_dim": "hidden_size",
    "encoder_ffn_embed_dim": "intermediate_size",
    "encoder_attention_heads": "num_attention_heads",
    "activation_fn": "hidden_act",
    "layer_norm_first": "do_stable_layer_norm",
    "conv_pos": "num_conv_pos_embeddings",
    "conv_pos_groups": "num_conv_pos_embedding_groups",
    "layer_type": "(only 'transformer' converts)",
}

#: fairseq options that transformers has no field for, carried as ``SSLFrontEnd`` keywords of
#: the same name: option -> fairseq's default. ``feature_grad_mult`` scales the gradient that
#: reaches the CNN feature encoder (0: none reaches it).
FRONTEND_OPTIONS = {"feature_grad_mult": 1.0}

_MASKING = (
    "masking of pre-training; the paper calls the model with mask=False, so the written config "
    "masks nothing (mask_time_prob = mask_feature_prob = 0, apply_spec_augment = false)"
)
_OBJECTIVE = "the pre-training objective (quantizer, targets, negatives) only; no effect on the encoder output"
_TRAINING = "a memory or speed setting of fairseq training (dpda: model.ssl.gradient_checkpointing)"

#: Why the other model options are not carried: option name or name prefix -> reason.
NOT_CARRIED = {
    "mask_": _MASKING,
    "no_mask_": _MASKING,
    "require_same_masks": _MASKING,
    "dropout_features": "dropout on the pre-training targets only; no effect on the encoder output",
    "final_dim": _OBJECTIVE,
    "logit_temp": _OBJECTIVE,
    "quantize_": _OBJECTIVE,
    "same_quantizer": _OBJECTIVE,
    "target_glu": _OBJECTIVE,
    "latent_": _OBJECTIVE,
    "num_negatives": _OBJECTIVE,
    "negatives_from_everywhere": _OBJECTIVE,
    "cross_sample_negatives": _OBJECTIVE,
    "codebook_negatives": _OBJECTIVE,
    "quantizer_": _OBJECTIVE,
    "checkpoint_activations": _TRAINING,
    "offload_activations": _TRAINING,
    "min_params_to_wrap": _TRAINING,
    "fp16": _TRAINING,
    "required_seq_len_multiple": "fairseq pads the frames to this multiple and masks the padding: the same output",
    "crop_seq_to_multiple": "fairseq drops the last frames down to a multiple of this (1: none); transformers "
    "keeps every frame",
    "pos_conv_depth": "positional convolution layers; only 1 exists in transformers (other depths do not map)",
    "max_positions": "not read by the convolutional positional embedding",
}
_UNKNOWN = "not known to this converter: check that it does not change the encoder"


def model_options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The model section of a checkpoint's ``cfg`` (hydra) or its flat ``args``."""
    cfg = dict(cfg or {})
    return dict(cfg["model"]) if isinstance(cfg.get("model"), Mapping) else cfg


def task_options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The task section of a checkpoint's ``cfg`` (hydra) or its flat ``args``."""
    cfg = dict(cfg or {})
    return dict(cfg["task"]) if isinstance(cfg.get("task"), Mapping) else cfg


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``,
    evaluated for list literals, ``+`` and ``*`` only (it is code in the checkpoint)."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ConversionError(f"unsupported conv_feature_layers expression: {spec!r}")

    layers = value(ast.parse(spec, mode="eval").body)
    if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise ConversionError(f"conv_feature_layers is not a list of (dim, kernel, stride): {spec!r}")
    return layers


def _indices(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for key in state if (m := re.fullmatch(pattern, key))})


class _EncoderSizes(TypedDict):
    """The ``Wav2Vec2Config`` fields that the encoder's tensors fix."""

    conv_dim: list[int]
    conv_kernel: list[int]
    conv_bias: bool
    feat_extract_norm: Literal["layer", "group"]
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_conv_pos_embeddings: int
    num_conv_pos_embedding_groups: int


def derive_config(state: Mapping[str, Tensor], options: Mapping[str, Any]) -> Wav2Vec2Config:
    """A ``Wav2Vec2Config`` from transformers-named tensors and fairseq model options."""
    from transformers import Wav2Vec2Config

    required = [
        "feature_extractor.conv_layers.0.conv.weight",
        "feature_projection.projection.weight",
        "encoder.layers.0.feed_forward.intermediate_dense.weight",
        f"{_POS}.parametrizations.weight.original1",
    ]
    absent = [key for key in required if key not in state]
    if absent:
        raise ConversionError(f"the checkpoint lacks the encoder's {', '.join(absent)}")
    convs = _indices(state, r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight")
    shapes = [state[f"feature_extractor.conv_layers.{i}.conv.weight"].shape for i in convs]
    normed = _indices(state, r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.weight")
    if normed not in (convs, [0]):
        raise ConversionError(f"unrecognised feature-encoder normalisation on conv layers {normed}")
    pos = state[f"{_POS}.parametrizations.weight.original1"].shape  # (hidden, hidden / groups, kernel)
    sizes: _EncoderSizes = {
        "conv_dim": [s[0] for s in shapes],
        "conv_kernel": [s[2] for s in shapes],
        "conv_bias": "feature_extractor.conv_layers.0.conv.bias" in state,
        "feat_extract_norm": "layer" if normed == convs and len(convs) > 1 else "group",
        "hidden_size": state["feature_projection.projection.weight"].shape[0],
        "num_hidden_layers": len(_indices(state, _LAYER + r".*")),
        "intermediate_size": state["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        "num_conv_pos_embeddings": pos[2],
        "num_conv_pos_embedding_groups": pos[0] // pos[1],
    }
    _check_options(sizes, options)
    conv_spec = options.get("conv_feature_layers")
    if conv_spec is not None:
        strides = [stride for _, _, stride in parse_conv_layers(conv_spec)]
    elif sizes["conv_kernel"] == [kernel for _, kernel, _ in STANDARD_CONV]:
        strides = [stride for _, _, stride in STANDARD_CONV]
    else:
        raise ConversionError("non-standard conv kernels and no conv_feature_layers in the config: strides unknown")
    heads = options.get("encoder_attention_heads", HEADS_BY_WIDTH.get(sizes["hidden_size"]))
    if heads is None:
        raise ConversionError(
            f"no encoder_attention_heads in the config and no default for width {sizes['hidden_size']}"
        )
    activation = options.get("activation_fn", "gelu")
    if activation not in ACTIVATIONS:
        raise ConversionError(f"unsupported activation_fn {activation!r}")
    if options.get("layer_type", "transformer") != "transformer":
        raise ConversionError(f"unsupported layer_type {options['layer_type']!r} (only 'transformer')")
    return Wav2Vec2Config(
        **sizes,
        conv_stride=strides,
        num_attention_heads=heads,
        hidden_act=ACTIVATIONS[activation],
        # fairseq's layer_norm_first is transformers' stable layer norm; without a config, the
        # released models have it exactly when their feature encoder uses layer norm (XLS-R)
        do_stable_layer_norm=bool(options.get("layer_norm_first", sizes["feat_extract_norm"] == "layer")),
        # never masks: fairseq's model is called with mask=False (see NOT_CARRIED)
        apply_spec_augment=False,
        mask_time_prob=0.0,
        mask_feature_prob=0.0,
        **{hf: options.get(fs, default) for fs, (hf, default) in DROPOUTS.items()},
    )


def conversion_report(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Where each option of the checkpoint's configuration went: ``carried`` into the transformers
    config (fairseq name -> transformers name and value; fairseq's default where the
    configuration has none), ``frontend_options`` (``SSLFrontEnd`` keywords that run the model as
    fairseq does), ``task`` (input normalisation and sample rate) and ``not_carried`` (name ->
    value and reason). With the flat legacy ``args`` only the known model options are listed:
    there they sit among the training options."""
    options = model_options(cfg)
    hydra = isinstance(dict(cfg or {}).get("model"), Mapping)
    carried = {
        fs: {"to": hf, "value": options.get(fs, default), "from": "cfg" if fs in options else "fairseq default"}
        for fs, (hf, default) in DROPOUTS.items()
    }
    carried.update(
        {fs: {"to": hf, "value": options[fs], "from": "cfg"} for fs, hf in STRUCTURE.items() if fs in options}
    )
    frontend = {name: options.get(name, default) for name, default in FRONTEND_OPTIONS.items()}
    frontend["config_overrides"] = {"layerdrop": carried["encoder_layerdrop"]["value"]}  # dpda's default is 0
    not_carried = {}
    for name, value in options.items():
        if name in carried or name in FRONTEND_OPTIONS or name.startswith("_"):  # "_name": the model class
            continue
        reason = next(
            (why for key, why in NOT_CARRIED.items() if name == key or (key.endswith("_") and name.startswith(key))),
            None,
        )
        if reason is not None or hydra:
            not_carried[name] = {"value": value, "reason": reason or _UNKNOWN}
    task = task_options(cfg)
    normalize = bool(task.get("normalize", False))
    return {
        "carried": carried,
        "frontend_options": frontend,
        "task": {
            "normalize": normalize,
            "sample_rate": int(task.get("sample_rate", 16000)),
            "note": "pre-training " + ("normalised" if normalize else "did not normalise") + " each waveform "
            "(fairseq's data loader, not the model, does it); preprocessor_config.json records it as "
            "do_normalize for transformers' feature extractor. dpda's front-end never reads that file "
            "and normalises only with model.ssl.normalize: true; the paper code feeds raw waveforms.",
        },
        "not_carried": not_carried,
    }


def _check_options(sizes: _EncoderSizes, options: Mapping[str, Any]) -> None:
    """The shapes are the truth; a config that disagrees with them belongs to another model."""
    expected: dict[str, object] = {
        "encoder_embed_dim": sizes["hidden_size"],
        "encoder_layers": sizes["num_hidden_layers"],
        "encoder_ffn_embed_dim": sizes["intermediate_size"],
        "conv_pos": sizes["num_conv_pos_embeddings"],
        "conv_pos_groups": sizes["num_conv_pos_embedding_groups"],
        "conv_bias": sizes["conv_bias"],
        "extractor_mode": "layer_norm" if sizes["feat_extract_norm"] == "layer" else "default",
    }
    if "conv_feature_layers" in options:
        expected["conv_feature_layers"] = list(zip(sizes["conv_dim"], sizes["conv_kernel"], strict=True))
    found = {k: options[k] for k in expected if k in options}
    if "conv_feature_layers" in found:
        found["conv_feature_layers"] = [(d, k) for d, k, _ in parse_conv_layers(found["conv_feature_layers"])]
    wrong = [f"{k}={found[k]!r} (tensors: {expected[k]!r})" for k in found if found[k] != expected[k]]
    if wrong:
        raise ConversionError(f"the checkpoint's config disagrees with its tensors: {'; '.join(wrong)}")


def fairseq_to_transformers(
    state: Mapping[str, Tensor], cfg: Mapping[str, Any] | None = None, *, prefix: str = ""
) -> tuple[Wav2Vec2Config, dict[str, Tensor]]:
    """The ``Wav2Vec2Config`` and ``Wav2Vec2Model`` state dict for a fairseq wav2vec 2.0 state
    dict. ``cfg``: the checkpoint's ``cfg`` or ``args`` as plain dicts, or just its model options,
    or ``None`` (then derived from shapes and standard values). Every model weight must be filled,
    with the model's shape."""
    from transformers import Wav2Vec2Model

    renamed = rename_fairseq_keys(state, prefix)
    config = derive_config(renamed, model_options(cfg))
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Wav2Vec2Model(config).state_dict().items()}
    missing = sorted(set(expected) - set(renamed))
    extra = sorted(set(renamed) - set(expected))
    if missing or extra:
        raise ConversionError(f"the converted weights do not fill Wav2Vec2Model: missing {missing}, extra {extra}")
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k])}" for k, v in renamed.items() if v.shape != expected[k]]
    if wrong:
        raise ConversionError(f"shape mismatch: {'; '.join(wrong)}")
    return config, {k: v.contiguous() for k, v in renamed.items()}


# ----------------------------------------------------------------------------------------------
# Files


#: The report of a conversion, written beside the transformers config.
REPORT_NAME = "conversion.json"


@dataclass(frozen=True)
class FairseqConversion:
    """A written folder and ``conversion_report`` of the checkpoint it came from."""

    folder: Path
    report: dict[str, Any]

    def summary(self) -> str:
        """What was carried and what was not, for a person reading the command's output."""
        carried = ", ".join(f"{e['to']}={e['value']}" for fs, e in self.report["carried"].items() if fs in DROPOUTS)
        options = ", ".join(f"{k}: {v}" for k, v in self.report["frontend_options"].items())
        lines = [
            f"wrote {self.folder}",
            f"carried: {carried}",
            f"to train it as fairseq runs it, give model.ssl {{{options}}}",
            f"input normalisation in pre-training: {self.report['task']['normalize']} (dpda's front-end "
            "normalises only with model.ssl.normalize: true)",
        ]
        lines += [
            f"not carried: {name}={entry['value']!r}: {entry['reason']}"
            for name, entry in self.report["not_carried"].items()
        ]
        return "\n".join([*lines, f"details: {self.folder / REPORT_NAME}"])


def convert_fairseq_checkpoint(
    src: str | os.PathLike[str], dst_folder: str | os.PathLike[str], *, prefix: str = ""
) -> FairseqConversion:
    """Write ``src`` (a fairseq checkpoint, or a state dict whose encoder sits under ``prefix``)
    as a ``save_pretrained`` folder loadable by ``SSLFrontEnd``: float32 weights, a
    preprocessor config whose ``do_normalize`` is the checkpoint's ``task.normalize``, and
    ``conversion.json`` (``conversion_report``). The folder appears complete or not at all
    (written beside it, then renamed); an existing one is kept."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    dst = Path(dst_folder)
    if dst.exists():
        raise FileExistsError(f"{dst} exists; remove it or pick another folder")
    state, cfg = load_fairseq_checkpoint(src)
    if not prefix and any(key.removeprefix("module.").startswith(DETECTOR_FRONTEND) for key in state):
        raise ConversionError(
            f"{src}: a whole detector's state dict (its SSL front-end under '{DETECTOR_FRONTEND}', "
            f"as the paper code saves it), not an SSL model; convert it with "
            f"`dpda convert-paper {src} DST.safetensors --model NAME`"
        )
    config, weights = fairseq_to_transformers(state, cfg, prefix=prefix)
    report = {"source": Path(src).name, **conversion_report(cfg)}
    model = Wav2Vec2Model(config)
    model.load_state_dict(weights, strict=True)
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=report["task"]["sample_rate"],
        padding_value=0.0,
        do_normalize=report["task"]["normalize"],
        return_attention_mask=config.feat_extract_norm == "layer",
    )
    with atomic_folder(dst) as tmp:
        model.save_pretrained(tmp)
        extractor.save_pretrained(tmp)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return FairseqConversion(dst, report)
