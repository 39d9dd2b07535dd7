"""The base of every error a user can cause (a bad file, key, value or command-line argument).

The CLI prints these as one line and exits 2; any other exception is a bug in dpda and keeps its
traceback. Subclasses keep a builtin base too (``ValueError``, ``RuntimeError``) so that callers
of the library who catch those go on working.
"""

from collections.abc import Sequence


def listed(items: Sequence[str], limit: int) -> str:
    """The first ``limit`` of ``items`` for an error message, and how many more there are."""
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


class DpdaError(Exception):
    """An error the user caused and can fix; its message names the file, key or value."""
