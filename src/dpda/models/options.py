"""Checking a model configuration against a constructor, with a suggestion for a misspelt key."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any


def checked_options(factory: Callable[..., Any], config: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``config`` as keyword arguments of ``factory``; an unknown key is a ``ValueError`` that
    names it, suggests the nearest valid key and lists them all."""
    allowed = [name for name, p in inspect.signature(factory).parameters.items()
               if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in config:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{what}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")
    return dict(config)


class FromConfig:
    """``from_config(config)``: build a model from a configuration dict of its keyword arguments."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Any:
        return cls(**checked_options(cls, config, cls.__name__))
