"""ASV and SASV score files (dpda.evaluate.asv): the three forms read into arrays, every bad line
refused at its file:line, trials matched to the CM protocol before anything is scored, and
``dpda eval`` reporting min t-DCF 2019/2021 and min a-DCF from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_runs import write_corpus

from dpda import cli
from dpda.checkpoint import save_weights
from dpda.config import ConfigError, DataSet, config_from_dict
from dpda.data import Utterance, read_protocol
from dpda.evaluate import a_dcf, min_tdcf
from dpda.evaluate.asv import AsvScoreError, check_trials, read_asv_scores, read_sasv_scores
from dpda.evaluate.evaluation import read_eval_sets, results_markdown
from dpda.evaluate.scoring import read_scores
from dpda.results import EvalResults

TINY = {"name": "custom", "class": "models:TinyDetector"}


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def asv_2019_lines(seed: int = 0) -> list[str]:
    """An ASV system's scores in the 2019 form: good on zero-effort impostors, fooled by some spoofs."""
    rng = np.random.default_rng(seed)
    lines = [f"bonafide target {s:.4f}" for s in rng.normal(3, 1, 60)]
    lines += [f"bonafide nontarget {s:.4f}" for s in rng.normal(-3, 1, 120)]
    return lines + [f"A0{i % 6 + 1} spoof {s:.4f}" for i, s in enumerate(rng.normal(1, 2, 90))]


def sasv_lines(records: list[Utterance], seed: int = 1) -> list[str]:
    """Per CM trial: a bona fide one is a target trial of its speaker and a nontarget trial of
    another speaker, a spoofed one a spoof trial of its speaker."""
    rng = np.random.default_rng(seed)
    lines = []
    for record in records:
        if record.label == 1:
            lines.append(f"{record.speaker} {record.utt_id} {rng.normal(2, 1):.4f} target")
            lines.append(f"OTHER {record.utt_id} {rng.normal(-2, 1):.4f} nontarget")
        else:
            lines.append(f"{record.speaker} {record.utt_id} {rng.normal(0, 2):.4f} spoof")
    return lines


@pytest.fixture
def records(corpus) -> list[Utterance]:
    return read_protocol("asvspoof2019", corpus / "eval.txt")


# -- the forms ------------------------------------------------------------------------------------
def test_the_2019_form_is_read_by_key(tmp_path):
    path = write(
        tmp_path / "ASVspoof2019.LA.asv.eval.gi.trl.scores.txt",
        ["\ufeffbonafide target 1.5", "", "A07 spoof -0.25\r", "bonafide nontarget -3"],
    )
    trials = read_asv_scores(path)
    assert trials.form == "2019" and trials.utterances is None
    assert trials.of("target").tolist() == [1.5] and trials.of("spoof").tolist() == [-0.25]
    assert trials.of("nontarget").tolist() == [-3.0] and trials.lines.tolist() == [1, 3, 4]
    assert trials.counts == {"target": 1, "nontarget": 1, "spoof": 1}


def test_the_sasv_form_is_read_alone_and_as_asv_scores(tmp_path, records):
    path = write(tmp_path / "sasv.txt", sasv_lines(records))
    for trials in (read_sasv_scores(path), read_asv_scores(path)):
        assert trials.form == "sasv" and trials.counts == {"target": 5, "nontarget": 5, "spoof": 5}
        assert trials.utterances[:2] == ("EVAL_0000", "EVAL_0000") and trials.speakers[:2] == ("SPK0", "OTHER")
        check_trials(trials, records)  # they are the CM trials


def test_the_2021_form_pairs_scores_with_keys_line_by_line(tmp_path):
    keys = write(
        tmp_path / "trial_metadata.txt",
        [
            "LA_0001 LA_E_1 alaw ita_tx bonafide target notrim eval",
            "LA_0002 LA_E_1 alaw ita_tx bonafide nontarget notrim eval",
            "LA_0001 LA_E_2 - - A07 spoof notrim progress",
        ],
    )
    scores = write(tmp_path / "score.txt", ["LA_0001 LA_E_1 2.5", "LA_0002 LA_E_1 -1.0", "LA_0001 LA_E_2 0.5"])
    trials = read_asv_scores(scores, keys=keys)
    assert trials.form == "2021" and trials.keys.tolist() == [0, 1, 2] and trials.scores.tolist() == [2.5, -1.0, 0.5]
    assert trials.phases == ("eval", "eval", "progress") and trials.utterances == ("LA_E_1", "LA_E_1", "LA_E_2")
    eval_only = trials.in_phases({"eval"})
    assert eval_only.counts == {"target": 1, "nontarget": 1, "spoof": 0} and eval_only.lines.tolist() == [1, 2]
    with pytest.raises(AsvScoreError, match="no spoof trials"):
        eval_only.require_every_key()
    write(scores, ["LA_0001 LA_E_1 2.5", "LA_0009 LA_E_1 -1.0", "LA_0001 LA_E_2 0.5"])
    with pytest.raises(
        AsvScoreError,
        match=r"score\.txt:2: scores speaker/utterance 'LA_0009 LA_E_1', but the key file's trial at the same "
        r"position \(.*trial_metadata\.txt:2\) is 'LA_0002 LA_E_1'",
    ):
        read_asv_scores(scores, keys=keys)
    write(scores, ["LA_0001 LA_E_1 2.5", "LA_0002 LA_E_1 -1.0"])
    with pytest.raises(AsvScoreError, match=r"2 scored trials, but the key file .* lists 3"):
        read_asv_scores(scores, keys=keys)


# -- bad lines, at their file:line ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("form", "lines", "message"),
    [
        (
            "asv",
            ["bonafide target 1.0", "bonafide target"],
            r"x\.txt:2: expected 3 columns 'SOURCE KEY SCORE'.*got 2 columns: 'bonafide target'",
        ),
        (
            "asv",
            ["a b c d e"],
            r"x\.txt:1: expected 3 columns 'SOURCE KEY SCORE' .* or 4 columns "
            r"'ENROLMENT_SPEAKER TEST_UTTERANCE SCORE KEY'.*got 5",
        ),
        (
            "asv",
            ["bonafide target 1.0", "bonafide bonafide 2.0"],
            r"x\.txt:2: trial key 'bonafide' is not one of target, nontarget, spoof",
        ),
        ("asv", ["bonafide target 1.0", "", "A01 spoof high"], r"x\.txt:3: score 'high' is not a number"),
        ("asv", ["bonafide target nan"], r"x\.txt:1: score 'nan' is not finite"),
        ("asv", ["bonafide target 1", "bonafide nontarget -inf"], r"x\.txt:2: score '-inf' is not finite"),
        (
            "asv",
            ["bonafide target 1", "A01 spoof 0"],
            r"x\.txt: no nontarget trials \(1 target, 0 nontarget, 1 spoof\)",
        ),
        ("asv", ["", "  "], r"x\.txt: no trials \(the file is empty\)"),
        (
            "sasv",
            ["S1 U1 1.0 target", "S1 U2 1.0 target extra"],
            r"x\.txt:2: expected 4 columns 'ENROLMENT_SPEAKER TEST_UTTERANCE SCORE KEY'",
        ),
        ("sasv", ["S1 U1 1.0 Target"], r"x\.txt:1: trial key 'Target' is not one of"),
        ("sasv", ["S1 U1 NaN target"], r"x\.txt:1: score 'NaN' is not finite"),
        (
            "sasv",
            ["S1 U1 1.0 target", "S1 U2 1.0 bonafide", "S1 U3 inf spoof", "S1 U4 1.0 BONAFIDE"],
            r"x\.txt:2: trial key 'bonafide' is not one of target, nontarget, spoof \(2 such lines\)",
        ),
        (
            "sasv",
            ["S1 U1 1.0 target", "S2 U1 0.0 nontarget", "S1 U2 0.0 spoof", "S1 U1 2.0 target"],
            r"1 repeated trial\(s\): S1 U1 \(lines 1 and 4\)",
        ),
    ],
)
def test_bad_lines_are_refused_at_their_line(tmp_path, form, lines, message):
    path = write(tmp_path / "x.txt", lines)
    with pytest.raises(AsvScoreError, match=message):
        (read_asv_scores if form == "asv" else read_sasv_scores)(path)


def test_a_2021_key_file_of_another_layout_is_refused_at_its_first_line(tmp_path):
    keys = write(tmp_path / "trial_metadata.txt", ["LA_0001 LA_E_1 target eval"])
    scores = write(tmp_path / "score.txt", ["LA_0001 LA_E_1 2.5"])
    with pytest.raises(
        AsvScoreError,
        match=r"trial_metadata\.txt:1: expected 8 columns 'SPEAKER UTTERANCE CODEC TRANSMISSION ATTACK KEY TRIM PHASE'",
    ):
        read_asv_scores(scores, keys=keys)
    with pytest.raises(AsvScoreError, match=r"nowhere\.txt: cannot read the score file"):
        read_sasv_scores(tmp_path / "nowhere.txt")


def test_trials_that_are_not_the_cm_trials_are_named_and_counted(tmp_path, records):
    lines = sasv_lines(records)
    kept = [line for line in lines if " EVAL_0003 " not in line and " EVAL_0004 " not in line]
    kept += [f"SPK0 ELSEWHERE_{i} 0.0 spoof" for i in range(7)]
    kept[0] = kept[0].replace(" target", " spoof")  # EVAL_0000 is bona fide in the protocol
    trials = read_sasv_scores(write(tmp_path / "sasv.txt", kept))
    with pytest.raises(AsvScoreError) as error:
        check_trials(trials, records)
    message = str(error.value)
    assert "sasv.txt: its trials do not match the CM trials (10 in the protocol)" in message
    assert (
        "7 test utterance(s) that the CM protocol does not list: ELSEWHERE_0 (line 13), ELSEWHERE_1 (line 14)"
        in message
    )
    assert "ELSEWHERE_4 (line 17) and 2 more" in message
    assert "2 CM trial(s) that it has no trial of: EVAL_0003, EVAL_0004" in message
    assert "1 trial key(s) that contradict the CM label: EVAL_0000 (line 1: spoof, CM: bona fide)" in message


# -- config keys ------------------------------------------------------------------------------------
def test_the_config_keys_are_checked():
    eval_set = {"kind": "asvspoof2019", "protocol": "eval.txt"}
    with pytest.raises(ConfigError, match=r"eval\.sets\[0\]\.asv_keys: expected null unless asv_scores"):
        config_from_dict({"eval": {"sets": [{**eval_set, "asv_keys": "trial_metadata.txt"}]}})
    with pytest.raises(ConfigError, match=r"data\.train\.sasv_scores: expected null \(only eval sets"):
        config_from_dict({"data": {"train": {**eval_set, "sasv_scores": "sasv.txt"}}})
    with pytest.raises(ConfigError, match="asv_scores: expected a non-empty path or null"):
        DataSet("asvspoof2019", "eval.txt", asv_scores="")


# -- read_eval_sets: matched before any audio is checked or scored ----------------------------------
def test_mismatched_trials_stop_read_eval_sets_before_the_audio_is_checked(tmp_path, corpus, records):
    (corpus / "flac" / "EVAL_0005.flac").unlink()  # the audio check would fail on it
    sasv = write(tmp_path / "sasv.txt", sasv_lines(records)[:-1])  # EVAL_0009's spoof trial left out
    dataset = DataSet("asvspoof2019", str(corpus / "eval.txt"), str(corpus), name="heldout", sasv_scores=str(sasv))
    with pytest.raises(
        AsvScoreError, match=r"eval set 'heldout': .*sasv\.txt: .*1 CM trial\(s\) that it has no trial of: EVAL_0009"
    ):
        read_eval_sets([dataset], "header", progress=False)


def test_an_asv_system_that_leaves_no_t_dcf_is_refused_before_scoring(tmp_path, corpus):
    lines = ["bonafide target 1.0", "bonafide nontarget 0.0", "A01 spoof -5.0"]  # accepts no spoof: C2 = 0
    dataset = DataSet(
        "asvspoof2019", str(corpus / "eval.txt"), str(corpus), asv_scores=str(write(tmp_path / "asv.txt", lines))
    )
    with pytest.raises(AsvScoreError, match=r"asv\.txt: t-DCF 2019: .*leave no positive normaliser"):
        read_eval_sets([dataset], "off", progress=False)


def test_2021_asv_trials_are_those_of_the_cm_phases(tmp_path, corpus, records):
    phase = {r.utt_id: "eval" if int(r.utt_id[-4:]) < 8 else "progress" for r in records}
    cm = [
        f"{r.speaker} {r.utt_id} - - {'bonafide' if r.label else 'A07'} {'bonafide' if r.label else 'spoof'} "
        f"notrim {phase[r.utt_id]}"
        for r in records
    ]
    keys, scores = [], []
    for line in sasv_lines(records):
        speaker, utt, score, key = line.split()
        keys.append(f"{speaker} {utt} alaw ita_tx - {key} notrim {phase[utt]}")
        scores.append(f"{speaker} {utt} {score}")
    dataset = DataSet(
        "asvspoof2021",
        str(write(tmp_path / "cm_trial_metadata.txt", cm)),
        str(corpus),
        options={"phase": "eval"},
        asv_scores=str(write(tmp_path / "score.txt", scores)),
        asv_keys=str(write(tmp_path / "trial_metadata.txt", keys)),
    )
    (eval_set,) = read_eval_sets([dataset], "off", progress=False)
    assert len(eval_set.records) == 8 and set(eval_set.asv.phases) == {"eval"}
    assert eval_set.asv.counts == {"target": 4, "nontarget": 4, "spoof": 4}  # EVAL_0008/9 are progress trials
    everything = read_eval_sets([DataSet(**{**dataset.__dict__, "options": {}})], "off", progress=False)[0]
    assert everything.asv.counts == {"target": 5, "nontarget": 5, "spoof": 5}


# -- dpda eval ------------------------------------------------------------------------------------
def _checkpoint(path: Path) -> Path:
    import torch
    from models import TinyDetector

    torch.manual_seed(0)
    save_weights(path, TinyDetector().state_dict(), {"config": {"name": "handed-over", "model": TINY}, "model": TINY})
    return path


def _eval_set(corpus: Path, **keys: str) -> str:
    return (
        "eval.sets="
        + yaml.safe_dump(
            [
                {
                    "kind": "asvspoof2019",
                    "protocol": str(corpus / "eval.txt"),
                    "root": str(corpus),
                    "name": "heldout",
                    **keys,
                }
            ],
            default_flow_style=True,
        ).strip()
    )


def test_dpda_eval_reports_t_dcf_and_a_dcf_from_the_sets_files(tmp_path, corpus, records, capsys):
    asv = write(tmp_path / "asv.txt", asv_2019_lines())
    sasv = write(tmp_path / "sasv.txt", sasv_lines(records))
    checkpoint, out = _checkpoint(tmp_path / "model.safetensors"), tmp_path / "eval"
    argv = ["eval", str(checkpoint), "--out", str(out), "--device", "cpu", "--trust-code"]
    assert cli.main([*argv, "--set", _eval_set(corpus, asv_scores=str(asv), sasv_scores=str(sasv))]) == 0
    scores = read_scores(out / "scores" / "heldout.txt", [r.utt_id for r in records])
    bonafide = [scores[r.utt_id] for r in records if r.label == 1]
    spoof = [scores[r.utt_id] for r in records if r.label == 0]
    asv_trials, sasv_trials = read_asv_scores(asv), read_sasv_scores(sasv)
    by_key = [asv_trials.of(key) for key in ("target", "nontarget", "spoof")]
    results = json.loads((out / "results.json").read_text())["sets"]["heldout"]
    assert results["min_tdcf_2019"] == min_tdcf(bonafide, spoof, *by_key, version="2019")
    assert results["min_tdcf_2021"] == min_tdcf(bonafide, spoof, *by_key, version="2021")
    expected = a_dcf(*(sasv_trials.of(key) for key in ("target", "nontarget", "spoof")))
    assert (results["min_adcf"], results["adcf_threshold"]) == expected
    assert 0 < results["min_tdcf_2021"] <= 1.0 and 0 <= results["min_adcf"] <= 1.0
    table = (out / "results.md").read_text()
    header = "| set | utterances | bona fide | spoof | EER | minDCF | actDCF | Cllr |"
    assert f"{header} min t-DCF 2019 | min t-DCF 2021 | min a-DCF |" in table
    assert f"| {results['min_tdcf_2019']:.4f} | {results['min_tdcf_2021']:.4f} | {results['min_adcf']:.4f} |" in table
    # without the files: no such keys, no such columns
    assert cli.main([*argv, "--out", str(tmp_path / "plain"), "--set", _eval_set(corpus)]) == 0
    plain = EvalResults.read(tmp_path / "plain" / "results.json")
    assert plain.sets["heldout"].min_tdcf_2019 is None and "min_adcf" not in plain.sets["heldout"].to_json()
    assert "t-DCF" not in results_markdown(plain)


def test_dpda_eval_refuses_mismatched_files_before_scoring(tmp_path, corpus, records, capsys):
    lines = [*sasv_lines(records)[2:], "SPK0 NOT_A_TRIAL 0.5 spoof"]
    sasv = write(tmp_path / "sasv.txt", lines)
    checkpoint, out = _checkpoint(tmp_path / "model.safetensors"), tmp_path / "eval"
    argv = ["eval", str(checkpoint), "--out", str(out), "--device", "cpu", "--trust-code"]
    assert cli.main([*argv, "--set", _eval_set(corpus, sasv_scores=str(sasv))]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert (
        "eval set 'heldout'" in error
        and "1 test utterance(s) that the CM protocol does not list: NOT_A_TRIAL (line 14)" in error
    )
    assert "1 CM trial(s) that it has no trial of: EVAL_0000" in error
    assert not out.exists()  # nothing was scored
    asv = write(tmp_path / "asv.txt", [*asv_2019_lines()[:5], "bonafide target 1e400"])
    assert cli.main([*argv, "--set", _eval_set(corpus, asv_scores=str(asv))]) == 2
    assert "asv.txt:6: score '1e400' is not finite" in capsys.readouterr().err and not out.exists()


@pytest.fixture
def corpus(tmp_path):
    """A fresh corpus per test: one test deletes a file of it."""
    return write_corpus(tmp_path / "corpus")
