"""The exclusive lock of a run folder, so that one training at a time writes there (two would
interleave their rows and overwrite each other's state).

``fcntl.flock`` on ``DIR/.lock``, taken without waiting by the process that writes the folder
(rank 0) and held for the whole training. The kernel drops it when that process ends, however it
ends, so the file a killed run leaves does not block the next one: it stays, is locked again and
names its new owner (pid, host, start time, command line), which a second training is shown.
Loader workers forked by the owner share the lock and end with it. On NFS, Linux takes flock as a
byte-range lock, which every client sees.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from dpda.errors import DpdaError

LOCK_FILE = ".lock"


class FolderInUseError(DpdaError, RuntimeError):
    """A run folder another process is training in."""


class RunLock:
    """The held lock of ``folder`` (see the module doc); :meth:`release` lets it go."""

    def __init__(self, folder: Path) -> None:
        """Take the lock of ``folder`` (made if missing) or raise ``FolderInUseError`` naming its owner."""
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # the umask applies
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 4096, 0).decode(errors="replace").strip() or "its owner not yet written"
            os.close(self._fd)
            raise FolderInUseError(
                f"{folder} is in use by another training ({owner}); wait for it to end or stop it, then run "
                "the command again"
            ) from None
        except BaseException:
            os.close(self._fd)
            raise
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        owner = f"pid {os.getpid()} on {socket.gethostname()} since {started}: {shlex.join(sys.orig_argv)}\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, owner.encode(), 0)

    def release(self) -> None:
        """Let the lock go (closing the file does); later calls do nothing."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
