"""The paper's released detectors (dpda_ga on the Hugging Face hub) as dpda models and checkpoints.

Those files are torch state dicts of the paper code's ``Model`` classes: the SSL front-end under
``ssl_model.model.`` with fairseq names, the back-end at the top level (possibly behind a
``module.`` prefix left by DataParallel), and nothing else: no configuration. dpda's back-ends
keep the paper code's back-end names, so the back-end maps by prefix alone and the front-end
through the fairseq converter's table; the front-end's configuration comes from the tensors'
shapes, and its dropouts from xlsr2_300m, which every paper model fine-tuned.
``paper_model_parts`` gives the model config with the front-end's transformers config inline,
so a checkpoint written from it (``dpda.train.released``) rebuilds offline.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from dpda.models.detector import SSLDetector
from dpda.models.fairseq_convert import (
    DETECTOR_FRONTEND,
    ConversionError,
    derive_config,
    load_checkpoint,
    map_fairseq_keys,
)
from dpda.models.registry import SSL_BACKENDS, build
from dpda.models.weights import load_strict

SSL_PREFIX = "ssl_model."
FAIRSEQ_PREFIX = DETECTOR_FRONTEND

#: xlsr2_300m.pt's saved dropouts and LayerDrop (torchaudio's WAV2VEC2_XLSR_300M bundle, read off
#: the loaded fairseq model): the values the paper code fine-tuned with.
XLSR2_300M_OPTIONS = {
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "dropout_input": 0.0,
    "encoder_layerdrop": 0.0,
}


def check_name(name: str) -> None:
    if name not in SSL_BACKENDS:
        raise ConversionError(f"unknown paper model {name!r}; valid: {', '.join(SSL_BACKENDS)}")


def paper_model_parts(
    name: str, state: Mapping[str, Tensor], ssl_options: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The dpda model config and the dpda-named weights of a released paper-code state dict.

    ``ssl_options`` are fairseq model options over ``XLSR2_300M_OPTIONS``, for what shapes cannot
    tell at non-standard widths (e.g. ``{"encoder_attention_heads": 2}``). Keys that do not map
    stay under their own names, so that ``load_strict`` lists them with the unfilled weights."""
    check_name(name)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    renamed, unmapped = map_fairseq_keys(state, FAIRSEQ_PREFIX)
    config = derive_config(renamed, {**XLSR2_300M_OPTIONS, **(ssl_options or {})})
    model_config = {
        "name": name,
        "ssl": {
            "source": config.to_dict(),
            "layer": "last",
            "freeze": False,
            "normalize": False,
            "feature_grad_mult": 1.0,
        },
    }
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
    assert isinstance(model, SSLDetector)  # paper_model_parts admits only the SSL back-ends' names
    load_strict(model, weights, f"the state dict of {name!r}")
    return model


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A ``torch.save`` state dict, read without unpickling arbitrary objects."""
    state = load_checkpoint(path)
    if not isinstance(state, Mapping):
        raise ConversionError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}"
        )
    others = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if others or not state:
        raise ConversionError(
            f"{path}: expected a state dict (a mapping of names to tensors); "
            f"{'it is empty' if not state else f'entries that are no tensors: {others[:5]}'}"
        )
    return dict(state)


def load_paper_checkpoint(
    path: str | os.PathLike[str], name: str, ssl_options: Mapping[str, Any] | None = None
) -> SSLDetector:
    """``paper_model`` of the released file ``path``."""
    check_name(name)
    return paper_model(name, read_state_dict(path), ssl_options)
