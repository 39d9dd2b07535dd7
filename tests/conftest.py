"""Shared test fixtures: the reference data folder beside the project."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (../shared/reference beside the project)")
    return REFERENCE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny labelled corpus of real FLAC files (see tiny_runs.py)."""
    from tiny_runs import write_corpus

    return write_corpus(tmp_path_factory.mktemp("data"))
