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

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from dpda.data.records import BONAFIDE, SPOOF, Utterance
from dpda.errors import DpdaError, listed

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
    text = _text(path)
    line, fields = _first_line(path, text)
    if len(fields) == 4:
        return _sasv(_table(path, text, "sasv"))
    if len(fields) != 3:
        raise AsvScoreError(
            f"{path}:{line}: expected {_LAYOUTS['2019']} or {_LAYOUTS['sasv']} (or, with an ASV key file, "
            f"the 2021 score form), got {len(fields)} columns: {' '.join(fields)!r}"
        )
    table = _table(path, text, "2019")
    trials = TrialScores(str(path), "2019", _codes(table, 1), _floats(table, 2), table.lines)
    trials.require_every_key()
    return trials


def read_sasv_scores(path: str | Path) -> TrialScores:
    """A SASV score file, ``ENROLMENT_SPEAKER TEST_UTTERANCE SCORE KEY`` (module docstring)."""
    path = Path(path)
    return _sasv(_table(path, _text(path), "sasv"))


def _sasv(table: _Table) -> TrialScores:
    speakers, utterances = tuple(table.columns[0]), tuple(table.columns[1])
    trials = TrialScores(
        str(table.path), "sasv", _codes(table, 3), _floats(table, 2), table.lines, speakers, utterances
    )
    _no_repeats(trials)
    trials.require_every_key()
    return trials


def _read_2021(path: Path, keys: Path) -> TrialScores:
    key_table = _table(keys, _text(keys), "2021 keys")
    score_table = _table(path, _text(path), "2021 scores")
    codes, scores = _codes(key_table, 5), _floats(score_table, 2)
    if len(key_table.lines) != len(score_table.lines):
        raise AsvScoreError(
            f"{path}: {len(score_table.lines)} scored trials, but the key file {keys} lists {len(key_table.lines)}; "
            "the files are paired line by line"
        )
    for column in (0, 1):
        if key_table.columns[column] != score_table.columns[column]:
            pairs = zip(key_table.columns[column], score_table.columns[column])
            row = next(index for index, (key, score) in enumerate(pairs) if key != score)
            ids = [" ".join(table.columns[c][row] for c in (0, 1)) for table in (score_table, key_table)]
            raise AsvScoreError(
                f"{path}:{score_table.lines[row]}: scores speaker/utterance {ids[0]!r}, but the key file's trial at "
                f"the same position ({keys}:{key_table.lines[row]}) is {ids[1]!r}; the files are paired line by line"
            )
    speakers, utterances, phases = (tuple(key_table.columns[c]) for c in (0, 1, 7))
    trials = TrialScores(f"{path} (keys {keys})", "2021", codes, scores, key_table.lines, speakers, utterances, phases)
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
    return listed(items, _SHOWN)


@dataclass(frozen=True)
class _Table:
    """The non-blank lines of a file as columns of text, every line of the layout's width."""

    path: Path
    lines: NDArray[np.int64]  # 1-based line number of each row
    columns: list[list[str]]


_WIDTHS = {"2019": 3, "2021 keys": 8, "2021 scores": 3, "sasv": 4}


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise AsvScoreError(f"{path}: cannot read the score file: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise AsvScoreError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None


def _first_line(path: Path, text: str) -> tuple[int, list[str]]:
    """The number and columns of the first non-blank line; an empty file is refused."""
    for number, line in enumerate(text.splitlines(), start=1):
        if fields := line.split():
            return number, fields
    raise AsvScoreError(f"{path}: no trials (the file is empty)")


def _table(path: Path, text: str, layout: str) -> _Table:
    """The file's rows as columns, each line's width checked (its keys and scores are checked by
    ``_codes`` and ``_floats``, so a width error is named before a bad key on an earlier line).
    Columns of strings rather than a list per row: a million small lists would keep the garbage
    collector busy for seconds."""
    width = _WIDTHS[layout]
    numbers: list[int] = []
    columns: list[list[str]] = [[] for _ in range(width)]
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != width:
            raise AsvScoreError(
                f"{path}:{number}: expected {_LAYOUTS[layout]}, got {len(fields)} columns: {' '.join(fields)!r}"
            )
        numbers.append(number)
        for column, value in zip(columns, fields):
            column.append(value)
    if not numbers:
        raise AsvScoreError(f"{path}: no trials (the file is empty)")
    return _Table(path, np.array(numbers, dtype=np.int64), columns)


def _codes(table: _Table, column: int) -> NDArray[np.int8]:
    """The key column as indices into KEYS; the first line with another value is refused."""
    values = np.array(table.columns[column])
    codes = np.full(values.shape, -1, dtype=np.int8)
    for code, key in enumerate(KEYS):
        codes[values == key] = code
    bad = np.flatnonzero(codes < 0)
    if bad.size:
        first = table.columns[column][bad[0]]
        raise AsvScoreError(
            f"{table.path}:{table.lines[bad[0]]}: trial key {first!r} is not one of {', '.join(KEYS)}"
            + (f" ({bad.size} such lines)" if bad.size > 1 else "")
        )
    return codes


def _floats(table: _Table, column: int) -> NDArray[np.float64]:
    """The score column as numbers; the first line whose score is no finite number is refused."""
    texts = table.columns[column]
    try:
        scores = np.array(texts, dtype=np.float64)
    except ValueError:
        for row, text in enumerate(texts):
            try:
                float(text)
            except ValueError:
                raise AsvScoreError(f"{table.path}:{table.lines[row]}: score {text!r} is not a number") from None
        raise  # numpy refused what float() reads: a bug to report, not a user's error
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise AsvScoreError(
            f"{table.path}:{table.lines[bad[0]]}: score {texts[bad[0]]!r} is not finite (NaN or infinite)"
            + (f" ({bad.size} such lines)" if bad.size > 1 else "")
        )
    return scores


def _no_repeats(trials: TrialScores) -> None:
    """Refuse a (speaker, utterance) trial given twice: one of its scores would count twice."""
    assert trials.speakers is not None and trials.utterances is not None
    pairs = list(map("\t".join, zip(trials.speakers, trials.utterances)))
    if len(set(pairs)) == len(pairs):
        return
    first: dict[str, int] = {}
    repeated = []
    for pair, line in zip(pairs, trials.lines.tolist()):
        if pair in first:
            repeated.append(f"{pair.replace(chr(9), ' ')} (lines {first[pair]} and {line})")
        else:
            first[pair] = line
    raise AsvScoreError(f"{trials.source}: {len(repeated)} repeated trial(s): {_listed(repeated)}")
