"""Weights into a built model, strictly: every key in its place with its shape, or one error that
lists all that do not fit (``load_state_dict`` stops at the first kind and names no file).

``load_init`` reads a model's initial weights (``model.init`` of a config) from a safetensors
file, such as a dpda checkpoint; it never unpickles, so a file cannot run code when read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from dpda.errors import DpdaError


class WeightsError(DpdaError, ValueError):
    """Weights that do not fit the model (keys, shapes), or an init file that is not safetensors."""


def load_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model``; a key without a place, a weight left unfilled or a shape
    that differs is a ``WeightsError`` naming ``source`` and listing each of them."""
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    wrong = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if unexpected or missing or wrong:
        raise WeightsError(
            f"{source} does not fit the model: keys without a place {_listed(unexpected)}; "
            f"weights not filled {_listed(missing)}; shape mismatches {_listed(wrong)}"
        )
    model.load_state_dict(state, strict=True)


def _listed(items: list[str], shown: int = 20) -> str:
    """``items`` as a list, cut after ``shown`` with the count (another model's file differs in
    hundreds of keys)."""
    return str(items) if len(items) <= shown else f"{items[:shown]} and {len(items) - shown} more"


def load_init(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Initialise ``model`` from the safetensors file ``path`` (``load_strict``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init: {path} is not a file (expected a .safetensors checkpoint)")
    try:
        state = load_file(path)
    except SafetensorError as error:
        raise WeightsError(
            f"model.init: {path} is not a safetensors file ({error}); dpda never unpickles weights: "
            "convert a released .pth with `dpda convert-paper`"
        ) from None
    load_strict(model, state, f"model.init {path}")
