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
    samples (``decode=True`` reads every sample; ``False`` reads headers only) are collected
    and raised together as one ``AudioValidationError`` naming each file and its problem.
    All-silent files are a warning, listed in the report.
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
        return info.frames / info.samplerate, None, False
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as error:  # soundfile.LibsndfileError
        return 0.0, f"cannot decode ({error})", False
    if data.size == 0:
        return 0.0, "no samples", False
    if not np.isfinite(data).all():
        return 0.0, f"{int((~np.isfinite(data)).sum())} NaN or infinite sample(s)", False
    return len(data) / rate, None, not np.any(data)
