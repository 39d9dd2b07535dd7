"""The paper's released detectors as dpda checkpoints (``dpda convert-paper``).

A released file is a ``torch.save`` state dict (``dpda.models.paper_checkpoint`` maps it); this
writes what ``dpda train`` writes: safetensors plus JSON metadata with an experiment config,
whose model config holds the front-end's transformers config inline, so ``dpda score``,
``dpda eval`` and ``model.init`` rebuild the architecture offline and the metadata names no file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dpda.checkpoint import save_weights
from dpda.config import config_from_dict, config_to_dict
from dpda.models import build
from dpda.models.fairseq_convert import ConversionError
from dpda.models.paper_checkpoint import check_name, paper_model_parts, read_state_dict
from dpda.models.weights import load_strict

#: How the paper code scores (main.py, data_utils.py): the bona fide logit of the first 66,800
#: samples, repeated when shorter; the experiment config of a converted checkpoint says so.
PAPER_SCORING = {
    "data": {"crop_length": 66800, "crop_policy": "head"},
    "eval": {"score": "bonafide_logit", "max_seconds": 4.175},
}


def convert_paper_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], name: str, ssl_options: Mapping[str, Any] | None = None
) -> Path:
    """Write the released file ``src`` as the dpda checkpoint ``dst`` (``.safetensors``, with its
    ``.json``; an existing one is kept): the model's weights and, as metadata, an experiment
    config (``PAPER_SCORING``, the model config of ``paper_model_parts``) and the source's name.
    Each file appears complete or not at all."""
    check_name(name)
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ConversionError(f"{dst}: the checkpoint's name must end in .safetensors")
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
