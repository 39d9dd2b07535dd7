"""Check every audio file of a protocol before any long work starts, reporting all problems at once."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from dpda.data.errors import AudioValidationError
from dpda.data.records import Utterance

#: The soundfile subtypes whose samples can be NaN or infinite (integer PCM and FLAC cannot).
FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
_BLOCK_FRAMES = 1 << 15  # frames per block when the header check reads a float file's samples


@dataclass
class ValidationReport:
    """What validation found: durations in seconds by utterance id, and silent files (warnings)."""

    durations: dict[str, float] = field(default_factory=dict)
    silent: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(self.durations.values())


def validate(
    records: Sequence[Utterance],
    root: str | Path,
    *,
    decode: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> ValidationReport:
    """Check that every record's file exists and decodes, in parallel, with a progress bar.

    Missing or empty files, corrupt headers, unsupported formats, zero samples and NaN/inf
    samples are collected and raised together as one ``AudioValidationError`` naming each file
    and its problem. ``decode=True`` decodes every file; ``False`` reads headers, and the samples
    of float files only (FLOAT/DOUBLE subtypes, in small blocks): they are the only ones that can
    hold NaN/inf, and one such sample turns a training step's gradients into NaN. All-silent files
    are a warning, listed in the report (``decode=True`` only).
    """
    root = Path(root)
    if not root.is_dir():
        raise AudioValidationError([(str(root), "the dataset root is not a folder")])
    workers = workers or min(32, (os.cpu_count() or 1) * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checks = pool.map(lambda record: _check(record, root, decode), records)
        results = list(tqdm(checks, total=len(records), desc="validating audio", unit="file", disable=not progress))
    report = ValidationReport()
    problems: list[tuple[str, str]] = []
    for record, (seconds, problem, silent) in zip(records, results):
        where = str(root / record.path) if record.path else record.utt_id
        if problem:
            problems.append((where, problem))
            continue
        report.durations[record.utt_id] = seconds
        if silent:
            report.silent.append(where)
    if problems:
        raise AudioValidationError(problems)
    if report.silent:
        warnings.warn(f"{len(report.silent)} all-silent audio file(s), e.g. {report.silent[0]}", stacklevel=2)
    return report


def _check(record: Utterance, root: Path, decode: bool) -> tuple[float, str | None, bool]:
    """(duration in seconds, problem or None, all silent) for one file."""
    if record.path is None:
        return 0.0, f"utterance {record.utt_id!r}: the protocol names no audio file", False
    path = root / record.path
    if not path.is_file():
        return 0.0, "file not found", False
    if path.stat().st_size == 0:
        return 0.0, "empty file (0 bytes)", False
    try:
        info = sf.info(str(path))
    except RuntimeError as error:  # soundfile.LibsndfileError
        return 0.0, f"unreadable: corrupt header or unsupported format ({error})", False
    if info.frames <= 0:
        return 0.0, "no samples", False
    if not decode:
        return info.frames / info.samplerate, _float_samples_problem(path, info.subtype), False
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as error:  # soundfile.LibsndfileError
        return 0.0, f"cannot decode ({error})", False
    if data.size == 0:
        return 0.0, "no samples", False
    problem = _samples_problem(_non_finite(data))
    return (0.0, problem, False) if problem else (len(data) / rate, None, not np.any(data))


def _float_samples_problem(path: Path, subtype: str) -> str | None:
    """The NaN/inf samples of a float file, read in small blocks as training reads them
    (float32, so a DOUBLE too large for it counts); None at once for other subtypes."""
    if subtype not in FLOAT_SUBTYPES:
        return None
    try:
        blocks = sf.blocks(str(path), blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True)
        return _samples_problem(sum(_non_finite(block) for block in blocks))
    except RuntimeError as error:  # soundfile.LibsndfileError
        return f"cannot decode ({error})"


def _non_finite(samples: np.ndarray) -> int:
    return int(samples.size - np.count_nonzero(np.isfinite(samples)))


def _samples_problem(non_finite: int) -> str | None:
    return f"{non_finite} NaN or infinite sample(s)" if non_finite else None
