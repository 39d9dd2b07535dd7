"""``dpda report`` on run folders of real (tiny) trainings: the Markdown, its figures, the
comparison table against results.json/summary.json, the paper column, and missing pieces."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import soundfile as sf
from matplotlib.image import imread

from dpda.config import config_from_dict, load_config
from dpda.evaluate.paper import PAPER_CLAIMS, PAPER_RESULTS, UNREPORTED_ROWS
from dpda.report import write_report
from dpda.train import train, train_seeds
from dpda.train.logger import read_csv

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"
RATE = 16000
PNG = b"\x89PNG\r\n\x1a\n"
KNOWN_ROW = "table1/xlsr_conformer_tcm/dpda"


def _split(root: Path, name: str, count: int, seed: int) -> None:
    """Half-second utterances: bona fide = a tone of random level in noise, spoof = noise, so that the
    classes overlap a little (ASVspoof 2019 protocol)."""
    rng = np.random.default_rng(seed)
    (root / "flac").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        bonafide = index % 2 == 0
        audio = rng.normal(0, 0.05, RATE // 2)
        if bonafide:
            audio += rng.uniform(0.0, 0.1) * np.sin(2 * np.pi * rng.uniform(100, 200) * np.arange(RATE // 2) / RATE)
        utt = f"{name.upper()}_{index:04d}"
        sf.write(str(root / "flac" / f"{utt}.flac"), audio.astype(np.float32), RATE)
        lines.append(f"SPK{index % 3} {utt} - {'-' if bonafide else 'A01'} {'bonafide' if bonafide else 'spoof'}\n")
    (root / f"{name}.txt").write_text("".join(lines))


def _config(data: Path, out: Path, name: str, aligner: str, epochs: int, **top: object) -> dict:
    dataset = {"kind": "asvspoof2019", "root": str(data)}
    return {
        "name": name,
        "seed": 1,
        "output_dir": str(out),
        **top,
        "data": {
            "train": {**dataset, "protocol": str(data / "train.txt")},
            "dev": {**dataset, "protocol": str(data / "dev.txt")},
            "crop_length": 4000,
            "workers": 0,
        },
        "model": {"name": "custom", "class": "models:TinyDetector"},
        "augment": {
            "chain": None,
            "inline": {"sample_rate": RATE, "stages": [{"name": "gain", "p": 0.5, "gain_db": [-6.0, 6.0]}]},
        },
        "dualpath": {"aligner": aligner},
        "optim": {"lr": 0.01},
        "train": {"batch_size": 4, "epochs": epochs, "n_best": 1, "patience": None},
        "logging": {"progress": False, "tensorboard": False},
        "eval": {"sets": [{**dataset, "protocol": str(data / "eval.txt"), "name": "heldout"}]},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two 2-epoch runs (no alignment with a known paper row; PCGrad), a 2-seed experiment, and a
    1-epoch concat run without dev or eval sets."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    for name, count, seed in (("train", 16, 0), ("dev", 6, 1), ("eval", 10, 2)):
        _split(data, name, count, seed)
    out = root / "runs"
    train(config_from_dict(_config(data, out, "dpda mean", "mean", 2, paper_row=KNOWN_ROW)))
    train(config_from_dict(_config(data, out, "pcgrad", "pcgrad", 2)))
    train_seeds(config_from_dict(_config(data, out, "seeded", "gradvac", 1)), [1, 2])
    concat = _config(data, out, "concat", "mean", 1)
    concat["dualpath"]["mode"], concat["data"]["dev"], concat["eval"]["sets"] = "concat", None, []
    train(config_from_dict(concat))
    return {name: out / name for name in ("dpda mean", "pcgrad", "seeded", "concat")}


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    backend = matplotlib.get_backend()
    path = write_report([runs["dpda mean"], runs["pcgrad"], runs["seeded"]], tmp_path_factory.mktemp("out"))
    assert matplotlib.get_backend() == backend  # the caller's backend is left alone
    return path


def _images(report: Path) -> list[Path]:
    return [report.parent / name for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())]


def _table(report: Path) -> tuple[list[str], list[list[str]]]:
    lines = report.read_text().split("## Comparison", 1)[1].strip().split("\n")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    return rows[0], rows[2:]


def test_every_linked_image_exists_and_is_a_valid_png(report):
    images = _images(report)
    assert len(images) == len(set(images))
    for image in images:
        assert image.read_bytes()[:8] == PNG, image
        assert min(imread(image).shape[:2]) > 0
    names = {image.name for image in images}
    assert "det-heldout.png" in names
    for slug in ("dpda-mean", "pcgrad", "seeded-seed-1", "seeded-seed-2"):
        for kind in ("loss", "conflict", "weights", "scores"):
            assert f"run-{slug}-{kind}.png" in names
    assert not list(report.parent.glob(".*.tmp"))


def test_table_has_one_row_per_folder_with_the_recorded_numbers(report, runs):
    header, rows = _table(report)
    assert [row[0] for row in rows] == ["dpda mean", "pcgrad", "seeded"]
    column = {name: index for index, name in enumerate(header)}
    for row, name in zip(rows, ("dpda mean", "pcgrad")):
        results = json.loads((runs[name] / "results.json").read_text())
        assert row[column["heldout EER (%)"]] == f"{100 * results['eval']['heldout']['eer']:.2f}"
        assert row[column["dev EER (%)"]] == f"{100 * results['dev']['dev_eer']:.2f}"
        assert row[column["best epoch"]] == str(results["best_epoch"])
        flags = [flag for flag in read_csv(runs[name] / "steps.csv")["conflict"] if flag is not None]
        assert len(flags) == results["steps"]  # every step logged: the rate of the steps is the run's
        assert row[column["conflict rate (%)"]] == f"{100 * sum(flags) / len(flags):.2f}"
        assert row[column["conflict rate (%)"]] == f"{100 * results['conflict_rate']:.2f}"
    assert rows[0][column["aligner"]] == "mean" and rows[1][column["aligner"]] == "pcgrad"
    assert "in_the_wild 7.97" in rows[0][column["paper EER (%)"]]
    assert rows[1][column["paper EER (%)"]] == "–"


def test_a_multi_seed_row_shows_the_summary_mean_and_std(report, runs):
    header, rows = _table(report)
    seeded = rows[2]
    metrics = json.loads((runs["seeded"] / "summary.json").read_text())["metrics"]
    for column, key in (("heldout EER (%)", "eval/heldout/eer"), ("dev EER (%)", "dev_dev_eer")):
        entry = metrics[key]
        assert seeded[header.index(column)] == f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"
    assert seeded[header.index("seed(s)")] == "1, 2"
    rates = []
    for seed in (1, 2):
        flags = [
            flag for flag in read_csv(runs["seeded"] / f"seed-{seed}" / "steps.csv")["conflict"] if flag is not None
        ]
        rates.append(sum(flags) / len(flags))
    assert seeded[header.index("conflict rate (%)")] == (
        f"{100 * np.mean(rates):.2f} ± {100 * np.std(rates, ddof=1):.2f}"
    )


def test_missing_pieces_are_reported_not_raised(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs["pcgrad"], broken, ignore=shutil.ignore_patterns("checkpoints", "state"))
    (broken / "scores" / "heldout.txt").unlink()
    columns, *lines = (broken / "epochs.csv").read_text().splitlines()  # tiny runs do not conflict: make 3 do
    cells = [line.split(",") for line in lines]
    cells[0][columns.split(",").index("conflicts")] = "3"
    (broken / "epochs.csv").write_text("\n".join([columns, *map(",".join, cells)]) + "\n")
    flagged = sum(int(row[columns.split(",").index("flagged_steps")]) for row in cells)
    seeds = tmp_path / "seeds"  # one finished seed of two, no summary.json yet
    shutil.copytree(runs["seeded"] / "seed-1", seeds / "seed-1", ignore=shutil.ignore_patterns("checkpoints", "state"))
    report = write_report([runs["concat"], broken, seeds, broken], tmp_path / "out")
    text = report.read_text()
    for phrase in (
        "no dev set",
        "no eval sets configured",
        "no per-path gradient statistics",
        "no score file scores/heldout.txt",
        "no summary.json",
    ):
        assert phrase in text, phrase
    images = _images(report)
    assert all(image.is_file() for image in images) and len(set(images)) == len(images)
    header, rows = _table(report)
    assert [row[0] for row in rows] == ["concat", "pcgrad", "seeded", "pcgrad-2"]  # a folder given twice
    assert rows[1][header.index("heldout EER (%)")] != "–"  # results.json still counts
    assert rows[0][header.index("conflict rate (%)")] == "–"
    assert rows[1][header.index("conflict rate (%)")] == f"{100 * 3 / flagged:.2f}"


def test_a_folder_that_holds_no_run_is_refused_by_name(tmp_path):
    (tmp_path / "empty" / "seed-x").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty"):
        write_report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(ValueError, match="absent"):
        write_report([tmp_path / "absent"], tmp_path / "out")


def test_every_paper_config_row_is_reported_or_deliberately_absent():
    rows = set()
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_config(path)
        row = config.paper_row
        assert (row in PAPER_RESULTS) != (row in UNREPORTED_ROWS), path
        sets = {dataset.name for dataset in config.eval.sets}
        assert set(PAPER_RESULTS.get(row, {})) <= sets, path
        rows.add(row)
    assert rows == set(PAPER_RESULTS) | UNREPORTED_ROWS
    assert all(claim.text and claim.where for claim in PAPER_CLAIMS.values())
