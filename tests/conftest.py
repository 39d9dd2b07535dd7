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


@pytest.fixture(scope="session")
def lfcc_run(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus, run folder) of one really trained LFCC-LCNN (see tiny_runs.train_lfcc), shared by
    the tests that package, score and serve a detector."""
    from tiny_runs import train_lfcc, write_corpus

    corpus = write_corpus(tmp_path_factory.mktemp("lfcc-data"))
    return corpus, train_lfcc(corpus, tmp_path_factory.mktemp("lfcc-runs"))
