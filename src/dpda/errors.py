"""The base of every error a user can cause (a bad file, key, value or command-line argument).

The CLI prints these as one line and exits 2; any other exception is a bug in dpda and keeps its
traceback. Subclasses keep a builtin base too (``ValueError``, ``RuntimeError``) so that callers
of the library who catch those go on working.
"""


class DpdaError(Exception):
    """An error the user caused and can fix; its message names the file, key or value."""
