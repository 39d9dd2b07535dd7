"""Names and relative paths that come from data (protocols, configs, checkpoints, other people's
run folders) and must stay inside the folder they are joined to.

A protocol's ``../../etc/x`` or a checkpoint's eval-set name ``/home/you/.bashrc`` would make dpda
read or overwrite a file elsewhere; callers refuse the value, naming it, with the reason these
give. Backslashes count as separators too, so a file made on Windows is judged the same here.
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath


def is_absolute(path: str) -> bool:
    """Whether ``path`` is absolute here or on Windows (``/x``, ``C:\\x``, ``C:x``, ``\\\\host\\share``)."""
    return PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute() or bool(PureWindowsPath(path).drive)


def relative_path_problem(path: str, *, allow_absolute: bool = False) -> str | None:
    """Why ``path``, joined to a folder, would not stay inside it (``None`` when it stays, or when
    it is absolute and ``allow_absolute``: then it names its own place)."""
    if "\0" in path:
        return "it holds a NUL character"
    if is_absolute(path):
        return None if allow_absolute else "it is an absolute path"
    if ".." in PureWindowsPath(path).parts:  # PureWindowsPath splits at both / and \
        return "it climbs out of its folder with '..'"
    return None


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a plain file name inside one folder (``None`` when it can): no
    separators, not empty, not ``.``/``..``, no hidden-file dot in front, no control characters."""
    if not name:
        return "it is empty"
    if any(separator in name for separator in "/\\"):
        return "it holds a path separator"
    if name.startswith("."):
        return "it starts with '.'"
    if any(ord(character) < 32 for character in name):
        return "it holds a control character"
    return None
