"""ASV and SASV score files read into typed arrays: the trials the t-DCF and the a-DCF are taken over.

The min t-DCF of a countermeasure needs a fixed ASV system's scores of target, nontarget and
spoof trials; the a-DCF a spoofing-aware speaker verification (SASV) system's scores of such
trials. Three forms are read, all whitespace-separated columns, one trial a line (blank lines
skipped, a UTF-8 BOM and CRLF line ends allowed); KEY is ``target``, ``nontarget`` or ``spoof``
and SCORE a finite number (higher = more "accept"). Anything else is refused at its file and
line, with what was expected:

``2019`` (``read_asv_scores(path)``, 3 columns ``SOURCE KEY SCORE``): the ASVspoof 2019 LA
    organisers' ASV scores, ``ASVspoof2019.LA.asv.{dev,eval}.gi.trl.scores.txt``, as the official
    2019 t-DCF script reads them (key in the second column, score in the third). The first column
    is kept as text and not used. The form names no utterances, so its trials cannot be checked
    against the CM trials (in ASVspoof 2019 the ASV and CM trial lists differ anyway).
``2021`` (``read_asv_scores(score_file, keys=key_file)``): the ASVspoof 2021 LA ASV keys and
    scores, two files paired line by line. The key file (``keys/LA/ASV/trial_metadata.txt``) has
    8 columns ``SPEAKER UTTERANCE CODEC TRANSMISSION ATTACK KEY TRIM PHASE``, the score file 3
    columns ``SPEAKER UTTERANCE SCORE``; line i of the score file scores the trial of line i of
    the key file, and must name the same speaker and utterance. This is the layout the 2021
    eval-package's t-DCF code reads (key in column 6, phase in column 8, score in column 3,
    rows paired by position); it was not checked against the released files here, so a file of
    another layout is refused at its first line rather than misread.
``sasv`` (``read_sasv_scores(path)``, or ``read_asv_scores`` of a 4-column file): 4 columns
    ``ENROLMENT_SPEAKER TEST_UTTERANCE SCORE KEY``, the SASV 2022 / ASVspoof 5 form that the
    ``a_dcf`` package reads (score in the third column, key in the fourth).

Forms that name utterances are checked against the CM protocol's trials by ``check_trials``:
every test utterance must be a CM trial and every CM trial a test utterance, spoof trials must
be CM spoofs and target/nontarget trials CM bona fide, and no (speaker, utterance) pair may be
repeated; the errors name the first ids and lines and count all of them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from dpda.data.records import BONAFIDE, SPOOF, Utterance
from dpda.errors import DpdaError

__all__ = ["KEYS", "AsvScoreError", "TrialScores", "check_trials", "read_asv_scores", "read_sasv_scores"]

#: the trial keys, in the order of ``TrialScores.keys``' codes (0, 1, 2)
KEYS = ("target", "nontarget", "spoof")
Form = Literal["2019", "2021", "sasv"]
_LAYOUTS = {
    "2019": "3 columns 'SOURCE KEY SCORE' (the ASVspoof 2019 LA ASV score form)",
    "2021 keys": "8 columns 'SPEAKER UTTERANCE CODEC TRANSMISSION ATTACK KEY TRIM PHASE' (the ASVspoof 2021 LA "
    "ASV key form, keys/LA/ASV/trial_metadata.txt)",
    "2021 scores": "3 columns 'SPEAKER UTTERANCE SCORE' (the ASVspoof 2021 ASV score form, paired line by line "
    "with the key file)",
    "sasv": "4 columns 'ENROLMENT_SPEAKER TEST_UTTERANCE SCORE KEY' (the SASV score form)",
}
_SHOWN = 5  # how many offending ids a message lists


class AsvScoreError(DpdaError, ValueError):
    """An ASV or SASV score file that is not of its form, or whose trials do not match the CM's."""


@dataclass(frozen=True)
class TrialScores:
    """The trials of an ASV or SASV score file, one entry per trial in file order."""

    source: str  # the file (for the 2021 form: the score file, then the key file), for messages
    form: Form
    keys: NDArray[np.int8]  # index into KEYS
    scores: NDArray[np.float64]
    lines: NDArray[np.int64]  # 1-based line of each trial (2021: in the key file)
    speakers: tuple[str, ...] | None = None  # enrolment (claimed) speaker; None in the 2019 form
    utterances: tuple[str, ...] | None = None  # test utterance; None in the 2019 form
    phases: tuple[str, ...] | None = None  # the 2021 form's PHASE column

    def of(self, key: str) -> NDArray[np.float64]:
        """The scores of the trials with ``key`` (target, nontarget or spoof)."""
        return self.scores[self.keys == KEYS.index(key)]

    @property
    def counts(self) -> dict[str, int]:
        return {key: int(np.count_nonzero(self.keys == code)) for code, key in enumerate(KEYS)}

    def in_phases(self, phases: Collection[str]) -> TrialScores:
        """The trials of the 2021 form whose phase is one of ``phases`` (the official t-DCF takes
        one phase's trials); another form is returned whole."""
        if self.phases is None:
            return self
        keep = np.array([phase in phases for phase in self.phases], dtype=bool)
        kept = np.flatnonzero(keep)
        return replace(
            self,
            keys=self.keys[keep],
            scores=self.scores[keep],
            lines=self.lines[keep],
            speakers=None if self.speakers is None else tuple(self.speakers[i] for i in kept),
            utterances=None if self.utterances is None else tuple(self.utterances[i] for i in kept),
            phases=tuple(self.phases[i] for i in kept),
        )

    def require_every_key(self) -> None:
        """Refuse trials that lack a key: the t-DCF and the a-DCF need targets, nontargets and spoofs."""
        counts = self.counts
        absent = [key for key, count in counts.items() if count == 0]
        if absent:
            found = ", ".join(f"{count} {key}" for key, count in counts.items())
            raise AsvScoreError(
                f"{self.source}: no {' and no '.join(absent)} trials ({found}); the t-DCF and the a-DCF need "
                "target, nontarget and spoof trials"
            )


def read_asv_scores(path: str | Path, keys: str | Path | None = None) -> TrialScores:
    """An ASV score file: the 2019 form (3 columns), the SASV form (4 columns; the width of the
    first line decides, and every line must have it), or with ``keys`` the 2021 score file and
    its key file (module docstring)."""
    path = Path(path)
    if keys is not None:
        return _read_2021(path, Path(keys))
    rows = _rows(path)
    width = len(rows[0][1])
    if width == 4:
        return _sasv(path, rows)
    if width != 3:
        raise AsvScoreError(
            f"{path}:{rows[0][0]}: expected {_LAYOUTS['2019']} or {_LAYOUTS['sasv']} (or, with an ASV key file, "
            f"the 2021 score form), got {width} columns: {' '.join(rows[0][1])!r}"
        )
    keys_, scores = _keys_and_scores(path, rows, "2019", key_column=1, score_column=2)
    trials = TrialScores(str(path), "2019", keys_, scores, _line_numbers(rows))
    trials.require_every_key()
    return trials


def read_sasv_scores(path: str | Path) -> TrialScores:
    """A SASV score file, ``ENROLMENT_SPEAKER TEST_UTTERANCE SCORE KEY`` (module docstring)."""
    path = Path(path)
    return _sasv(path, _rows(path))


def _sasv(path: Path, rows: list[tuple[int, list[str]]]) -> TrialScores:
    keys, scores = _keys_and_scores(path, rows, "sasv", key_column=3, score_column=2)
    speakers, utterances = _ids(rows)
    trials = TrialScores(str(path), "sasv", keys, scores, _line_numbers(rows), speakers, utterances)
    _no_repeats(trials)
    trials.require_every_key()
    return trials


def _read_2021(path: Path, keys: Path) -> TrialScores:
    key_rows, score_rows = _rows(keys), _rows(path)
    codes, _ = _keys_and_scores(keys, key_rows, "2021 keys", key_column=5)
    _, scores = _keys_and_scores(path, score_rows, "2021 scores", score_column=2)
    if len(key_rows) != len(score_rows):
        raise AsvScoreError(
            f"{path}: {len(score_rows)} scored trials, but the key file {keys} lists {len(key_rows)}; the files are "
            "paired line by line"
        )
    for (key_line, key_fields), (score_line, score_fields) in zip(key_rows, score_rows):
        if key_fields[:2] != score_fields[:2]:
            raise AsvScoreError(
                f"{path}:{score_line}: scores speaker/utterance {' '.join(score_fields[:2])!r}, but the key file's "
                f"trial at the same position ({keys}:{key_line}) is {' '.join(key_fields[:2])!r}; the files are "
                "paired line by line"
            )
    speakers, utterances = _ids(key_rows)
    phases = tuple(fields[7] for _, fields in key_rows)
    trials = TrialScores(
        f"{path} (keys {keys})", "2021", codes, scores, _line_numbers(key_rows), speakers, utterances, phases
    )
    _no_repeats(trials)
    trials.require_every_key()
    return trials


def check_trials(trials: TrialScores, records: Sequence[Utterance]) -> None:
    """Refuse ``trials`` whose test utterances are not exactly the CM trials ``records``, or whose
    keys contradict the CM labels (a spoof trial of a bona fide utterance, a target or nontarget
    trial of a spoofed one). The 2019 form names no utterances and is not checked."""
    if trials.utterances is None:
        return
    labels = {record.utt_id: record.label for record in records}
    present = set(trials.utterances)
    extra: dict[str, int] = {}
    contradicting: list[str] = []
    for utterance, key, line in zip(trials.utterances, trials.keys.tolist(), trials.lines.tolist()):
        label = labels.get(utterance)
        if label is None:
            extra.setdefault(utterance, line)
        elif (label == SPOOF) != (KEYS[key] == "spoof"):
            cm = "bona fide" if label == BONAFIDE else "spoof"
            contradicting.append(f"{utterance} (line {line}: {KEYS[key]}, CM: {cm})")
    missing = [record.utt_id for record in records if record.utt_id not in present]
    problems = []
    if extra:
        shown = [f"{utterance} (line {line})" for utterance, line in extra.items()]
        problems.append(f"{len(extra)} test utterance(s) that the CM protocol does not list: {_listed(shown)}")
    if missing:
        problems.append(f"{len(missing)} CM trial(s) that it has no trial of: {_listed(missing)}")
    if contradicting:
        problems.append(f"{len(contradicting)} trial key(s) that contradict the CM label: {_listed(contradicting)}")
    if problems:
        raise AsvScoreError(
            f"{trials.source}: its trials do not match the CM trials ({len(records)} in the protocol): "
            + "; ".join(problems)
        )


def _listed(items: Sequence[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, columns) of every non-blank line; a missing or empty file is refused."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise AsvScoreError(f"{path}: cannot read the score file: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise AsvScoreError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    rows = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not rows:
        raise AsvScoreError(f"{path}: no trials (the file is empty)")
    return rows


def _keys_and_scores(
    path: Path,
    rows: list[tuple[int, list[str]]],
    layout: str,
    *,
    key_column: int | None = None,
    score_column: int | None = None,
) -> tuple[NDArray[np.int8], NDArray[np.float64]]:
    """Each row's key code and score, the rows checked line by line (width, key, score) so that
    the first bad line is the one named."""
    width = {"2019": 3, "2021 keys": 8, "2021 scores": 3, "sasv": 4}[layout]
    keys, scores = [], []
    for number, fields in rows:
        if len(fields) != width:
            raise AsvScoreError(
                f"{path}:{number}: expected {_LAYOUTS[layout]}, got {len(fields)} columns: {' '.join(fields)!r}"
            )
        if key_column is not None:
            keys.append(_key(path, number, fields[key_column]))
        if score_column is not None:
            scores.append(_score(path, number, fields[score_column]))
    return np.array(keys, dtype=np.int8), np.array(scores, dtype=np.float64)


def _ids(rows: list[tuple[int, list[str]]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The speaker (first) and utterance (second) columns."""
    return tuple(fields[0] for _, fields in rows), tuple(fields[1] for _, fields in rows)


def _line_numbers(rows: list[tuple[int, list[str]]]) -> NDArray[np.int64]:
    return np.array([number for number, _ in rows], dtype=np.int64)


def _key(path: Path, line: int, text: str) -> int:
    if text not in KEYS:
        raise AsvScoreError(f"{path}:{line}: trial key {text!r} is not one of {', '.join(KEYS)}")
    return KEYS.index(text)


def _score(path: Path, line: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AsvScoreError(f"{path}:{line}: score {text!r} is not a number") from None
    if not math.isfinite(value):
        raise AsvScoreError(f"{path}:{line}: score {text!r} is not finite (NaN or infinite)")
    return value


def _no_repeats(trials: TrialScores) -> None:
    """Refuse a (speaker, utterance) trial given twice: one of its scores would count twice."""
    assert trials.speakers is not None and trials.utterances is not None
    first: dict[tuple[str, str], int] = {}
    repeated = []
    for pair, line in zip(zip(trials.speakers, trials.utterances), trials.lines.tolist()):
        if pair in first:
            repeated.append(f"{' '.join(pair)} (lines {first[pair]} and {line})")
        else:
            first[pair] = line
    if repeated:
        raise AsvScoreError(f"{trials.source}: {len(repeated)} repeated trial(s): {_listed(repeated)}")
