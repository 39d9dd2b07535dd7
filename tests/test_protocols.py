"""Protocol readers: the real reference protocols, synthetic files of every kind, every error."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dpda.data.errors import ProtocolError
from dpda.data.protocols import (
    PROTOCOL_KINDS,
    read_asvspoof2021,
    read_csv,
    read_protocol,
    read_trial_list,
)
from dpda.data.records import BONAFIDE, SPOOF, Utterance

LA2019 = "protocols/ASVspoof2019_LA/ASVspoof2019.LA.cm.{}.txt"


def write(path: Path, lines: list[str], *, eol: str = "\n", bom: bool = False) -> Path:
    """A text protocol with the given line ending (and optionally a UTF-8 BOM), ending in a newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "".join(line + eol for line in lines).encode())
    return path


def touch(root: Path, *relatives: str) -> None:
    """Empty files: the folder kinds must list audio without decoding it."""
    for relative in relatives:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"")


def raises(path: Path, *expected: str, line: int | None = None, call=None) -> ProtocolError:
    """Run ``call`` and check the ProtocolError names the file, the line and the expectation."""
    with pytest.raises(ProtocolError) as caught:
        call()
    message = str(caught.value)
    assert str(path) in message
    assert caught.value.path == str(path)
    assert caught.value.line == line
    if line is not None:
        assert f"{path}:{line}:" in message
    for part in expected:
        assert part in message, message
    return caught.value


# ---------------------------------------------------------------------------------------------
# The real reference protocols


def test_asvspoof2019_la_train(reference_dir: Path) -> None:
    records = read_protocol("asvspoof2019", reference_dir / LA2019.format("train.trn"))
    assert len(records) == 25_380
    assert len({r.utt_id for r in records}) == 25_380
    labels = Counter(r.label for r in records)
    assert labels == {BONAFIDE: 2_580, SPOOF: 22_800}
    assert {r.attack for r in records if r.label == SPOOF} == {f"A0{i}" for i in range(1, 7)}
    assert {r.attack for r in records if r.label == BONAFIDE} == {None}
    assert {r.speaker for r in records} == {f"LA_{i:04d}" for i in range(79, 99)}
    assert all(r.utt_id.startswith("LA_T_") and r.extra == {} for r in records)
    assert records[0] == Utterance("LA_T_1138215", "flac/LA_T_1138215.flac", BONAFIDE, None, "LA_0079")
    assert records[2_580] == Utterance("LA_T_1004644", "flac/LA_T_1004644.flac", SPOOF, "A01", "LA_0079")
    assert records[-1] == Utterance("LA_T_9982036", "flac/LA_T_9982036.flac", SPOOF, "A06", "LA_0098")


def test_asvspoof2019_la_dev(reference_dir: Path) -> None:
    records = read_protocol("asvspoof2019", reference_dir / LA2019.format("dev.trl"))
    assert len(records) == 24_844
    assert len({r.utt_id for r in records}) == 24_844
    # 2,548 bona fide trials, as the ASVspoof 2019 database paper reports for LA dev.
    assert Counter(r.label for r in records) == {BONAFIDE: 2_548, SPOOF: 22_296}
    assert Counter(r.attack for r in records if r.label == SPOOF) == {f"A0{i}": 3_716 for i in range(1, 7)}
    speakers = {f"LA_{i:04d}" for i in [*range(69, 79), *range(99, 109)]}
    assert {r.speaker for r in records} == speakers
    assert records[0] == Utterance("LA_D_1047731", "flac/LA_D_1047731.flac", BONAFIDE, None, "LA_0069")
    assert records[-1] == Utterance("LA_D_9967770", "flac/LA_D_9967770.flac", SPOOF, "A06", "LA_0078")


def test_in_the_wild(reference_dir: Path) -> None:
    records = read_protocol("in_the_wild", reference_dir / "protocols/in_the_wild/meta.csv")
    assert len(records) == 31_779
    assert len({r.utt_id for r in records}) == 31_779
    assert Counter(r.label for r in records) == {BONAFIDE: 19_963, SPOOF: 11_816}
    assert len({r.speaker for r in records}) == 54
    assert all(r.path == f"{r.utt_id}.wav" and r.attack is None and r.extra == {} for r in records)
    assert records[0] == Utterance("0", "0.wav", SPOOF, None, "Alec Guinness")
    assert records[4] == Utterance("4", "4.wav", BONAFIDE, None, "Christopher Hitchens")
    assert records[-1] == Utterance("31778", "31778.wav", SPOOF, None, "Arnold Schwarzenegger")


# ---------------------------------------------------------------------------------------------
# Whitespace-separated ASVspoof formats


def test_asvspoof2019_pa_keeps_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ASVspoof2019.PA.cm.train.trn.txt",
        [
            "PA_0079 PA_T_0000001 aaa - bonafide",
            "PA_0079 PA_T_0005401 aaa AA spoof",
            "PA_0080 PA_T_0012345 cba CB spoof",
        ],
    )
    records = read_protocol("asvspoof2019", path)
    assert records == [
        Utterance("PA_T_0000001", "flac/PA_T_0000001.flac", BONAFIDE, None, "PA_0079", {"environment": "aaa"}),
        Utterance("PA_T_0005401", "flac/PA_T_0005401.flac", SPOOF, "AA", "PA_0079", {"environment": "aaa"}),
        Utterance("PA_T_0012345", "flac/PA_T_0012345.flac", SPOOF, "CB", "PA_0080", {"environment": "cba"}),
    ]


def test_path_template_option(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", ["LA_0079 LA_T_1138215 - - bonafide"])
    (record,) = read_protocol("asvspoof2019", path, path_template="ASVspoof2019_LA_train/wav/{utt_id}.wav")
    assert record.path == "ASVspoof2019_LA_train/wav/LA_T_1138215.wav"
    with pytest.raises(ValueError, match="utt_id"):
        read_protocol("asvspoof2019", path, path_template="flac/{trial}.flac")


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_bom_crlf_blank_lines(tmp_path: Path, eol: str) -> None:
    lines = ["", "LA_0079 LA_T_1 - - bonafide", "   ", "LA_0079  LA_T_2 -\tA01 spoof", ""]
    records = read_protocol("asvspoof2019", write(tmp_path / "p.txt", lines, eol=eol, bom=True))
    assert [(r.utt_id, r.label, r.attack, r.speaker) for r in records] == [
        ("LA_T_1", BONAFIDE, None, "LA_0079"),
        ("LA_T_2", SPOOF, "A01", "LA_0079"),
    ]


LA2021 = [
    "LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval",
    "LA_0020 LA_E_7294490 g722 loc_tx bonafide bonafide notrim eval",
    "LA_0011 LA_E_1000005 none none - bonafide notrim progress",
    "LA_0012 LA_E_1000006 gsm pstn A19 spoof notrim hidden",
]
DF2021 = [
    "LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress traditional_vocoder - - - -",
    "VCC2TM2 DF_E_2000012 mp3m4a vcc2018 - bonafide notrim eval bonafide - - - -",
    "TEF2 DF_E_2000013 low_m4a vcc2020 Task1-team20 spoof notrim eval neural_vocoder_autoregressive - - - -",
]
PA2021 = [
    "PA_0010 PA_E_1000001 R3 M3 d4 r1 m1 s4 c4 spoof notrim eval",
    "PA_0010 PA_E_1000002 R3 M3 D2 - - - - bonafide notrim eval",
    "PA_0011 PA_E_1000003 R1 M2 d1 r2 m3 s2 c3 spoof trim hidden",
]


def test_asvspoof2021_la_keys(tmp_path: Path) -> None:
    records = read_protocol("asvspoof2021", write(tmp_path / "trial_metadata.txt", LA2021))
    assert [(r.utt_id, r.label, r.attack, r.speaker) for r in records] == [
        ("LA_E_9332881", SPOOF, "A07", "LA_0009"),
        ("LA_E_7294490", BONAFIDE, None, "LA_0020"),
        ("LA_E_1000005", BONAFIDE, None, "LA_0011"),
        ("LA_E_1000006", SPOOF, "A19", "LA_0012"),
    ]
    assert records[0].path == "flac/LA_E_9332881.flac"
    assert records[0].extra == {"codec": "alaw", "transmission": "ita_tx", "trim": "notrim", "phase": "eval"}
    assert records[3].extra["phase"] == "hidden"


def test_asvspoof2021_df_keys(tmp_path: Path) -> None:
    records = read_protocol("asvspoof2021", write(tmp_path / "trial_metadata.txt", DF2021))
    assert [(r.utt_id, r.label, r.attack, r.speaker) for r in records] == [
        ("DF_E_2000011", SPOOF, "A14", "LA_0023"),
        ("DF_E_2000012", BONAFIDE, None, "VCC2TM2"),
        ("DF_E_2000013", SPOOF, "Task1-team20", "TEF2"),
    ]
    assert records[0].extra == {
        "codec": "nocodec",
        "source": "asvspoof",
        "trim": "notrim",
        "phase": "progress",
        "vocoder": "traditional_vocoder",
    }
    assert records[1].extra["vocoder"] == "bonafide"


def test_asvspoof2021_pa_keys(tmp_path: Path) -> None:
    records = read_protocol("asvspoof2021", write(tmp_path / "trial_metadata.txt", PA2021))
    assert [(r.utt_id, r.label, r.attack) for r in records] == [
        ("PA_E_1000001", SPOOF, None),
        ("PA_E_1000002", BONAFIDE, None),
        ("PA_E_1000003", SPOOF, None),
    ]
    assert records[0].extra == {
        "asv_room": "R3",
        "asv_mic": "M3",
        "asv_distance": "d4",
        "attacker_room": "r1",
        "attacker_mic": "m1",
        "replay_device": "s4",
        "attacker_distance": "c4",
        "trim": "notrim",
        "phase": "eval",
    }
    assert records[1].extra == {
        "asv_room": "R3",
        "asv_mic": "M3",
        "asv_distance": "D2",
        "trim": "notrim",
        "phase": "eval",
    }


def test_asvspoof2021_phase_filter(tmp_path: Path) -> None:
    path = write(tmp_path / "trial_metadata.txt", LA2021)
    assert [r.utt_id for r in read_asvspoof2021(path, phase="eval")] == ["LA_E_9332881", "LA_E_7294490"]
    kept = read_protocol("asvspoof2021", path, phase=["progress", "hidden"])
    assert [r.utt_id for r in kept] == ["LA_E_1000005", "LA_E_1000006"]
    for bad in ("evaluation", [], ["eval", "dev"]):
        with pytest.raises(ValueError, match="eval, progress, hidden"):
            read_asvspoof2021(path, phase=bad)
    only_eval = write(tmp_path / "eval_only.txt", LA2021[:2])
    raises(
        only_eval,
        "no trials of phase hidden",
        "phases present: eval",
        call=lambda: read_asvspoof2021(only_eval, phase="hidden"),
    )


def test_trial_list(tmp_path: Path) -> None:
    path = write(tmp_path / "ASVspoof2021.LA.cm.eval.trl.txt", ["LA_E_9332881", "", "LA_E_7294490"], eol="\r\n")
    assert read_trial_list(path) == ["LA_E_9332881", "LA_E_7294490"]
    raises(
        path,
        "unlabelled trial list",
        "read_trial_list()",
        "expected 8 (ASVspoof 2021 LA keys)",
        "found 1",
        line=1,
        call=lambda: read_protocol("asvspoof2021", path),
    )
    keys = write(tmp_path / "trial_metadata.txt", LA2021)
    raises(keys, "expected 1 column", "found 8", line=1, call=lambda: read_trial_list(keys))
    repeated = write(tmp_path / "repeated.txt", ["LA_E_1", "LA_E_2", "LA_E_1"])
    raises(repeated, "duplicate utterance id 'LA_E_1'", "lines 1 and 3", line=3, call=lambda: read_trial_list(repeated))
    empty = write(tmp_path / "empty.txt", ["", " "])
    raises(empty, "empty protocol", call=lambda: read_trial_list(empty))
    raises(tmp_path / "absent.txt", "no such file", call=lambda: read_trial_list(tmp_path / "absent.txt"))


def test_asvspoof5(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ASVspoof5.dev.track_1.tsv",
        [
            "T_4850 T_0000000000 F - - - AC3 A05 spoof -",
            "T_3734 T_0000000011 F - - - - bonafide bonafide -",
            "D_0062 D_0000000001 M C03 4 D_0000000190 AC1 A11 spoof -",
        ],
    )
    records = read_protocol("asvspoof5", path)
    assert records == [
        Utterance("T_0000000000", "T_0000000000.flac", SPOOF, "A05", "T_4850", {"gender": "F", "attack_tag": "AC3"}),
        Utterance("T_0000000011", "T_0000000011.flac", BONAFIDE, None, "T_3734", {"gender": "F"}),
        Utterance(
            "D_0000000001",
            "D_0000000001.flac",
            SPOOF,
            "A11",
            "D_0062",
            {"gender": "M", "codec": "C03", "codec_q": "4", "codec_seed": "D_0000000190", "attack_tag": "AC1"},
        ),
    ]
    one = write(tmp_path / "one.tsv", ["T_1 T_0000000002 M - - - - bonafide bonafide -"])
    (record,) = read_protocol("asvspoof5", one, path_template="flac_T/{utt_id}.flac")
    assert record.path == "flac_T/T_0000000002.flac"


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_defaults(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(
        b'\xef\xbb\xbfpath,label,note\r\na/x.wav,Bonafide,"quiet, indoor"\r\n\r\nb/y.flac,FAKE,\r\nc/z.wav,1,\r\n'
    )
    records = read_protocol("csv", path)
    assert records == [
        Utterance("a/x", "a/x.wav", BONAFIDE, None, None, {"note": "quiet, indoor"}),
        Utterance("b/y", "b/y.flac", SPOOF, None, None, {}),
        Utterance("c/z", "c/z.wav", BONAFIDE, None, None, {}),
    ]


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_csv_custom_columns_sniffed_delimiter(tmp_path: Path, delimiter: str) -> None:
    rows = [
        ["id", "audio", "class", "who", "system", "lang"],
        ["u1", "clips/1.wav", "human", "spk1", "", "en"],
        ["u2", "clips/2.wav", "machine", "spk2", "tts-3", "de"],
    ]
    path = write(tmp_path / "meta.txt", [delimiter.join(row) for row in rows])
    records = read_csv(
        path,
        path_column="audio",
        label_column="class",
        id_column="id",
        speaker_column="who",
        attack_column="system",
        bonafide_values=["Human"],
        spoof_values=["machine"],
    )
    assert records == [
        Utterance("u1", "clips/1.wav", BONAFIDE, None, "spk1", {"lang": "en"}),
        Utterance("u2", "clips/2.wav", SPOOF, "tts-3", "spk2", {"lang": "de"}),
    ]
    same = read_protocol(
        "csv",
        path,
        path_column="audio",
        label_column="class",
        id_column="id",
        speaker_column="who",
        attack_column="system",
        bonafide_values=["human"],
        spoof_values=["machine"],
        delimiter=delimiter,
    )
    assert same == records


def test_csv_overlapping_label_values(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", ["path,label", "x.wav,real"])
    with pytest.raises(ValueError, match="both bona fide and spoof"):
        read_csv(path, bonafide_values=["real", "x"], spoof_values=["X"])


# ---------------------------------------------------------------------------------------------
# Folder layouts


def test_for_folder(tmp_path: Path) -> None:
    root = tmp_path / "for-norm" / "testing"
    sine = (0.1 * np.sin(np.linspace(0, 200, 1600))).astype(np.float32)
    for relative in ("real/file1.wav", "real/file2.wav", "fake/file1.wav"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / relative, sine, 16_000)
    touch(
        root,
        "real/sub/file3.MP3",
        "fake/file9.mp3_16k.wav_norm.flac",
        "real/.DS_Store",
        "fake/readme.txt",
        "fake/.hidden/file5.wav",
        "other/file6.wav",
    )
    records = read_protocol("for", root)
    assert records == [
        Utterance("real/file1", "real/file1.wav", BONAFIDE),
        Utterance("real/file2", "real/file2.wav", BONAFIDE),
        Utterance("real/sub/file3", "real/sub/file3.MP3", BONAFIDE),
        Utterance("fake/file1", "fake/file1.wav", SPOOF),
        Utterance("fake/file9.mp3_16k.wav_norm", "fake/file9.mp3_16k.wav_norm.flac", SPOOF),
    ]


def test_for_folder_names_any_case(tmp_path: Path) -> None:
    touch(tmp_path, "Real/a.wav", "FAKE/b.wav")
    records = read_protocol("for", tmp_path)
    assert [(r.utt_id, r.path, r.label) for r in records] == [
        ("Real/a", "Real/a.wav", BONAFIDE),
        ("FAKE/b", "FAKE/b.wav", SPOOF),
    ]


def test_folder_layout_with_attacks(tmp_path: Path) -> None:
    touch(tmp_path, "bonafide/s1/a.wav", "bonafide/b.flac", "spoof/A07/c.wav", "spoof/A08/deep/d.wav", "spoof/e.wav")
    records = read_protocol("folder", tmp_path)
    assert records == [
        Utterance("bonafide/b", "bonafide/b.flac", BONAFIDE),
        Utterance("bonafide/s1/a", "bonafide/s1/a.wav", BONAFIDE),
        Utterance("spoof/A07/c", "spoof/A07/c.wav", SPOOF, "A07"),
        Utterance("spoof/A08/deep/d", "spoof/A08/deep/d.wav", SPOOF, "A08"),
        Utterance("spoof/e", "spoof/e.wav", SPOOF),
    ]


def test_folder_errors(tmp_path: Path) -> None:
    touch(tmp_path / "clash", "real/a.wav", "real/a.mp3", "fake/b.wav")
    raises(
        tmp_path / "clash",
        "duplicate utterance id 'real/a'",
        "real/a.mp3",
        "real/a.wav",
        call=lambda: read_protocol("for", tmp_path / "clash"),
    )
    touch(tmp_path / "half", "real/a.wav")
    raises(
        tmp_path / "half",
        "expected sub-folders real/ and fake/",
        "missing fake/",
        "present: real/",
        call=lambda: read_protocol("for", tmp_path / "half"),
    )
    (tmp_path / "empty" / "bonafide").mkdir(parents=True)
    (tmp_path / "empty" / "spoof").mkdir()
    touch(tmp_path / "empty", "spoof/notes.txt")
    raises(
        tmp_path / "empty",
        "empty protocol",
        "audio files",
        ".wav",
        "bonafide/ and spoof/",
        call=lambda: read_protocol("folder", tmp_path / "empty"),
    )
    touch(tmp_path / "twice", "real/a.wav", "Real/b.wav", "fake/c.wav")
    raises(
        tmp_path / "twice", "Real/ and real/ both match real/", call=lambda: read_protocol("for", tmp_path / "twice")
    )
    raises(tmp_path / "absent", "no such folder", call=lambda: read_protocol("folder", tmp_path / "absent"))
    file = write(tmp_path / "file.txt", ["x"])
    raises(file, "expected a folder", call=lambda: read_protocol("for", file))


# ---------------------------------------------------------------------------------------------
# Errors of the text formats


def test_unknown_kind() -> None:
    with pytest.raises(ValueError) as caught:
        read_protocol("asvspoof2018", "protocol.txt")
    assert "asvspoof2018" in str(caught.value)
    assert all(kind in str(caught.value) for kind in PROTOCOL_KINDS)
    assert PROTOCOL_KINDS == ("asvspoof2019", "asvspoof2021", "asvspoof5", "in_the_wild", "for", "csv", "folder")


def test_malformed_line(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", ["LA_0079 LA_T_1 - - bonafide", "", "LA_0079 LA_T_2 - spoof"])
    raises(
        path, "expected 5 columns", "as on line 1", "found 4", line=3, call=lambda: read_protocol("asvspoof2019", path)
    )
    first = write(tmp_path / "first.txt", ["", "LA_0079 LA_T_1 - - bonafide extra"])
    raises(
        first,
        "expected 5 (ASVspoof 2019 LA/PA CM protocol) columns, found 6",
        line=2,
        call=lambda: read_protocol("asvspoof2019", first),
    )
    mixed = write(tmp_path / "mixed.txt", [LA2021[0], DF2021[0]])
    raises(
        mixed,
        "expected 8 columns (ASVspoof 2021 LA keys, as on line 1), found 13",
        line=2,
        call=lambda: read_protocol("asvspoof2021", mixed),
    )
    wide = write(tmp_path / "wide.txt", ["a b c d e f g h i j k"])
    raises(
        wide,
        "expected 8 (ASVspoof 2021 LA keys) or 12 (ASVspoof 2021 PA keys) or 13 (ASVspoof 2021 DF keys) "
        "columns, found 11",
        line=1,
        call=lambda: read_protocol("asvspoof2021", wide),
    )
    short = write(tmp_path / "short.tsv", ["T_4850 T_0000000000 F - A05 spoof"])
    raises(
        short,
        "expected 10 (ASVspoof 5 protocol) columns, found 6",
        line=1,
        call=lambda: read_protocol("asvspoof5", short),
    )
    csv_path = write(tmp_path / "rows.csv", ["path,label", "a.wav,spoof", "b.wav,spoof,extra"])
    raises(
        csv_path, "expected 2 columns (as in the header), found 3", line=3, call=lambda: read_protocol("csv", csv_path)
    )


def test_unknown_label(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", ["LA_0079 LA_T_1 - - bonafide", "LA_0079 LA_T_2 - A01 Spoof"])
    raises(
        path,
        "unknown label 'Spoof'",
        "expected bona fide 'bonafide' or spoof 'spoof'",
        line=2,
        call=lambda: read_protocol("asvspoof2019", path),
    )
    keys = write(tmp_path / "keys.txt", ["LA_0009 LA_E_1 alaw ita_tx A07 fake notrim eval"])
    raises(keys, "unknown label 'fake'", line=1, call=lambda: read_protocol("asvspoof2021", keys))
    itw = write(tmp_path / "meta.csv", ["file,speaker,label", "0.wav,A,spoof", "1.wav,B,bonafide"])
    raises(
        itw,
        "unknown label 'bonafide'",
        "expected bona fide 'bona-fide' or spoof 'spoof'",
        line=3,
        call=lambda: read_protocol("in_the_wild", itw),
    )
    table = write(tmp_path / "t.csv", ["path,label", "a.wav,maybe"])
    raises(
        table,
        "unknown label 'maybe'",
        "'bona-fide'",
        "'genuine'",
        "'fake'",
        line=2,
        call=lambda: read_protocol("csv", table),
    )


def test_duplicate_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.txt",
        ["LA_0079 LA_T_1 - - bonafide", "LA_0079 LA_T_2 - - bonafide", "", "LA_0080 LA_T_1 - A02 spoof"],
    )
    raises(
        path,
        "duplicate utterance id 'LA_T_1'",
        "lines 1 and 4",
        line=4,
        call=lambda: read_protocol("asvspoof2019", path),
    )
    table = write(tmp_path / "t.csv", ["path,label", "a/x.wav,spoof", "a/x.flac,spoof"])
    raises(table, "duplicate utterance id 'a/x'", "lines 2 and 3", line=3, call=lambda: read_protocol("csv", table))


def test_empty_protocol(tmp_path: Path) -> None:
    for kind in ("asvspoof2019", "asvspoof2021", "asvspoof5"):
        path = write(tmp_path / f"{kind}.txt", ["", "  "], eol="\r\n", bom=True)
        raises(path, "empty protocol", "no trial lines", call=lambda kind=kind, path=path: read_protocol(kind, path))
    header_only = write(tmp_path / "meta.csv", ["file,speaker,label"])
    raises(header_only, "empty protocol", "no data rows", call=lambda: read_protocol("in_the_wild", header_only))
    nothing = write(tmp_path / "nothing.csv", [])
    raises(nothing, "empty protocol", call=lambda: read_protocol("csv", nothing))


@pytest.mark.parametrize("kind", ["asvspoof2019", "asvspoof2021", "asvspoof5", "in_the_wild", "csv"])
def test_missing_file(tmp_path: Path, kind: str) -> None:
    raises(tmp_path / "absent.txt", "no such file", call=lambda: read_protocol(kind, tmp_path / "absent.txt"))
    raises(tmp_path, "expected a file, found a folder", call=lambda: read_protocol(kind, tmp_path))


def test_missing_csv_column(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", ["", "file,class", "a.wav,spoof"])
    raises(
        path,
        "no column 'path' (path_column)",
        "the header has 'file', 'class'",
        line=2,
        call=lambda: read_protocol("csv", path),
    )
    raises(
        path,
        "no column 'who' (speaker_column)",
        line=2,
        call=lambda: read_protocol("csv", path, path_column="file", label_column="class", speaker_column="who"),
    )
    itw = write(tmp_path / "meta.csv", ["file,label", "0.wav,spoof"])
    raises(itw, "no column 'speaker'", "'file', 'label'", line=1, call=lambda: read_protocol("in_the_wild", itw))
    twice = write(tmp_path / "twice.csv", ["path,label,path", "a.wav,spoof,b.wav"])
    raises(twice, "repeated header column(s) 'path'", line=1, call=lambda: read_protocol("csv", twice))


def test_empty_csv_cells(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", ["path,label,id", "a.wav,spoof,u1", ",spoof,u2"])
    raises(path, "empty 'path' value", line=3, call=lambda: read_protocol("csv", path))
    blank_id = write(tmp_path / "u.csv", ["path,label,id", "a.wav,spoof,"])
    raises(blank_id, "empty 'id' value", line=2, call=lambda: read_protocol("csv", blank_id, id_column="id"))


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("LA_0079 LA_T_1 - - bonafid\xe9\n".encode("latin-1"))
    raises(path, "expected UTF-8", call=lambda: read_protocol("asvspoof2019", path))
    table = tmp_path / "latin1.csv"
    table.write_bytes("path,label\nd\xe9j\xe0.wav,spoof\n".encode("latin-1"))
    raises(table, "expected UTF-8", call=lambda: read_protocol("csv", table))
