"""``dpda fuse``: linear logistic-regression fusion and calibration of score files, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dpda.cli import main
from dpda.config import DataSet
from dpda.data.sets import DataError
from dpda.evaluate import cllr, eer
from dpda.evaluate.calibration import fit_calibration
from dpda.evaluate.fusion import Fusion, FusionError, fit_fusion, fuse, read_systems
from dpda.evaluate.scoring import ScoreError, read_scores


def write_scores(path: Path, ids: list[str], values: np.ndarray, shuffle: int | None = None) -> Path:
    """A score file as dpda writes it; with ``shuffle`` (a seed), its lines in another order."""
    lines = [f"{utt} {value:.6f}\n" for utt, value in zip(ids, values)]
    if shuffle is not None:
        lines = [lines[i] for i in np.random.default_rng(shuffle).permutation(len(lines))]
    path.write_text("".join(lines))
    return path


def write_key(path: Path, ids: list[str], labels: np.ndarray, attacks: list[str]) -> Path:
    """An ASVspoof 2019 LA protocol: SPEAKER UTT_ID - ATTACK KEY."""
    lines = [
        f"LA_0001 {utt} - {attack if label == 0 else '-'} {'bonafide' if label == 1 else 'spoof'}\n"
        for utt, label, attack in zip(ids, labels, attacks)
    ]
    path.write_text("".join(lines))
    return path


def complementary(seed: int, n: int = 600, prefix: str = "D"):
    """Trials of two attacks that each of two systems catches only one of: system A tells A01 from
    bona fide and hardly A02, system B the other way round (independent noise per system)."""
    rng = np.random.default_rng(seed)
    labels = np.array([1] * n + [0] * (2 * n))
    attacks = ["-"] * n + ["A01"] * n + ["A02"] * n
    ids = [f"{prefix}_{i:05d}" for i in range(3 * n)]
    order = rng.permutation(3 * n)  # trials interleaved, as in a real key
    ids, labels, attacks = [ids[i] for i in order], labels[order], [attacks[i] for i in order]
    a01 = np.array([a == "A01" for a in attacks])
    a02 = np.array([a == "A02" for a in attacks])
    mean_a = np.where(labels == 1, 1.5, np.where(a01, -3.0, 0.8))
    mean_b = np.where(labels == 1, 1.5, np.where(a02, -3.0, 0.8))
    system_a = rng.normal(mean_a, 1.0) * 4.0 + 2.0  # neither scaled nor shifted like an LLR
    system_b = rng.normal(mean_b, 1.0) * 0.5 - 1.0
    return ids, labels, attacks, system_a, system_b


@pytest.fixture
def two_systems(tmp_path):
    """Dev and eval score files of two complementary systems, and both keys."""
    files = {}
    for part, seed in (("dev", 1), ("eval", 2)):
        ids, labels, attacks, a, b = complementary(seed, prefix=part.upper())
        files[f"{part}_key"] = write_key(tmp_path / f"{part}_key.txt", ids, labels, attacks)
        # each file in an order of its own, none the key's: trials are matched by id
        files[f"a_{part}"] = write_scores(tmp_path / f"a_{part}.txt", ids, a, shuffle=seed)
        files[f"b_{part}"] = write_scores(tmp_path / f"b_{part}.txt", ids, b, shuffle=seed + 10)
    return files


def run_fuse(files: dict, out: Path, **options):
    return fuse(
        [files["a_eval"], files["b_eval"]],
        DataSet("asvspoof2019", str(files["dev_key"])),
        out,
        dev_scores=[files["a_dev"], files["b_dev"]],
        eval_key=DataSet("asvspoof2019", str(files["eval_key"])),
        **options,
    )


def test_fusing_complementary_systems_beats_each_on_dev_and_eval(two_systems, tmp_path):
    summary = run_fuse(two_systems, tmp_path / "fused.txt")
    for part in ("dev", "eval"):
        best_eer = min(s["eer"] for s in summary[part]["systems"])
        best_cllr = min(s["cllr"] for s in summary[part]["systems"])
        assert summary[part]["fusion"]["eer"] < 0.6 * best_eer, part
        assert summary[part]["fusion"]["cllr"] < 0.6 * best_cllr, part
        assert summary[part]["fusion"]["cllr"] < 0.5  # calibrated: far below the 1 bit of "no information"
    assert all(w > 0 for w in summary["weights"])  # both systems' higher scores mean bona fide


def test_the_written_file_is_the_weighted_sum_in_the_key_order(two_systems, tmp_path):
    out = tmp_path / "fused.txt"
    run_fuse(two_systems, out)
    saved = json.loads(out.with_suffix(".json").read_text())
    fused = read_scores(out)
    key_ids = [line.split()[1] for line in two_systems["eval_key"].read_text().splitlines()]
    assert list(fused) == key_ids
    a, b = read_scores(two_systems["a_eval"]), read_scores(two_systems["b_eval"])
    (wa, wb), offset = saved["weights"], saved["offset"]
    expected = np.array([wa * a[u] + wb * b[u] + offset for u in key_ids])
    np.testing.assert_allclose(np.array(list(fused.values())), expected, rtol=0, atol=6e-7)  # 6 decimals
    assert [s["weight"] for s in saved["systems"]] == saved["weights"]
    assert saved["systems"][0] == {"dev": str(two_systems["a_dev"]), "scores": str(two_systems["a_eval"]), "weight": wa}
    assert saved["prior"] == 0.5 and saved["eval"]["trials"] == len(key_ids) and saved["dev"]["kind"] == "asvspoof2019"
    # the metrics in the JSON are those of the written scores
    labels = {line.split()[1]: line.split()[4] for line in two_systems["eval_key"].read_text().splitlines()}
    bonafide = [v for u, v in fused.items() if labels[u] == "bonafide"]
    spoof = [v for u, v in fused.items() if labels[u] == "spoof"]
    assert saved["eval"]["fusion"]["eer"] == pytest.approx(eer(bonafide, spoof)[0], abs=1e-12)
    assert saved["eval"]["fusion"]["cllr"] == pytest.approx(cllr(bonafide, spoof), abs=1e-5)


def llr_trials(seed: int, n: int = 20_000):
    """Two conditionally independent Gaussian features: x1 ~ N(+-1, 1) has LLR 2 x1 and x2 ~ N(+-0.5, 1)
    has LLR x2, so the true LLR is their sum. The systems report 2 * LLR1 and LLR2 / 3 + 1, so the
    fusion that gives back the true LLR has weights (0.5, 3) and offset -3."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n), np.zeros(n)].astype(int)
    sign = np.where(labels == 1, 1.0, -1.0)
    x1, x2 = rng.normal(sign, 1.0), rng.normal(0.5 * sign, 1.0)
    return np.c_[2 * (2 * x1), x2 / 3 + 1], labels, 2 * x1 + x2


@pytest.mark.parametrize("prior", [0.5, 0.1, 0.9])
def test_the_weights_recover_the_generating_llr_at_any_prior(prior):
    scores, labels, _ = llr_trials(0)
    fusion = fit_fusion(scores, labels, prior=prior, l2=0.0)
    # the true LLR is the optimum at every prior: a fit that left logit(prior) in the offset would
    # be off by up to 2.2 here
    assert fusion.weights == pytest.approx((0.5, 3.0), abs=0.08)
    assert fusion.offset == pytest.approx(-3.0, abs=0.12)


def test_the_objective_at_prior_half_is_the_dev_cllr_and_matches_dpda_calibration():
    scores, labels, _ = llr_trials(1, n=5_000)
    fusion = fit_fusion(scores, labels, l2=0.0)
    fused = fusion.apply(scores)
    assert fusion.objective == pytest.approx(cllr(fused[labels == 1], fused[labels == 0]), abs=1e-12)
    # one system alone is dpda's dev calibration (the same balanced objective), fitted independently
    single = fit_fusion(scores[:, :1], labels, l2=0.0)
    calibration = fit_calibration(scores[labels == 1, 0], scores[labels == 0, 0])
    assert single.weights[0] == pytest.approx(calibration.scale, rel=1e-3)
    assert single.offset == pytest.approx(calibration.offset, abs=1e-3)


def test_the_fusion_is_no_worse_than_any_system_calibrated_alone():
    scores, labels, true_llr = llr_trials(2, n=5_000)
    fusion = fit_fusion(scores, labels, l2=0.0)
    fused = fusion.apply(scores)
    alone = []
    for i in range(2):
        single = fit_fusion(scores[:, [i]], labels, l2=0.0)
        calibrated = single.apply(scores[:, [i]])
        alone.append(cllr(calibrated[labels == 1], calibrated[labels == 0]))
        # calibrating lowers the Cllr of the raw scores (2 * LLR1 is over-confident)
        raw = scores[:, i]
        assert alone[-1] <= cllr(raw[labels == 1], raw[labels == 0]) + 1e-12
    fused_cllr = cllr(fused[labels == 1], fused[labels == 0])
    assert fused_cllr < min(alone) - 0.05  # the second feature carries information of its own
    # and the fusion is as good as the true LLR on its own trials (to estimation noise)
    assert fused_cllr <= cllr(true_llr[labels == 1], true_llr[labels == 0]) + 1e-12


def test_l2_shrinks_the_weights_and_keeps_separable_dev_sets_finite():
    scores, labels, _ = llr_trials(3, n=2_000)
    loose, tight = fit_fusion(scores, labels, l2=0.0), fit_fusion(scores, labels, l2=1.0)
    assert all(abs(t) < abs(w) for t, w in zip(tight.weights, loose.weights))
    separable = np.c_[np.where(labels == 1, 1.0, -1.0) + np.linspace(0, 0.5, len(labels))]
    with pytest.raises(FusionError, match="separated completely"):
        fit_fusion(separable, labels, l2=0.0)
    fitted = fit_fusion(separable, labels)
    assert np.isfinite(fitted.weights[0]) and 1 < fitted.weights[0] < 1e3


def test_degenerate_fits_are_refused():
    scores, labels, _ = llr_trials(4, n=100)
    with pytest.raises(FusionError, match="all bona fide"):
        fit_fusion(scores[labels == 1], labels[labels == 1])
    constant = np.c_[scores[:, 0], np.full(len(labels), 0.25)]
    with pytest.raises(FusionError, match=r"b\.txt \(0\.25\): gives every dev trial the same score"):
        fit_fusion(constant, labels, names=["a.txt", "b.txt"])
    bad = scores.copy()
    bad[3, 1] = np.nan
    with pytest.raises(FusionError, match="NaN"):
        fit_fusion(bad, labels)
    for prior in (0.0, 1.0):
        with pytest.raises(FusionError, match="prior"):
            fit_fusion(scores, labels, prior=prior)
    with pytest.raises(ValueError, match="shape"):
        Fusion((1.0, 2.0), 0.0, 0.5, 0.0, 0.0, 0).apply(scores[:, :1])


def test_score_files_with_different_trials_are_named_per_file(tmp_path):
    ids = [f"u{i}" for i in range(20)]
    a = write_scores(tmp_path / "a_dev.txt", ids, np.arange(20.0))
    b = write_scores(tmp_path / "b_dev.txt", [*ids[3:], "x1", "x2"], np.arange(19.0))
    c = write_scores(tmp_path / "c_dev.txt", ids[:-1], np.arange(19.0))
    same = write_scores(tmp_path / "same.txt", list(reversed(ids)), np.arange(20.0))
    with pytest.raises(FusionError) as error:
        read_systems([a, b, same, c], "dev")
    message = str(error.value)
    assert f"compared with {a}, 20 trials" in message
    assert f"{b}: 3 trials of a_dev.txt missing (u0, u1, u2); 2 not in a_dev.txt (x1, x2)" in message
    assert f"{c}: 1 trials of a_dev.txt missing (u19)" in message
    assert str(same) not in message  # the same trials in another order are the same trials
    many = write_scores(tmp_path / "many.txt", [f"y{i}" for i in range(20)], np.arange(20.0))
    with pytest.raises(FusionError, match=r"20 trials of a_dev.txt missing \(u0, u1, u2, u3, u4, \.\.\.\)"):
        read_systems([a, many], "dev")


def test_trials_that_differ_are_refused_before_anything_is_written(two_systems, tmp_path):
    lines = two_systems["b_dev"].read_text().splitlines()
    two_systems["b_dev"].write_text("\n".join(lines[2:]) + "\n")
    out = tmp_path / "fused.txt"
    with pytest.raises(FusionError, match=r"b_dev.txt: 2 trials of a_dev.txt missing"):
        run_fuse(two_systems, out)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_key_trials_without_scores_and_scores_without_key_trials_are_named(two_systems, tmp_path):
    key = two_systems["dev_key"]
    key.write_text(key.read_text() + "LA_0001 NEW_1 - A01 spoof\nLA_0001 NEW_2 - - bonafide\n")
    with pytest.raises(FusionError) as error:
        run_fuse(two_systems, tmp_path / "fused.txt")
    message = str(error.value)
    assert f"the dev key {key} (1802 trials)" in message
    assert "2 key trials without a score (NEW_1, NEW_2)" in message
    eval_key = two_systems["eval_key"]
    kept = eval_key.read_text().splitlines()
    eval_key.write_text("\n".join(kept[1:]) + "\n")
    key.write_text("\n".join(key.read_text().splitlines()[:-2]) + "\n")
    dropped = kept[0].split()[1]
    with pytest.raises(FusionError, match=rf"the eval key .*: 1 scored trials not in the key \({dropped}\)"):
        run_fuse(two_systems, tmp_path / "fused.txt")


def test_dev_and_eval_system_counts_must_match_before_any_file_is_read(tmp_path):
    with pytest.raises(FusionError, match=r"3 dev score file\(s\) and 2 score file\(s\) to fuse"):
        fuse(
            [tmp_path / "absent_1.txt", tmp_path / "absent_2.txt"],
            DataSet("asvspoof2019", str(tmp_path / "absent_key.txt")),
            tmp_path / "out.txt",
            dev_scores=[tmp_path / "d1.txt", tmp_path / "d2.txt", tmp_path / "d3.txt"],
        )
    with pytest.raises(FusionError, match="prior"):
        fuse([tmp_path / "a.txt"], DataSet("asvspoof2019", str(tmp_path / "k.txt")), tmp_path / "o.txt", prior=1.5)


def test_repeated_ids_and_nan_scores_name_the_file_and_line(two_systems, tmp_path):
    path = two_systems["b_dev"]
    lines = path.read_text().splitlines()
    first = lines[0].split()[0]
    path.write_text("\n".join([*lines[:4], f"{first} 0.5", *lines[4:]]) + "\n")
    with pytest.raises(ScoreError, match=rf"{path}: repeated ids: {first} \(line 5\)"):
        run_fuse(two_systems, tmp_path / "fused.txt")
    lines[6] = f"{lines[6].split()[0]} nan"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ScoreError, match=rf"{path}: NaN/inf scores for: {lines[6].split()[0]} \(line 7\)"):
        run_fuse(two_systems, tmp_path / "fused.txt")


def test_a_dev_key_of_one_class_is_refused(tmp_path):
    ids = [f"u{i}" for i in range(10)]
    key = write_key(tmp_path / "key.txt", ids, np.ones(10, dtype=int), ["-"] * 10)
    scores = write_scores(tmp_path / "a.txt", ids, np.arange(10.0))
    with pytest.raises(DataError, match="only bona fide"):
        fuse([scores], DataSet("asvspoof2019", str(key)), tmp_path / "out.txt")


def test_outputs_are_not_overwritten_unless_asked(two_systems, tmp_path):
    out = tmp_path / "fused.txt"
    out.write_text("old\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_fuse(two_systems, out)
    assert out.read_text() == "old\n"
    run_fuse(two_systems, out, overwrite=True)
    assert len(read_scores(out)) == 1800
    with pytest.raises(FusionError, match="is one of the input score files"):
        run_fuse(two_systems, two_systems["a_eval"], overwrite=True)
    with pytest.raises(FusionError, match="name the scores"):
        run_fuse(two_systems, tmp_path / "fused.json")
    with pytest.raises(FusionError, match="does not exist"):
        run_fuse(two_systems, tmp_path / "absent" / "fused.txt")


def test_the_cli_fuses_with_another_eval_key_format(two_systems, tmp_path, capsys):
    # the eval key as In-the-Wild's meta.csv: file,speaker,label
    eval_lines = [line.split() for line in two_systems["eval_key"].read_text().splitlines()]
    meta = tmp_path / "meta.csv"
    meta.write_text(
        "file,speaker,label\n"
        + "".join(f"{f[1]}.wav,spk,{'bona-fide' if f[4] == 'bonafide' else 'spoof'}\n" for f in eval_lines)
    )
    out = tmp_path / "fused_eval.txt"
    arguments = [
        *["fuse", str(two_systems["a_eval"]), str(two_systems["b_eval"])],
        *["--dev-scores", str(two_systems["a_dev"]), str(two_systems["b_dev"])],
        *["--dev", str(two_systems["dev_key"]), "--eval-key", str(meta), "--eval-kind", "in_the_wild"],
        *["--out", str(out), "--prior", "0.3"],
    ]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["prior"] == 0.3 and saved["eval"]["kind"] == "in_the_wild" and saved["eval"]["key"] == str(meta)
    assert f"| {two_systems['a_eval']} | {saved['weights'][0]:.6g} |" in printed
    assert f"| fusion | offset {saved['offset']:.6g} | {saved['dev']['fusion']['eer']:.2%} |" in printed
    assert "dev EER | dev Cllr | eval EER | eval Cllr" in printed
    assert len(read_scores(out)) == 1800
    # the same dev scores fused on themselves (the form: SCORES --dev KEY --out OUT)
    dev_out = tmp_path / "fused_dev.txt"
    assert main(["fuse", str(two_systems["a_dev"]), str(two_systems["b_dev"]), "--dev", str(two_systems["dev_key"]),
                 "--out", str(dev_out)]) == 0  # fmt: skip
    dev_saved = json.loads(dev_out.with_suffix(".json").read_text())
    assert dev_saved["eval"] is None and dev_saved["l2"] == 1e-4
    assert dev_saved["dev"]["fusion"]["cllr"] < min(s["cllr"] for s in dev_saved["dev"]["systems"])
    # errors are one line and exit status 2
    assert main([*arguments, "--overwrite", "--prior", "2"]) == 2
    assert "dpda fuse: the prior of bona fide must be between 0 and 1" in capsys.readouterr().err
    assert main(["fuse", str(two_systems["a_eval"]), "--dev", str(two_systems["dev_key"]), "--out", str(out)]) == 2
    assert f"dpda fuse: {out} exists" in capsys.readouterr().err
    assert main(["fuse", str(tmp_path / "none.txt"), "--dev", str(two_systems["dev_key"]),
                 "--out", str(tmp_path / "o.txt")]) == 2  # fmt: skip
    assert "none.txt: No such file or directory" in capsys.readouterr().err


def test_the_cli_reads_a_csv_dev_key_with_reader_options(two_systems, tmp_path, capsys):
    rows = [line.split() for line in two_systems["dev_key"].read_text().splitlines()]
    key = tmp_path / "dev.csv"
    key.write_text("path,kind\n" + "".join(f"{r[1]}.flac,{'real' if r[4] == 'bonafide' else 'fake'}\n" for r in rows))
    out = tmp_path / "fused.txt"
    common = [str(two_systems["a_dev"]), str(two_systems["b_dev"]), "--dev", str(key), "--dev-kind", "csv"]
    assert main(["fuse", *common, "--out", str(out)]) == 2  # the reader looks for a 'label' column
    assert "no column 'label' (label_column)" in capsys.readouterr().err
    assert main(["fuse", *common, "--dev-option", "label_column=kind", "--out", str(out)]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["dev"]["kind"] == "csv" and (saved["dev"]["bonafide"], saved["dev"]["spoof"]) == (600, 1200)
    assert main(["fuse", *common, "--eval-kind", "csv", "--out", str(tmp_path / "o.txt")]) == 2
    assert "--eval-kind and --eval-option describe --eval-key" in capsys.readouterr().err
