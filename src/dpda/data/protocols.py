"""Protocol readers: what a corpus says about its trials, as ``Utterance`` records.

``read_protocol(kind, path, **options)`` reads one protocol; ``PROTOCOL_KINDS`` names the kinds.
Reading never opens audio, so a protocol can be checked before any audio is at hand; only the
``for`` and ``folder`` kinds list files, because there the folder layout is the protocol.
Every problem is a ``ProtocolError`` that names the file, the 1-based line where there is one, and
what was expected. Text files may have a UTF-8 BOM, CRLF line endings and blank lines.

Formats, and how their layout was checked:

``asvspoof2019``: the LA and PA CM protocols, ``SPEAKER UTT_ID ENVIRONMENT ATTACK KEY``.
    LA leaves the third column ``-``; PA puts the environment triplet there (room size, T60,
    talker-to-ASV distance, each ``a``/``b``/``c``, e.g. ``aaa``) and a replay attack duple
    (attacker-to-talker distance, replay device quality, each ``A``/``B``/``C``, e.g. ``AA``) in
    the fourth. Bona fide trials have attack ``-``. Checked against README.LA.txt and README.PA.txt
    of the ASVspoof 2019 database and the real LA train/dev protocols (tests).
``asvspoof2021``: the eval keys, ``keys/{LA,DF,PA}/CM/trial_metadata.txt``; the column count tells
    the track. LA (8): speaker, trial, codec, transmission, attack, key, trim, phase. DF (13):
    speaker, trial, codec, source corpus, attack, key, trim, phase, vocoder type, then four columns
    (task, team, gender pair, language) that the README's example line leaves ``-``. PA (12): speaker,
    trial, ASV room ``R*``, ASV microphone ``M*``, distance to the ASV (``D*`` talker for bona fide,
    ``d*`` replay device for spoofs), attacker room ``r*``, attacker microphone ``m*``, replay
    device ``s*``, attacker-to-talker distance ``c*``, key, trim, phase. Checked against the
    ASVspoof 2021 eval-package (``asvspoof-challenge/2021``: README.md explains the first line of
    each file, config.py names every column). LA bona fide lines carry ``bonafide`` in the attack
    column (a keys line quoted in ``asvspoof-challenge/asvspoof5``, evaluation-package/t-EER/README.md);
    third-party readers show ``-`` there for DF. Either becomes no attack.
    The unlabelled eval lists (``ASVspoof2021.*.cm.eval.trl.txt``, one id a line) are read by
    ``read_trial_list``. Not checked: the exact content of PA bona fide lines beyond their width.
``asvspoof5``: ``ASVspoof5.{train,dev.track_1,eval.track_1}.tsv``, space separated despite the
    suffix: ``SPEAKER_ID FLAC_FILE_NAME SPEAKER_GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG
    ATTACK_LABEL KEY TMP``, attack label ``A**`` or ``bonafide``, ``TMP`` reserved (``-``).
    Checked against the README.txt of the ASVspoof 5 release (Zenodo record 14498691). The
    10-column release is the only layout read (the pre-release ``metainfor`` lists are not).
``in_the_wild``: ``meta.csv`` with header ``file,speaker,label`` and labels ``bona-fide`` or
    ``spoof``; checked on the real file (tests). The id is the file name without extension.
``for``: a Fake-or-Real folder (e.g. ``for-norm/testing``) with ``real/`` and ``fake/``.
``folder``: ``bonafide/`` and ``spoof/`` folders; a further level under ``spoof/`` is the attack.
``csv``: any CSV with a path and a label column (``read_csv`` lists the options).

Records keep the format's further columns in ``extra`` under the names above (a ``-`` placeholder
means "not given" and is left out).
"""

from __future__ import annotations

import csv
import itertools
import os
import posixpath
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dpda.data.errors import ProtocolError
from dpda.data.records import BONAFIDE, SPOOF, Utterance
from dpda.names import PROTOCOL_KINDS
from dpda.paths import file_name_problem, is_absolute, relative_path_problem

#: ASVspoof 2019/2021 audio, relative to the partition folder (e.g. ``ASVspoof2019_LA_train``).
ASVSPOOF_PATH_TEMPLATE = "flac/{utt_id}.flac"
#: ASVspoof 5 audio, relative to the folder a partition unpacks to (``flac_T``, ``flac_D``, ``flac_E_eval``).
ASVSPOOF5_PATH_TEMPLATE = "{utt_id}.flac"
#: The phases of the ASVspoof 2021 eval keys.
ASVSPOOF2021_PHASES = ("eval", "progress", "hidden")
#: Files the folder kinds take as audio (case-insensitive); anything else in the folders is ignored.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff"})
#: Label values the ``csv`` kind accepts by default (compared case-insensitively).
CSV_BONAFIDE_VALUES = ("bonafide", "bona-fide", "bona_fide", "real", "genuine", "1")
CSV_SPOOF_VALUES = ("spoof", "fake", "0")

_ASVSPOOF_KEYS = {"bonafide": BONAFIDE, "spoof": SPOOF}
_NOT_GIVEN = "-"
_Place = int | str  # a 1-based line number, or a file relative to the protocol folder


# ---------------------------------------------------------------------------------------------
# Shared checks


def _require(path: Path, *, folder: bool = False) -> None:
    """Fail early, by name, on a missing protocol rather than with an OSError later."""
    if not path.exists():
        raise ProtocolError(path, f"no such {'folder' if folder else 'file'}")
    if folder != path.is_dir():
        wanted, found = ("a folder", "a file") if folder else ("a file", "a folder")
        raise ProtocolError(path, f"expected {wanted}, found {found}")


def _check_ids(path: Path, located: Sequence[tuple[str, _Place]], what: str) -> None:
    """An empty protocol or a repeated id is an error: scores are matched to trials by id."""
    if not located:
        raise ProtocolError(path, f"empty protocol: no {what} found")
    first: dict[str, _Place] = {}
    for utt_id, place in located:
        if utt_id not in first:
            first[utt_id] = place
            continue
        earlier = first[utt_id]
        if isinstance(place, int):
            raise ProtocolError(path, f"duplicate utterance id {utt_id!r} (lines {earlier} and {place})", place)
        raise ProtocolError(
            path,
            f"duplicate utterance id {utt_id!r} (files {earlier} and {place}); "
            "ids are paths without extension and must be unique",
        )


def _check_id(path: Path, line: int, utt_id: str) -> None:
    """An id is one token of a score file line (``<id> <score>``): no whitespace or control
    characters, which would shift the score into another column or line."""
    if any(character.isspace() or ord(character) < 32 for character in utt_id):
        raise ProtocolError(path, f"utterance id {utt_id!r} holds whitespace or a control character", line)


def _check_audio_path(path: Path, line: int, audio: str, *, allow_absolute: bool = False) -> None:
    """A protocol's audio path stays under the dataset root: an absolute path only where the
    config allows it (``allow_absolute_paths``), ``..`` never (set the data set's ``root`` higher)."""
    problem = relative_path_problem(audio, allow_absolute=allow_absolute)
    if problem is None:
        return
    hint = (
        "; give the paths relative to the dataset root, or allow absolute ones with the reader option "
        "allow_absolute_paths: true"
        if is_absolute(audio)
        else "; set the data set's root to a folder above instead"
    )
    raise ProtocolError(path, f"audio path {audio!r} would leave the dataset root: {problem}{hint}", line)


def _label(path: Path, line: int, raw: str, labels: Mapping[str, int], *, fold: bool = False) -> int:
    """The 0/1 label of a key value, or an error that lists the accepted values."""
    label = labels.get(raw.casefold() if fold else raw)
    if label is None:
        bonafide = ", ".join(repr(v) for v, x in labels.items() if x == BONAFIDE)
        spoof = ", ".join(repr(v) for v, x in labels.items() if x == SPOOF)
        raise ProtocolError(path, f"unknown label {raw!r}; expected bona fide {bonafide} or spoof {spoof}", line)
    return label


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The non-blank lines, stripped, with their 1-based numbers (a BOM and CRLF are tolerated)."""
    _require(path)
    with path.open(encoding="utf-8-sig") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if text := line.strip():
                    yield number, text
        except UnicodeDecodeError as error:
            raise ProtocolError(path, f"expected UTF-8 text: {error}") from None


def _without_extension(relative: str) -> str:
    """Ids drop the extension, so that an id names the trial rather than its audio encoding."""
    return posixpath.splitext(relative)[0]


def _check_template(template: str) -> None:
    """A bad template is the caller's mistake: say so before reading anything."""
    try:
        template.format(utt_id="x")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"path_template {template!r} may use only the field {{utt_id}} ({error!r})") from None


# ---------------------------------------------------------------------------------------------
# Whitespace-separated ASVspoof formats: one reader, the formats differ in their column spec


@dataclass(frozen=True)
class _Layout:
    """The named columns of one whitespace-separated format.

    ``speaker``, ``utt_id``, ``attack`` and ``key`` fill the record's fields; every other column
    goes into ``extra`` under its name unless it holds the placeholder ``-``.
    """

    name: str
    columns: tuple[str, ...]


_ROLES = frozenset({"speaker", "utt_id", "attack", "key"})
_ASVSPOOF2019 = _Layout("ASVspoof 2019 LA/PA CM protocol", ("speaker", "utt_id", "environment", "attack", "key"))
_ASVSPOOF2021 = (
    _Layout("ASVspoof 2021 LA keys", ("speaker", "utt_id", "codec", "transmission", "attack", "key", "trim", "phase")),
    _Layout(
        "ASVspoof 2021 PA keys",
        (
            "speaker",
            "utt_id",
            "asv_room",
            "asv_mic",
            "asv_distance",
            "attacker_room",
            "attacker_mic",
            "replay_device",
            "attacker_distance",
            "key",
            "trim",
            "phase",
        ),
    ),
    _Layout(
        "ASVspoof 2021 DF keys",
        (
            "speaker",
            "utt_id",
            "codec",
            "source",
            "attack",
            "key",
            "trim",
            "phase",
            "vocoder",
            "task",
            "team",
            "gender_pair",
            "language",
        ),
    ),
)
_ASVSPOOF5 = _Layout(
    "ASVspoof 5 protocol",
    ("speaker", "utt_id", "gender", "codec", "codec_q", "codec_seed", "attack_tag", "attack", "key", "reserved"),
)


def _read_columns(
    path: Path, layouts: Sequence[_Layout], path_template: str, hints: Mapping[int, str] | None = None
) -> list[Utterance]:
    """Read a whitespace-separated protocol whose first line picks the layout from ``layouts``.

    ``hints`` explains a first line of an unexpected width (e.g. a trial list given for a key).
    """
    _check_template(path_template)
    by_width = {len(layout.columns): layout for layout in layouts}
    layout: _Layout | None = None
    first_line = 0
    located: list[tuple[Utterance, int]] = []
    for number, text in _lines(path):
        fields = text.split()
        if layout is None:
            layout, first_line = by_width.get(len(fields)), number
            if layout is None:
                expected = " or ".join(f"{len(each.columns)} ({each.name})" for each in layouts)
                hint = (hints or {}).get(len(fields))
                raise ProtocolError(
                    path, f"expected {expected} columns, found {len(fields)}" + (f"; {hint}" if hint else ""), number
                )
        elif len(fields) != len(layout.columns):
            raise ProtocolError(
                path,
                f"expected {len(layout.columns)} columns ({layout.name}, as on line {first_line}), found {len(fields)}",
                number,
            )
        row = dict(zip(layout.columns, fields))
        problem = file_name_problem(row["utt_id"])
        if problem is not None:  # the id becomes a file name through the path template
            raise ProtocolError(path, f"utterance id {row['utt_id']!r} is not a plain file name: {problem}", number)
        attack = row.get("attack", _NOT_GIVEN)
        record = Utterance(
            utt_id=row["utt_id"],
            path=path_template.format(utt_id=row["utt_id"]),
            label=_label(path, number, row["key"], _ASVSPOOF_KEYS),
            attack=None if attack in (_NOT_GIVEN, "bonafide") else attack,
            speaker=row["speaker"],
            extra={name: value for name, value in row.items() if name not in _ROLES and value != _NOT_GIVEN},
        )
        located.append((record, number))
    _check_ids(path, [(record.utt_id, number) for record, number in located], "trial lines")
    return [record for record, _ in located]


def read_asvspoof2019(path: str | Path, *, path_template: str = ASVSPOOF_PATH_TEMPLATE) -> list[Utterance]:
    """An ASVspoof 2019 LA or PA CM protocol (``ASVspoof2019.{LA,PA}.cm.*.txt``).

    The attack is the LA system id (``A01``...) or the PA attack duple (``AA``...); the PA
    environment id is ``extra["environment"]``. ``path_template`` maps the id to the audio file
    relative to the partition folder.
    """
    return _read_columns(Path(path), (_ASVSPOOF2019,), path_template)


def read_asvspoof2021(
    path: str | Path, *, phase: str | Collection[str] | None = None, path_template: str = ASVSPOOF_PATH_TEMPLATE
) -> list[Utterance]:
    """ASVspoof 2021 LA, DF or PA eval keys (``trial_metadata.txt``), the track told by the width.

    ``phase`` keeps only the trials of that phase (or phases): ``eval``, ``progress``, ``hidden``;
    results are usually reported on ``eval``. All columns but speaker, trial, attack and key are
    kept in ``extra`` (codec, transmission or source, vocoder, the PA factors, trim, phase).
    """
    wanted = None if phase is None else {phase} if isinstance(phase, str) else set(phase)
    if wanted is not None and (not wanted or not wanted <= set(ASVSPOOF2021_PHASES)):
        raise ValueError(f"phase must be one or more of {', '.join(ASVSPOOF2021_PHASES)}; got {phase!r}")
    hint = "this looks like an unlabelled trial list (one id a line): read it with read_trial_list()"
    records = _read_columns(Path(path), _ASVSPOOF2021, path_template, hints={1: hint})
    if wanted is None:
        return records
    kept = [record for record in records if record.extra.get("phase") in wanted]
    if not kept:
        present = sorted({record.extra.get("phase", _NOT_GIVEN) for record in records})
        raise ProtocolError(
            path, f"no trials of phase {', '.join(sorted(wanted))}; phases present: {', '.join(present)}"
        )
    return kept


def read_asvspoof5(path: str | Path, *, path_template: str = ASVSPOOF5_PATH_TEMPLATE) -> list[Utterance]:
    """An ASVspoof 5 track-1 protocol (``ASVspoof5.train.tsv``, ``ASVspoof5.{dev,eval}.track_1.tsv``).

    The attack is ``ATTACK_LABEL``; gender, codec, codec quality, codec seed (the uncoded original)
    and the attacker's adaptation tag are kept in ``extra`` where given.
    """
    return _read_columns(Path(path), (_ASVSPOOF5,), path_template)


def read_trial_list(path: str | Path) -> list[str]:
    """The ids of an unlabelled trial list (one a line, e.g. ``ASVspoof2021.LA.cm.eval.trl.txt``).

    Such a list has no labels, so it makes no ``Utterance``; scoring needs only the ids.
    """
    path = Path(path)
    located: list[tuple[str, _Place]] = []
    for number, text in _lines(path):
        fields = text.split()
        if len(fields) != 1:
            raise ProtocolError(path, f"expected 1 column (a trial id), found {len(fields)}", number)
        located.append((fields[0], number))
    _check_ids(path, located, "trial ids")
    return [utt_id for utt_id, _ in located]


# ---------------------------------------------------------------------------------------------
# CSV


def read_csv(
    path: str | Path,
    *,
    path_column: str = "path",
    label_column: str = "label",
    bonafide_values: Collection[str] = CSV_BONAFIDE_VALUES,
    spoof_values: Collection[str] = CSV_SPOOF_VALUES,
    id_column: str | None = None,
    speaker_column: str | None = None,
    attack_column: str | None = None,
    delimiter: str | None = None,
    allow_absolute_paths: bool = False,
) -> list[Utterance]:
    """A CSV with a header, one trial a row: the audio path and its label, optionally more.

    Paths are relative to the dataset root and may not climb out of it with ``..``; absolute
    paths only with ``allow_absolute_paths`` (a protocol is data, and may come from anyone).
    Label values are compared case-insensitively. Without ``id_column`` the id is the path without
    its extension. ``delimiter`` defaults to the one sniffed from the first lines (``,``, ``;``,
    tab or ``|``). Columns not used for the record's fields go into ``extra`` where non-empty.
    """
    path = Path(path)
    if not isinstance(allow_absolute_paths, bool):
        raise ValueError(f"allow_absolute_paths: expected true or false, got {allow_absolute_paths!r}")
    labels = {value.casefold(): BONAFIDE for value in bonafide_values}
    overlap = labels.keys() & {value.casefold() for value in spoof_values}
    if overlap:
        raise ValueError(f"label values {sorted(overlap)} are both bona fide and spoof")
    labels.update({value.casefold(): SPOOF for value in spoof_values})
    named = {
        "path_column": path_column,
        "label_column": label_column,
        "id_column": id_column,
        "speaker_column": speaker_column,
        "attack_column": attack_column,
    }
    used = {column for column in named.values() if column is not None}
    _require(path)
    located: list[tuple[Utterance, int]] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            if delimiter is None:
                delimiter = _sniff_delimiter("".join(itertools.islice(handle, 20)))
                handle.seek(0)
            reader = csv.reader(handle, delimiter=delimiter)
            header: list[str] | None = None
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if header is None:
                    header = _csv_header(path, [cell.strip() for cell in row], named, reader.line_num)
                    continue
                number = reader.line_num
                if len(row) != len(header):
                    raise ProtocolError(
                        path, f"expected {len(header)} columns (as in the header), found {len(row)}", number
                    )
                cells = dict(zip(header, (cell.strip() for cell in row)))
                file = cells[path_column]
                utt_id = cells[id_column] if id_column else _without_extension(file)
                if not file or not utt_id:
                    raise ProtocolError(path, f"empty {path_column if not file else id_column!r} value", number)
                _check_audio_path(path, number, file, allow_absolute=allow_absolute_paths)
                _check_id(path, number, utt_id)
                record = Utterance(
                    utt_id=utt_id,
                    path=file,
                    label=_label(path, number, cells[label_column], labels, fold=True),
                    attack=(cells[attack_column] or None) if attack_column else None,
                    speaker=(cells[speaker_column] or None) if speaker_column else None,
                    extra={name: value for name, value in cells.items() if name not in used and value},
                )
                located.append((record, number))
        except (UnicodeDecodeError, csv.Error) as error:
            raise ProtocolError(path, f"expected UTF-8 CSV text: {error}") from None
    _check_ids(path, [(record.utt_id, number) for record, number in located], "data rows")
    return [record for record, _ in located]


def _sniff_delimiter(sample: str) -> str:
    """The delimiter of the first lines; a comma when they do not tell (e.g. a single column)."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _csv_header(path: Path, header: list[str], named: Mapping[str, str | None], line: int) -> list[str]:
    """The header, checked to hold every column the options name, each once."""
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise ProtocolError(path, f"repeated header column(s) {', '.join(map(repr, repeated))}", line)
    for option, column in named.items():
        if column is not None and column not in header:
            raise ProtocolError(
                path, f"no column {column!r} ({option}); the header has {', '.join(map(repr, header))}", line
            )
    return header


def read_in_the_wild(path: str | Path) -> list[Utterance]:
    """In-the-Wild's ``meta.csv`` (``file,speaker,label``; ``bona-fide`` or ``spoof``).

    The path is the file name (relative to the release folder) and the id that name without its
    extension, as for the other kinds.
    """
    return read_csv(
        path,
        path_column="file",
        label_column="label",
        speaker_column="speaker",
        bonafide_values=("bona-fide",),
        spoof_values=("spoof",),
        delimiter=",",
    )


# ---------------------------------------------------------------------------------------------
# Folder layouts: the files are the protocol


def _read_class_folders(root: str | Path, classes: Mapping[str, int], *, attack_level: bool) -> list[Utterance]:
    """The audio files under one sub-folder per class (names matched case-insensitively).

    Paths are relative to ``root`` and ids those paths without extension; with ``attack_level``
    the first folder below a spoof class folder names the attack.
    """
    root = Path(root)
    _require(root, folder=True)
    wanted = " and ".join(f"{name}/" for name in classes)
    folders: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        name = entry.name.casefold()
        if name in classes and entry.is_dir():
            if name in folders:
                raise ProtocolError(root, f"sub-folders {folders[name].name}/ and {entry.name}/ both match {name}/")
            folders[name] = entry
    missing = [f"{name}/" for name in classes if name not in folders]
    if missing:
        present = ", ".join(f"{entry.name}/" for entry in sorted(root.iterdir()) if entry.is_dir()) or "none"
        raise ProtocolError(
            root,
            f"expected sub-folders {wanted} (any case), missing {', '.join(missing)}; sub-folders present: {present}",
        )
    located: list[tuple[Utterance, str]] = []
    for name, label in classes.items():
        for relative in _audio_files(folders[name], root):
            parts = PurePosixPath(relative).parts
            attack = parts[1] if attack_level and label == SPOOF and len(parts) > 2 else None
            located.append((Utterance(_without_extension(relative), relative, label, attack=attack), relative))
    extensions = ", ".join(sorted(AUDIO_EXTENSIONS))
    _check_ids(
        root, [(record.utt_id, place) for record, place in located], f"audio files ({extensions}) under {wanted}"
    )
    return [record for record, _ in located]


def _audio_files(folder: Path, root: Path) -> list[str]:
    """The audio files below ``folder`` (links followed, hidden entries skipped), sorted, relative to ``root``."""
    found = []
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                found.append(Path(directory, name).relative_to(root).as_posix())
    return sorted(found)


def read_for(path: str | Path) -> list[Utterance]:
    """A Fake-or-Real folder (e.g. ``for-norm/testing``): ``real/`` holds bona fide audio, ``fake/`` spoofs."""
    return _read_class_folders(path, {"real": BONAFIDE, "fake": SPOOF}, attack_level=False)


def read_folder(path: str | Path) -> list[Utterance]:
    """A folder with ``bonafide/`` and ``spoof/``; ``spoof/<ATTACK>/...`` names the attack."""
    return _read_class_folders(path, {"bonafide": BONAFIDE, "spoof": SPOOF}, attack_level=True)


# ---------------------------------------------------------------------------------------------
# Dispatch

_READERS: dict[str, Callable[..., list[Utterance]]] = {
    "asvspoof2019": read_asvspoof2019,
    "asvspoof2021": read_asvspoof2021,
    "asvspoof5": read_asvspoof5,
    "in_the_wild": read_in_the_wild,
    "for": read_for,
    "csv": read_csv,
    "folder": read_folder,
}
if set(_READERS) != set(PROTOCOL_KINDS):  # one reader per kind dpda.names lists, checked on import
    raise ImportError(f"protocol readers {sorted(_READERS)} do not match dpda.names.PROTOCOL_KINDS")


def read_protocol(kind: str, path: str | Path, **options: Any) -> list[Utterance]:
    """The trials of a protocol of ``kind``, in file order; ``options`` go to that kind's reader.

    An unknown kind is a ``ValueError`` listing ``PROTOCOL_KINDS``; an option the reader does not
    take is Python's ``TypeError``.
    """
    reader = _READERS.get(kind)
    if reader is None:
        raise ValueError(f"unknown protocol kind {kind!r}; valid kinds: {', '.join(PROTOCOL_KINDS)}")
    return reader(path, **options)
