"""The paper's released detectors (dpda_ga on the Hugging Face hub) as dpda models.

Those checkpoints are torch state dicts of the paper code's ``Model`` classes: the SSL front-end
under ``ssl_model.model.`` with fairseq names, the back-end at the top level (possibly behind a
``module.`` prefix left by DataParallel). dpda's back-ends keep the paper code's back-end names,
so the back-end maps by prefix alone and the front-end through the fairseq converter's table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from dpda.models.detector import SSLDetector
from dpda.models.fairseq_convert import fairseq_to_transformers, load_checkpoint
from dpda.models.registry import SSL_BACKENDS, _load
from dpda.models.ssl import SSLFrontEnd

SSL_PREFIX = "ssl_model."
FAIRSEQ_PREFIX = "ssl_model.model."


def paper_model(name: str, state: Mapping[str, Tensor], ssl_options: Mapping[str, Any] | None = None) -> SSLDetector:
    """A dpda SSL detector (``xlsr_aasist``, ``xlsr_conformer_tcm``, ``xlsr_mamba``, paper
    defaults) holding the weights of a released paper-code state dict.

    The front-end's configuration comes from the tensors' shapes (the released files carry no
    fairseq config); ``ssl_options`` supplies fairseq model options that shapes cannot tell for
    non-standard widths (e.g. ``{"encoder_attention_heads": 2}``). Every key that does not map,
    and every dpda weight left unfilled, is listed in one error.
    """
    if name not in SSL_BACKENDS:
        raise ValueError(f"unknown paper model {name!r}; valid: {', '.join(SSL_BACKENDS)}")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    config, ssl_state = fairseq_to_transformers(state, ssl_options, prefix=FAIRSEQ_PREFIX)
    stray = sorted(k for k in state if k.startswith(SSL_PREFIX) and not k.startswith(FAIRSEQ_PREFIX))
    frontend = SSLFrontEnd(config)
    model = SSLDetector(frontend, _load(SSL_BACKENDS[name])(ssl_dim=frontend.output_dim))
    converted = {f"ssl.model.{k}": v for k, v in ssl_state.items()}
    converted.update({f"backend.{k}": v for k, v in state.items() if not k.startswith(SSL_PREFIX)})
    expected = model.state_dict()
    unexpected = stray + sorted(set(converted) - set(expected))
    missing = sorted(set(expected) - set(converted))
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
             for k, v in converted.items() if k in expected and v.shape != expected[k].shape]
    if unexpected or missing or wrong:
        raise ValueError(
            f"the state dict does not match dpda's {name!r}: keys without a place {unexpected}; "
            f"weights not filled {missing}; shape mismatches {wrong}"
        )
    model.load_state_dict(converted, strict=True)
    return model


def load_paper_checkpoint(path: str | os.PathLike[str], name: str,
                          ssl_options: Mapping[str, Any] | None = None) -> SSLDetector:
    """Read a released ``.pth`` without unpickling arbitrary objects, then ``paper_model``."""
    state = load_checkpoint(path)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}")
    return paper_model(name, state, ssl_options)
