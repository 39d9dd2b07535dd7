"""The Debian and Python packages the corpus needs: found, installed (as root) or named."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
from collections.abc import Iterable

from dpda.corpus.generators import GENERATORS
from dpda.corpus.sources import SOURCES
from dpda.errors import DpdaError


class MissingPackagesError(DpdaError, RuntimeError):
    """Raised before any work when a package is absent and cannot be installed here."""


def apt_packages() -> list[str]:
    return sorted({s.package for s in SOURCES} | {p for g in GENERATORS for p in g.apt})


def pip_packages() -> list[str]:
    return sorted({p for g in GENERATORS for p in g.pip})


def apt_version(package: str) -> str | None:
    """The installed version of a Debian package, ``None`` when it is not installed."""
    if shutil.which("dpkg-query") is None:
        return None
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status} ${Version}", package], capture_output=True, text=True, check=False
    )
    status = result.stdout.split()
    return status[-1] if result.returncode == 0 and status[:3] == ["install", "ok", "installed"] else None


def pip_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _apt_install(packages: Iterable[str]) -> bool:
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    for attempt in range(2):  # a stale package list is refreshed once
        if subprocess.run(command, env=environment, check=False).returncode == 0:
            return True
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-q"], env=environment, check=False)
    return False


def ensure_packages(install: bool = True) -> None:
    """Install missing Debian packages with apt when running as root (and ``install``), else
    raise ``MissingPackagesError`` saying exactly what to install; Python packages are named
    (the ``corpus`` extra), never installed behind the user's back."""
    missing_apt = [p for p in apt_packages() if apt_version(p) is None]
    can_install = install and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")
    if missing_apt and can_install and _apt_install(missing_apt):
        missing_apt = [p for p in missing_apt if apt_version(p) is None]
    missing_pip = [p for p in pip_packages() if pip_version(p) is None]
    problems = []
    if missing_apt:
        problems.append(f"Debian packages {', '.join(missing_apt)}: sudo apt-get install {' '.join(missing_apt)}")
    if missing_pip:
        problems.append(
            f"Python packages {', '.join(missing_pip)}: pip install 'dpda[corpus]' "
            f"(or pip install {' '.join(missing_pip)} 'setuptools<81')"
        )
    if problems:
        raise MissingPackagesError("the built-in corpus needs " + "; ".join(problems))
