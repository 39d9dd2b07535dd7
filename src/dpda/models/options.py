"""Checking a model configuration against a constructor, with a suggestion for a misspelt key."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from dpda.suggest import did_you_mean


def checked_options(factory: Callable[..., Any], config: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``config`` as keyword arguments of ``factory``; an unknown key is a ``ValueError`` that
    names it, suggests the nearest valid key and lists them all."""
    allowed = [
        name
        for name, p in inspect.signature(factory).parameters.items()
        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for key in config:
        if key not in allowed:
            raise ValueError(f"{what}: unknown key {key!r}{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")
    return dict(config)


class FromConfig:
    """``from_config(config)``: build a model from a configuration dict of its keyword arguments."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Any:
        return cls(**checked_options(cls, config, cls.__name__))
