"""Writing files so that readers see the old content or the new, never half of it.

Temporary files and folders are made beside their target (so the rename is atomic) with the
permissions the umask gives any new file (0644 / 0755 under umask 022): ``tempfile.mkstemp``
would make them 0600, and a lab's shared runs folder could not read the renamed result.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for the caller to write; renamed onto ``path`` on success
    (fsynced first when ``fsync``, so a crash leaves the old or the new file), removed on failure."""
    path = Path(path)
    temporary = _sibling(path)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
    permissions = temporary.stat().st_mode
    try:
        yield temporary
        os.chmod(temporary, permissions)  # writers that replace the file (safetensors) make it 0600
        if fsync:
            fsync_path(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_path(path.parent)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A new temporary folder beside ``path`` for the caller to fill; renamed onto ``path`` (which
    must not exist) on success, removed with its contents on failure."""
    path = Path(path)
    temporary = _sibling(path)
    temporary.mkdir(parents=True)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _sibling(path: Path) -> Path:
    """A name beside ``path`` that no other writer (thread, process) picks."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``atomic_path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
