"""``dpda train`` end to end on real FLAC files: artifacts, exact resume after kill -9, torchrun
with two gloo processes, bad input stopped before the first step, several seeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import environment as _environment
from tiny_runs import experiment as _config
from tiny_runs import write_config as _write_config
from tiny_runs import write_split as _write_split

from dpda.checkpoint import average_weights, load_weights
from dpda.config import load_config
from dpda.results import RunResults, pooled_conflict_rate
from dpda.train import TrainingError, train, train_seeds
from dpda.train.logger import read_csv


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_weights(path)[0]


def test_a_run_writes_every_artifact_and_averages_exactly_the_best(corpus, tmp_path):
    config = load_config(_write_config(tmp_path / "c.yaml", _config(corpus, tmp_path / "runs")))
    results = train(config)
    run = tmp_path / "runs" / "tiny"
    assert results.epochs == 3 and results.steps == 18  # 24 utterances / 4 per step x 3 epochs
    assert set(results.eval) == {"heldout"} and 0.0 <= results.eval["heldout"].eer <= 1.0
    assert 0.0 <= results.dev.dev_eer <= 1.0
    assert load_config(run / "config.yaml") == config
    assert RunResults.from_json(json.loads((run / "results.json").read_text())) == results
    assert results.conflict_rate == pooled_conflict_rate(results.history)
    steps, epochs = read_csv(run / "steps.csv"), read_csv(run / "epochs.csv")
    assert steps["step"] == list(range(1, 19)) and epochs["epoch"] == [1, 2, 3]
    for column in ("loss_orig", "loss_aug", "cosine", "norm_orig", "weight_orig", "lr", "aug/gain.applied"):
        assert column in steps, column
    for column in ("dev_loss", "dev_eer", "conflict_rate", "train_loss_orig"):
        assert column in epochs, column
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    scores = (run / "scores" / "heldout.txt").read_text().splitlines()
    assert len(scores) == 10 and all(len(line.split()) == 2 for line in scores)
    kept = sorted(run.glob("checkpoints/epoch-*.safetensors"))
    assert len(kept) == 2
    best_two = sorted(range(3), key=lambda i: (epochs["dev_loss"][i], i))[:2]
    assert sorted(results.averaged_epochs) == sorted(i + 1 for i in best_two)
    expected = average_weights([run / "checkpoints" / f"epoch-{e:03d}.safetensors" for e in results.averaged_epochs])
    final = _tensors(run / "final.safetensors")
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(config)


SCHEDULES = {
    "n_best, constant lr": ({}, {}),
    "swa, warm-up and cosine to a floor": (
        {"average": "swa", "swa_epochs": 2},
        {"lr": 0.01, "scheduler": "cosine", "min_lr": 0.002, "warmup_steps": 4},
    ),
}


@pytest.mark.parametrize("train_keys, optim", SCHEDULES.values(), ids=SCHEDULES)
def test_a_run_killed_mid_epoch_resumes_to_bit_identical_weights(corpus, tmp_path, train_keys, optim):
    config = _config(corpus, tmp_path / "runs", save_every_steps=1, **train_keys)
    config["optim"].update(optim)
    path = _write_config(tmp_path / "c.yaml", config)
    command = [sys.executable, "-m", "dpda", "train", str(path)]
    reference = _write_config(tmp_path / "ref.yaml", {**config, "name": "reference"})
    subprocess.run([sys.executable, "-m", "dpda", "train", str(reference)], env=_environment(), check=True)

    process = subprocess.Popen(command, env=_environment(), start_new_session=True)
    saved = tmp_path / "runs" / "tiny" / "state" / "state.json"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(saved.read_text())["skeleton"]["progress"]["step"] >= 8:  # mid-way through epoch 2
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    run = tmp_path / "runs" / "tiny"
    assert not (run / "final.safetensors").exists(), "the run finished before it could be killed"
    subprocess.run(
        [sys.executable, "-m", "dpda", "train", "--resume", str(run), "--trust-code"], env=_environment(), check=True
    )

    final, expected = (
        _tensors(run / "final.safetensors"),
        _tensors(tmp_path / "runs" / "reference" / "final.safetensors"),
    )
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final)
    resumed, uninterrupted = read_csv(run / "steps.csv"), read_csv(tmp_path / "runs" / "reference" / "steps.csv")
    assert resumed["step"] == uninterrupted["step"] and resumed["loss_aug"] == uninterrupted["loss_aug"]
    for layers in ("layers_steps.csv", "layers_epochs.csv"):  # the per-layer conflict counts resume too
        assert read_csv(run / layers) == read_csv(tmp_path / "runs" / "reference" / layers), layers


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(corpus, tmp_path):
    config = _config(corpus, tmp_path / "runs", epochs=1, n_best=1)
    config["augment"]["inline"]["stages"] = [{"name": "gain", "p": 1.0, "gain_db": [3.0, 3.0]}]
    config["dualpath"]["aligner"] = "pcgrad"
    # float32 sums over 2 x 2 utterances and over 4 round differently; Adam's sign-like first
    # steps would magnify that, plain SGD keeps it at rounding level
    config["optim"] = {"name": "sgd", "lr": 0.02}
    single = _write_config(tmp_path / "one.yaml", {**config, "name": "one"})
    double = _write_config(tmp_path / "two.yaml", {**config, "name": "two"})
    subprocess.run([sys.executable, "-m", "dpda", "train", str(single)], env=_environment(), check=True)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29531",
            "-m",
            "dpda",
            "train",
            str(double),
        ],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    one, two = _tensors(tmp_path / "runs/one/final.safetensors"), _tensors(tmp_path / "runs/two/final.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-6, atol=1e-6)
    a = json.loads((tmp_path / "runs/one/results.json").read_text())
    b = json.loads((tmp_path / "runs/two/results.json").read_text())
    assert abs(a["eval"]["heldout"]["eer"] - b["eval"]["heldout"]["eer"]) < 1e-9
    assert len((tmp_path / "runs/two/scores/heldout.txt").read_text().splitlines()) == 10


def test_bad_input_stops_before_anything_is_written(corpus, tmp_path):
    config = _config(corpus, tmp_path / "runs")
    typo = _write_config(tmp_path / "typo.yaml", {**config, "optim": {"lrr": 0.1}})
    result = subprocess.run(
        [sys.executable, "-m", "dpda", "train", str(typo)],
        env=_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "optim.lrr" in result.stderr and "did you mean 'lr'" in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    protocol = _write_split(broken, "train", 6, 5)
    (broken / "flac" / "TRAIN_0003.flac").unlink()
    (broken / "flac" / "TRAIN_0004.flac").write_bytes(b"not audio")
    config["data"]["train"] = {"kind": "asvspoof2019", "protocol": str(protocol), "root": str(broken)}
    with pytest.raises(TrainingError) as error:
        train(load_config(_write_config(tmp_path / "missing.yaml", config)))
    assert "TRAIN_0003.flac" in str(error.value) and "TRAIN_0004.flac" in str(error.value)
    assert not (tmp_path / "runs").exists()
    config["data"]["train"] = {"kind": "asvspoof2019", "protocol": str(corpus / "train.txt"), "root": str(corpus)}
    config["eval"]["sets"] = [{"kind": "asvspoof2019", "protocol": str(protocol), "root": str(broken)}]
    with pytest.raises(TrainingError, match=r"(?s)eval set .*TRAIN_0003.flac"):  # found before training, not after
        train(load_config(_write_config(tmp_path / "eval.yaml", config)))
    assert not (tmp_path / "runs").exists()
    config["eval"]["sets"] = []
    config["model"] = {"name": "custom", "class": "models:TinyDetector", "batch_norn": True}
    with pytest.raises(TrainingError, match="batch_norm"):
        train(load_config(_write_config(tmp_path / "model.yaml", config)))


def test_seeds_run_into_their_own_folders_with_a_summary(corpus, tmp_path):
    config = _config(corpus, tmp_path / "runs", epochs=1, n_best=1)
    summary = train_seeds(load_config(_write_config(tmp_path / "c.yaml", config)), [1, 2])
    folder = tmp_path / "runs" / "tiny"
    assert (folder / "seed-1" / "final.safetensors").exists() and (folder / "seed-2" / "final.safetensors").exists()
    eer = summary.metrics["eval/heldout/eer"]
    assert len(eer.values) == 2 and eer.mean == pytest.approx(np.mean(eer.values))
    assert eer.std == pytest.approx(np.std(eer.values, ddof=1))
    assert json.loads((folder / "summary.json").read_text())["seeds"] == [1, 2]
    assert "eval/heldout/eer" in (folder / "summary.md").read_text()
    assert train_seeds(load_config(_write_config(tmp_path / "c.yaml", config)), [1, 2]) == summary  # read back


def test_train_compile_gives_the_eager_weights(corpus, tmp_path):
    """``train.compile`` (torch.compile, inductor on the CPU) changes speed, not the result."""
    finals = []
    for compiled in (False, True):
        config = _config(corpus, tmp_path / "runs", epochs=1, n_best=1, compile=compiled)
        config["name"] = f"compile-{compiled}"
        train(load_config(_write_config(tmp_path / f"{compiled}.yaml", config)))
        finals.append(_tensors(tmp_path / "runs" / config["name"] / "final.safetensors"))
    for key in finals[0]:
        torch.testing.assert_close(finals[1][key], finals[0][key], rtol=1e-5, atol=1e-6)
