"""``build(config)``: a detector from a configuration dict; ``config["name"]`` picks the model.

Models on raw audio take their hyperparameters as the other keys. SSL detectors
(``xlsr_aasist``, ``xlsr_conformer_tcm``, ``xlsr_mamba``, ``xlsr_sls``) take an ``ssl`` dict for
the front-end (``SSLFrontEnd``'s keywords, with ``source`` a local folder, a hub id, or a transformers config
dict, as a converted paper checkpoint holds; or ``{"preset": "xlsr_300m"}`` (``ssl.PRESETS``:
XLS-R, MMS, the base models, Whisper) for a random model of a published shape; or
``{"tiny": "wav2vec2"}`` (``ssl.TINY_KINDS``: ``whisper``, ``data2vec-audio``, ...) for a tiny
random front-end in tests) and the back-end's keywords as the other keys; the back-end's input width
follows the front-end. Any model takes ``init``: a safetensors file of its weights to start from.

``custom`` imports the class it names, so it runs code: callers that build a model from a file
someone handed over (a checkpoint's metadata, a run folder's config read back for a resume) pass
``trust_code=False`` unless the user said otherwise (``--trust-code``), and such a config is
refused before anything is imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from dpda.models.ssl import SSLFrontEnd

from dpda.errors import DpdaError
from dpda.models.options import checked_options
from dpda.models.weights import load_init
from dpda.suggest import did_you_mean

#: The paper's front-end (XLS-R 300M), as a hub id; pass a local folder where offline.
DEFAULT_SSL_SOURCE = "facebook/wav2vec2-xls-r-300m"

#: name -> "module:class" of the model (raw audio) or of the back-end (SSL detectors).
RAW_MODELS = {
    "aasist": "dpda.models.aasist:AASIST",
    "aasist_l": "dpda.models.aasist:AASIST",
    "rawnet2": "dpda.models.rawnet2:RawNet2",
    "lfcc_lcnn": "dpda.models.lcnn:LFCCLCNN",
}
SSL_BACKENDS = {
    "xlsr_aasist": "dpda.models.aasist:XLSRAASISTBackEnd",
    "xlsr_conformer_tcm": "dpda.models.conformer_tcm:ConformerTCMBackEnd",
    "xlsr_mamba": "dpda.models.mamba:MambaBackEnd",
    "xlsr_sls": "dpda.models.sls:SLSBackEnd",
}
#: SSL back-ends that read more than one hidden state, and the ``SSLFrontEnd`` subclass (same
#: options) that hands them over; the others get ``SSLFrontEnd`` itself.
SSL_FRONTENDS = {"xlsr_sls": "dpda.models.sls:LayerStackFrontEnd"}
#: Any detector of the user's: ``{"name": "custom", "class": "package.module:ClassName", ...options}``.
CUSTOM = "custom"
MODEL_NAMES = (*RAW_MODELS, *SSL_BACKENDS, CUSTOM)


class UntrustedCodeError(DpdaError, ValueError):
    """A model config from an untrusted file names code to import (``custom``'s ``class``)."""


def build(config: Mapping[str, Any], *, trust_code: bool = True) -> nn.Module:
    """The detector ``config["name"]`` with the configuration's other keys as hyperparameters;
    ``init``, when given, names a safetensors file (e.g. a dpda checkpoint) whose weights the
    built model then takes, every key and shape matching (``weights.load_init``). Without
    ``trust_code`` a ``custom`` model (an import) is refused."""
    options = dict(config)
    init = options.pop("init", None)
    if init is not None and not isinstance(init, (str, os.PathLike)):
        raise ValueError(f"model.init: expected the path of a .safetensors file, got {init!r}")
    if options.get("name") == CUSTOM and not trust_code:
        raise UntrustedCodeError(
            f"model 'custom' names the class {options.get('class')!r} to import, and dpda imports no code that a "
            "checkpoint or run folder names; if you trust the file, pass --trust-code (trust_code=True in Python)"
        )
    model = _build(options)
    if init is not None:
        load_init(model, init)
    return model


def architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without ``init``: what rebuilds the model for weights that come from elsewhere
    (a checkpoint, a saved state), so that no file named in the config is read, nor need exist."""
    return {key: value for key, value in config.items() if key != "init"}


def self_contained(config: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """``architecture(config)`` that names no front-end folder or hub id either: an SSL
    detector's ``ssl.source`` becomes its front-end's transformers config (what a checkpoint
    stores), so that the model rebuilds offline from the checkpoint alone and a checkpoint
    handed over makes dpda read no path of the machine it was trained on."""
    options = architecture(config)
    ssl = options.get("ssl") or {}
    if options.get("name") not in SSL_BACKENDS or not isinstance(ssl, Mapping) or ssl.get("tiny") or ssl.get("preset"):
        return options  # a tiny or preset front-end rebuilds from its name
    ssl = {key: value for key, value in ssl.items() if key not in ("revision", "local_files_only")}
    source = cast("PreTrainedModel", model.get_submodule("ssl.model")).config.to_dict()
    source.pop("_name_or_path", None)  # where it was loaded from
    ssl["source"] = source
    return {**options, "ssl": ssl}


def _build(options: dict[str, Any]) -> nn.Module:
    name = options.pop("name", None)
    if name not in MODEL_NAMES:
        raise ValueError(
            f"model: unknown name {name!r}{did_you_mean(name, MODEL_NAMES)}; valid names: {', '.join(MODEL_NAMES)}"
        )
    if name == CUSTOM:
        target = options.pop("class", None)
        if not isinstance(target, str) or ":" not in target:
            raise ValueError(f"model 'custom': give class: 'package.module:ClassName', got {target!r}")
        try:
            factory = _load(target)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"model 'custom': cannot import {target!r} ({error})") from error
        return factory(**checked_options(factory, options, f"model {target!r}"))
    if name in RAW_MODELS:
        factory = _load(RAW_MODELS[name])
        if name == "aasist_l":
            from dpda.models.aasist import AASIST_L_CONFIG

            options = {**AASIST_L_CONFIG, **options}
        return factory(**checked_options(factory, options, f"model {name!r}"))
    from dpda.models.detector import SSLDetector
    from dpda.models.ssl import SSLFrontEnd, preset_config

    ssl_options = dict(options.pop("ssl", {}) or {})
    tiny, preset = ssl_options.pop("tiny", None), ssl_options.pop("preset", None)
    checked = checked_options(SSLFrontEnd, ssl_options, f"model {name!r}: ssl")
    source = checked.pop("source", None)  # null: not given (a config over a base that names one)
    given = [key for key, value in (("tiny", tiny), ("preset", preset), ("source", source)) if value]
    if len(given) > 1:
        raise ValueError(f"model {name!r}: ssl: give one of 'tiny', 'preset' or 'source', not {' and '.join(given)}")
    frontend_class = ssl_frontend_class(name)
    if tiny is not None:
        frontend = frontend_class.tiny(tiny, **checked)
    elif preset is not None:
        frontend = frontend_class(preset_config(preset), **checked)
    else:
        source = source or DEFAULT_SSL_SOURCE
        try:
            frontend = frontend_class(source, **checked)
        except OSError as error:
            raise OSError(
                f"model {name!r}: cannot load the SSL front-end {str(source)!r} ({error}). Give "
                "ssl.source as a local save_pretrained folder, e.g. one written by "
                "`dpda convert-fairseq xlsr2_300m.pt FOLDER`"
            ) from error
    backend_factory = _load(SSL_BACKENDS[name])
    options.setdefault("ssl_dim", frontend.output_dim)
    if options["ssl_dim"] != frontend.output_dim:
        raise ValueError(
            f"model {name!r}: ssl_dim {options['ssl_dim']} differs from the front-end's "
            f"width {frontend.output_dim}; leave it out"
        )
    backend = backend_factory(**checked_options(backend_factory, options, f"model {name!r}"))
    return SSLDetector(frontend, backend)


def ssl_frontend_class(name: str) -> type[SSLFrontEnd]:
    """The front-end class SSL back-end ``name`` is built on (``SSL_FRONTENDS``, else ``SSLFrontEnd``)."""
    from dpda.models.ssl import SSLFrontEnd

    return _load(SSL_FRONTENDS[name]) if name in SSL_FRONTENDS else SSLFrontEnd


def _load(target: str) -> Any:
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)
