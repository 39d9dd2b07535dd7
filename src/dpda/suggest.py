"""The "did you mean" hint of every error about an unknown name (config keys, models,
augmentations, their options), so that they all read the same."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: object, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid name nearest to ``name``, or ``""`` when none is near.

    >>> did_you_mean("pcgard", ["pcgrad", "gradvac"])
    " (did you mean 'pcgrad'?)"
    >>> did_you_mean("zzz", ["pcgrad"])
    ''
    """
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
