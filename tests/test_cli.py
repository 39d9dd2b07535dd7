"""The installed ``dpda`` command."""

from __future__ import annotations

import subprocess
import sys

from dpda import __version__


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpda", *args], capture_output=True, text=True, timeout=120)


def test_version_and_help():
    assert run("--version").stdout.strip() == f"dpda {__version__}"
    help_text = run("--help").stdout
    assert "aligners" in help_text and "usage: dpda" in help_text


def test_aligners_lists_every_method():
    listing = run("aligners").stdout
    for name in ("pcgrad", "gradvac", "cagrad", "mean", "sum", "upgrad", "nash_mtl"):
        assert f"\n{name} " in f"\n{listing}"


def test_unknown_command_is_an_error():
    completed = run("trian")
    assert completed.returncode == 2 and "invalid choice" in completed.stderr
