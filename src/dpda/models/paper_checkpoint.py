"""The paper's released detectors (dpda_ga on the Hugging Face hub) as dpda models and checkpoints.

Those files are torch state dicts of the paper code's ``Model`` classes: the SSL front-end under
``ssl_model.model.`` with fairseq names, the back-end at the top level (possibly behind a
``module.`` prefix left by DataParallel), and nothing else: no configuration. dpda's back-ends
keep the paper code's back-end names, so the back-end maps by prefix alone and the front-end
through the fairseq converter's table; the front-end's configuration comes from the tensors'
shapes, and its dropouts from xlsr2_300m, which every paper model fine-tuned.

``convert_paper_checkpoint`` writes the result as a dpda checkpoint (what ``dpda train`` writes:
safetensors plus JSON metadata with the experiment config). Its model config holds the
front-end's transformers config inline, so ``dpda score``, ``dpda eval`` and ``model.init``
rebuild the architecture offline, and the metadata names no file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from dpda.config import config_from_dict, config_to_dict
from dpda.models.detector import SSLDetector
from dpda.models.fairseq_convert import derive_config, load_checkpoint, map_fairseq_keys
from dpda.models.registry import SSL_BACKENDS, build
from dpda.models.weights import load_strict
from dpda.train.checkpoint import save_weights

SSL_PREFIX = "ssl_model."
FAIRSEQ_PREFIX = "ssl_model.model."

#: xlsr2_300m.pt's saved dropouts and LayerDrop (torchaudio's WAV2VEC2_XLSR_300M bundle, read off
#: the loaded fairseq model): the values the paper code fine-tuned with.
XLSR2_300M_OPTIONS = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "dropout_input": 0.0,
                      "encoder_layerdrop": 0.0}

#: How the paper code scores (main.py, data_utils.py): the bona fide logit of the first 66,800
#: samples, repeated when shorter; the experiment config of a converted checkpoint says so.
PAPER_SCORING = {"data": {"crop_length": 66800, "crop_policy": "head"},
                 "eval": {"score": "bonafide_logit", "max_seconds": 4.175}}


def _check_name(name: str) -> None:
    if name not in SSL_BACKENDS:
        raise ValueError(f"unknown paper model {name!r}; valid: {', '.join(SSL_BACKENDS)}")


def paper_model_parts(name: str, state: Mapping[str, Tensor], ssl_options: Mapping[str, Any] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The dpda model config and the dpda-named weights of a released paper-code state dict.

    ``ssl_options`` are fairseq model options over ``XLSR2_300M_OPTIONS``, for what shapes cannot
    tell at non-standard widths (e.g. ``{"encoder_attention_heads": 2}``). Keys that do not map
    stay under their own names, so that ``load_strict`` lists them with the unfilled weights."""
    _check_name(name)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    renamed, unmapped = map_fairseq_keys(state, FAIRSEQ_PREFIX)
    config = derive_config(renamed, {**XLSR2_300M_OPTIONS, **(ssl_options or {})})
    model_config = {"name": name, "ssl": {"source": config.to_dict(), "layer": "last", "freeze": False,
                                          "normalize": False, "feature_grad_mult": 1.0}}
    weights = {f"ssl.model.{k}": v for k, v in renamed.items()}
    weights.update({k: state[k] for k in unmapped})
    weights.update({k: v for k, v in state.items() if k.startswith(SSL_PREFIX) and not k.startswith(FAIRSEQ_PREFIX)})
    weights.update({f"backend.{k}": v for k, v in state.items() if not k.startswith(SSL_PREFIX)})
    return model_config, weights


def paper_model(name: str, state: Mapping[str, Tensor], ssl_options: Mapping[str, Any] | None = None) -> SSLDetector:
    """A dpda SSL detector (``xlsr_aasist``, ``xlsr_conformer_tcm``, ``xlsr_mamba``, paper
    defaults) holding the weights of a released paper-code state dict; every key that does not
    map, and every weight left unfilled, is listed in one error."""
    model_config, weights = paper_model_parts(name, state, ssl_options)
    model = build(model_config)
    load_strict(model, weights, f"the state dict of {name!r}")
    return model


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A ``torch.save`` state dict, read without unpickling arbitrary objects."""
    state = load_checkpoint(path)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}")
    others = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if others or not state:
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors); "
                         f"{'it is empty' if not state else f'entries that are no tensors: {others[:5]}'}")
    return dict(state)


def load_paper_checkpoint(path: str | os.PathLike[str], name: str,
                          ssl_options: Mapping[str, Any] | None = None) -> SSLDetector:
    """``paper_model`` of the released file ``path``."""
    _check_name(name)
    return paper_model(name, read_state_dict(path), ssl_options)


def convert_paper_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], name: str,
                             ssl_options: Mapping[str, Any] | None = None) -> Path:
    """Write the released file ``src`` as the dpda checkpoint ``dst`` (``.safetensors``, with its
    ``.json``; an existing one is kept): the model's weights and, as metadata, an experiment
    config (``PAPER_SCORING``, the model config of ``paper_model_parts``) and the source's name.
    Each file appears complete or not at all."""
    _check_name(name)
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"{dst}: the checkpoint's name must end in .safetensors")
    for path in (dst, dst.with_suffix(".json")):
        if path.exists():
            raise FileExistsError(f"{path} exists; remove it or pick another name")
    model_config, weights = paper_model_parts(name, read_state_dict(src), ssl_options)
    model = build(model_config)
    load_strict(model, weights, f"{src} ({name!r})")
    config = config_from_dict({"name": dst.stem, "model": model_config, **PAPER_SCORING}, source=str(dst))
    meta = {"config": config_to_dict(config), "model": model_config, "converted_from": Path(src).name}
    save_weights(dst, model.state_dict(), meta)
    return dst
