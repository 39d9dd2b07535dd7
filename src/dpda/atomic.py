"""Writing files so that readers see the old content or the new, never half of it.

Temporary files and folders are made beside their target (so the rename is atomic) with the
permissions the umask gives any new file (0644 / 0755 under umask 022): ``tempfile.mkstemp``
would make them 0600, and a lab's shared runs folder could not read the renamed result.

A temporary is named ``.{target}.{host}.{pid}.{random}.tmp`` after its writer, so that the
temporaries of a writer that was killed (and so never renamed nor removed them) can be told
from those of one still at work: :func:`remove_orphans`.

A write that finds no room (disk full, quota, file size limit) raises an ``OSError`` naming the
target, whatever the writer raised (safetensors' writer raises its own error with the OS error
in the text), so that callers can say which file did not fit.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The errors of a write that found no room, and what each means.
NO_SPACE = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file size limit (ulimit -f) is reached",
}
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{32}\.tmp")
_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust writers (safetensors) show the OS error


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
    temporary = temporary_sibling(path)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
    permissions = temporary.stat().st_mode
    try:
        yield temporary
        os.chmod(temporary, permissions)  # writers that replace the file (safetensors) make it 0600
        if fsync:
            fsync_path(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        _raise_no_space(error, path)
        raise
    if fsync:
        fsync_path(path.parent)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A new temporary folder beside ``path`` for the caller to fill; renamed onto ``path`` (which
    must not exist) on success, removed with its contents on failure."""
    path = Path(path)
    temporary = temporary_sibling(path)
    temporary.mkdir(parents=True)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        _raise_no_space(error, path)
        raise


def temporary_sibling(path: Path) -> Path:
    """A name beside ``path`` that no other writer (thread, process) picks, naming this process."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def _raise_no_space(error: BaseException, path: Path) -> None:
    """Raise ``error`` as an ``OSError`` naming ``path`` when it is a write that found no room and
    names no file itself; return otherwise."""
    if isinstance(error, OSError):
        code = error.errno if error.filename is None else None
    else:
        found = _OS_ERROR.search(str(error))
        code = int(found[1]) if found else None
    if code in NO_SPACE:
        raise OSError(code, os.strerror(code), str(path)) from error


def remove_orphans(folder: Path, *, locked: bool = False) -> list[Path]:
    """Delete the temporaries under ``folder`` (at any depth) that no writer will rename or remove,
    and return them: those of a process of this host that has ended or, when the caller holds the
    folder's lock (``locked``: no other process writes there), every one."""
    removed = []
    for parent, folders, files in os.walk(folder):
        for name in [*folders, *files]:
            found = _TEMPORARY.fullmatch(name)
            if found is None or not (locked or _ended(found["host"], int(found["pid"]))):
                continue
            path = Path(parent, name)
            if name in folders:
                folders.remove(name)
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _ended(host: str, pid: int) -> bool:
    """Whether process ``pid`` of ``host`` is known to have ended (only this host's can be asked)."""
    if host != _HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``atomic_path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
