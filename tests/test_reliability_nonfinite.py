"""No NaN or infinity reaches a file: the skipped step, the header check, the writers, the config
(issue 14, item 3).

36 cases:
- a step skipped for non-finite gradients leaves the model exactly as before, BatchNorm's
  running statistics and ``num_batches_tracked`` included: 3 modes x accumulation 1 and 2 (6);
- an engine whose model went non-finite stops with ``DivergedError`` naming the tensors: BatchNorm
  statistics overflowed by a step with finite gradients, NaN weights met by a skipped step (2);
- ``validate: header`` reads float files' samples: NaN in FLOAT, inf in DOUBLE, a DOUBLE too large
  for float32 (3);
- ``dpda train`` with a NaN float file stops before training, exit 2, naming the file (1);
- a BatchNorm run with that file and ``validate: off`` skips its steps and writes only finite
  weights and strict JSON (``concat``: the undefined conflict rate is null) (1);
- a training that diverges on resume (Adam at lr 1e30, SGD at lr 1e10) stops with exit 2 naming a
  model tensor, and the checkpoint and state of the epoch before stay byte for byte (2); dev
  scores that overflow while the weights stay finite stop it before any checkpoint (1);
- the writers refuse non-finite values by name and keep the previous file: ``save_weights``
  tensor and meta, ``save_state`` tensor, ``average_weights`` input (4); a state's infinite
  float (a best metric before the first epoch) round-trips through strict JSON (1);
- results: undefined metrics are null and read back as NaN; a non-finite learning rate is
  refused by field (2);
- config: non-finite or out-of-range values refused at load, naming the key (11), ``--set
  optim.lr=.inf`` on the command line is exit 2 in one line (1), lr above 1 warns (1).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from models import TinyDetector, batch
from safetensors.torch import save_file
from tiny_runs import environment, experiment, write_config, write_corpus

from dpda.checkpoint import NonFiniteError, average_weights, load_state, load_weights, save_state, save_weights
from dpda.config import ConfigError, load_config
from dpda.data import AudioValidationError, Utterance
from dpda.data.validate import validate
from dpda.dualpath import DivergedError, DualPathStep
from dpda.results import EpochRecord, ResultsError, RunResults
from dpda.train import train


def _strict_json(path: Path) -> object:
    """``path`` parsed as strict JSON: a NaN or Infinity token fails."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path}: non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _dpda(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpda", *args], env=environment(), capture_output=True, text=True, check=False
    )


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


# -- the skipped step ---------------------------------------------------------------------------
@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("mode", ["concat", "split", "joint"])
def test_a_skipped_step_leaves_batchnorm_statistics_as_they_were(mode, accumulation):
    model = TinyDetector(batch_norm=True)
    engine = DualPathStep(model, torch.optim.Adam(model.parameters(), lr=0.01), "pcgrad", mode=mode)
    engine(*batch(seed=3))  # running statistics away from their initial values
    before = _snapshot(model)
    for micro in range(accumulation):  # the last micro-batch holds a NaN sample
        x, x_aug, labels = batch(seed=4 + micro)
        if micro == accumulation - 1:
            x_aug[1, 7] = math.nan
        engine.accumulate(x, x_aug, labels)
    assert engine.step().skipped
    after = model.state_dict()
    assert int(after["norm.num_batches_tracked"]) == 2 if mode == "split" else 1
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not engine(*batch(seed=5)).skipped  # and training goes on from there


def test_a_step_that_overflows_batchnorm_statistics_stops_the_engine_naming_them():
    model = TinyDetector(batch_norm=True)
    engine = DualPathStep(model, torch.optim.Adam(model.parameters(), lr=1e30), "pcgrad")
    engine(*batch(seed=0))  # finite gradients: the weights become ~1e30
    with pytest.raises(DivergedError, match=r"optimizer step 2: the training diverged: .* norm\.running_var \(8 of 8"):
        engine(*batch(seed=1))  # finite gradients again, but the activations' variance overflows


def test_a_skipped_step_of_a_model_with_nan_weights_stops_the_engine_naming_them():
    model = TinyDetector()
    engine = DualPathStep(model, torch.optim.Adam(model.parameters(), lr=0.01), "pcgrad")
    with torch.no_grad():
        model.hidden.weight[0, 0] = math.nan  # what an overflowed optimizer step leaves
    with pytest.raises(DivergedError, match=r"the model has NaN or infinity in hidden\.weight \(1 of 128 values\)"):
        engine(*batch(seed=0))


# -- the header check ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("subtype", "value"), [("FLOAT", math.nan), ("DOUBLE", math.inf), ("DOUBLE", 1e300)], ids=["nan", "inf", "huge"]
)
def test_the_header_check_finds_non_finite_samples_of_float_files(tmp_path, subtype, value):
    audio = np.zeros(40000)  # more than one block of the streaming pass
    audio[35000] = value
    sf.write(str(tmp_path / "bad.wav"), audio, 16000, subtype=subtype)
    sf.write(str(tmp_path / "good.wav"), audio[:100], 16000, subtype=subtype)
    with pytest.raises(AudioValidationError) as error:
        validate(
            [Utterance("bad", "bad.wav", 1), Utterance("good", "good.wav", 0)], tmp_path, decode=False, progress=False
        )
    assert dict(error.value.problems) == {str(tmp_path / "bad.wav"): "1 NaN or infinite sample(s)"}


def _nan_corpus(root: Path) -> Path:
    """The tiny corpus with TRAIN_0000 a float WAV (under its protocol's .flac name) with one NaN."""
    corpus = write_corpus(root)
    audio = 0.05 * np.random.default_rng(0).standard_normal(16000)
    audio[100] = math.nan
    sf.write(str(corpus / "flac" / "TRAIN_0000.flac"), audio, 16000, format="WAV", subtype="FLOAT")
    return corpus


def _bn_config(corpus: Path, out: Path) -> dict:
    config = experiment(corpus, out, epochs=1, n_best=1)
    config["model"]["batch_norm"] = True
    config["eval"]["sets"] = []
    return config


def test_a_nan_file_stops_training_before_it_starts(tmp_path):
    config = _bn_config(_nan_corpus(tmp_path / "data"), tmp_path / "runs")
    result = _dpda("train", str(write_config(tmp_path / "c.yaml", config)))
    assert result.returncode == 2, result.stderr
    assert "TRAIN_0000.flac: 1 NaN or infinite sample(s)" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_run_over_a_nan_file_skips_its_steps_and_writes_only_finite_values(tmp_path):
    config = _bn_config(_nan_corpus(tmp_path / "data"), tmp_path / "runs")
    config["data"]["validate"] = "off"
    config["dualpath"] = {"mode": "concat"}  # no conflict flags: the conflict rate is undefined
    results = train(load_config(write_config(tmp_path / "c.yaml", config)))
    assert results.skipped_steps >= 1 and math.isnan(results.conflict_rate)
    run = tmp_path / "runs" / "tiny"
    files = [run / "final.safetensors", run / "checkpoints" / "epoch-001.safetensors", run / "state"]
    assert all(path.exists() for path in files)
    for path in files[:2]:
        tensors, _ = load_weights(path)
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()), path
    state = load_state(run / "state")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    documents = {path.name: _strict_json(path) for path in run.rglob("*.json")}
    assert {"results.json", "final.json", "epoch-001.json", "state.json"} <= set(documents)
    assert documents["results.json"]["conflict_rate"] is None


@pytest.mark.parametrize(
    "optim", [{"name": "adam", "lr": 1e30}, {"name": "sgd", "lr": 1e10}], ids=["adam-1e30", "sgd-1e10"]
)
def test_a_diverging_training_stops_naming_a_tensor_and_keeps_the_last_good_files(corpus, tmp_path, optim):
    config = _bn_config(corpus, tmp_path / "runs")
    config["optim"] = {"name": optim["name"], "lr": 0.01}
    train(load_config(write_config(tmp_path / "c.yaml", config)))
    run = tmp_path / "runs" / "tiny"
    kept = [run / "state" / "state.safetensors", run / "state" / "state.json", run / "checkpoints" / "epoch-001.json"]
    kept.append(run / "checkpoints" / "epoch-001.safetensors")
    before = {path: path.read_bytes() for path in kept}
    (run / "final.safetensors").unlink()
    saved = yaml.safe_load((run / "config.yaml").read_text())  # resume takes the run's own config
    saved["optim"]["lr"], saved["train"]["epochs"] = optim["lr"], 2
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    result = _dpda("train", "--resume", str(run), "--trust-code")  # the run names the tests' model class
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "NaN or infinity in" in line and "Traceback" not in result.stderr
    assert any(f"{name} (" in line for name in ("conv.weight", "norm.running_mean", "norm.running_var"))
    assert {path: path.read_bytes() for path in kept} == before
    assert not (run / "final.safetensors").exists() and not (run / "checkpoints" / "epoch-002.safetensors").exists()


def test_dev_scores_that_overflow_stop_training_before_any_checkpoint(corpus, tmp_path):
    """Weights and training logits stay finite, so no step is skipped and no tensor is named:
    the dev scores are where it shows, and no EER, checkpoint or calibration is made of them."""
    config = experiment(corpus, tmp_path / "runs", epochs=1)
    config["model"] = {"name": "custom", "class": "models:OverflowsInEval"}
    result = _dpda("train", str(write_config(tmp_path / "c.yaml", config)))
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "dev scores are NaN/inf for 8 of 8 utterances (first DEV_0000" in line and "Traceback" not in result.stderr
    assert not list((tmp_path / "runs" / "tiny").glob("**/*.safetensors"))


# -- the writers --------------------------------------------------------------------------------
def test_save_weights_refuses_a_nan_tensor_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, {"layer.weight": torch.ones(3)}, {"epoch": 1})
    old = path.read_bytes(), path.with_suffix(".json").read_bytes()
    with pytest.raises(NonFiniteError, match=r"w\.safetensors: not written, NaN or infinity in layer\.weight \(2 of 3"):
        save_weights(path, {"layer.weight": torch.tensor([math.nan, 1.0, -math.inf])}, {"epoch": 2})
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == old


def test_save_weights_refuses_a_non_finite_meta_value_by_its_key(tmp_path):
    with pytest.raises(NonFiniteError, match=r"meta\.metrics\.dev_loss \(nan\)"):
        save_weights(tmp_path / "w.safetensors", {"w": torch.ones(1)}, {"metrics": {"dev_loss": math.nan}})
    assert list(tmp_path.iterdir()) == []


def test_save_state_refuses_a_nan_tensor_by_its_path_and_keeps_the_old_state(tmp_path):
    save_state(tmp_path / "state", {"optimizer": {"state": {0: {"exp_avg": torch.zeros(2)}}}})
    old = (tmp_path / "state" / "state.safetensors").read_bytes()
    with pytest.raises(NonFiniteError, match=r"NaN or infinity in optimizer\.state\.0\.exp_avg \(1 of 2 values\)"):
        save_state(tmp_path / "state", {"optimizer": {"state": {0: {"exp_avg": torch.tensor([0.0, math.inf])}}}})
    assert (tmp_path / "state" / "state.safetensors").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_a_state_keeps_its_infinite_best_metric_in_strict_json(tmp_path):
    state = {"progress": {"best_metric": math.inf, "worst": -math.inf, "undefined": math.nan}, "w": torch.ones(1)}
    save_state(tmp_path / "state", state)
    _strict_json(tmp_path / "state" / "state.json")
    progress = load_state(tmp_path / "state")["progress"]
    assert progress["best_metric"] == math.inf and progress["worst"] == -math.inf and math.isnan(progress["undefined"])


def test_average_weights_refuses_a_non_finite_input_by_file_and_key(tmp_path):
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_weights(good, {"w": torch.ones(2)}, {})
    # a checkpoint written by an older dpda, or by hand: not through save_weights' check
    save_file({"w": torch.tensor([1.0, math.nan])}, str(bad), metadata={"dpda": good.with_suffix(".json").read_text()})
    with pytest.raises(NonFiniteError, match=r"bad\.safetensors: cannot be averaged, NaN or infinity in w \(1 of 2"):
        average_weights([good, bad])


# -- results ------------------------------------------------------------------------------------
def _epoch(**changes: float) -> EpochRecord:
    values = {"epoch": 1, "step": 4, "steps": 4, "skipped_steps": 4, "conflicts": 0, "flagged_steps": 0}
    values |= {"train_loss_orig": math.nan, "train_loss_aug": 0.5, "conflict_rate": math.nan, "mean_cosine": math.nan}
    values |= {"lr": 0.01, "train_seconds": 1.0, "dev_loss": math.inf, "dev_eer": math.nan}
    return EpochRecord(**(values | changes))


def test_undefined_metrics_are_null_in_json_and_nan_when_read(tmp_path):
    record = _epoch()
    results = RunResults("tiny", 1, None, 1, 4, -1, 4, [], math.nan, 1.0, history=[record])
    results.write(tmp_path / "results.json")
    document = _strict_json(tmp_path / "results.json")
    assert document["conflict_rate"] is None and document["history"][0]["dev_loss"] is None
    read = RunResults.read(tmp_path / "results.json").history[0]
    assert math.isnan(read.train_loss_orig) and math.isnan(read.dev_loss) and read.train_loss_aug == 0.5


def test_a_non_finite_learning_rate_is_refused_by_field(tmp_path):
    with pytest.raises(ResultsError, match=r"EpochRecord\.lr: inf is not a finite number"):
        _epoch(lr=math.inf).to_json()


# -- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=.inf", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=1e400", "optim.lr"),
        ("optim.weight_decay=.inf", "optim.weight_decay"),
        ("optim.betas=[0.9, 1.0]", "optim.betas[1]"),
        ("dualpath.class_weights=[.nan, 0.9]", "dualpath.class_weights[0]"),
        ("dualpath.max_grad_norm=.inf", "dualpath.max_grad_norm"),
        ("eval.max_seconds=.inf", "eval.max_seconds"),
        ("model.dropout=.inf", "model.dropout"),
        ("dualpath.aligner_options={beta: .nan}", "dualpath.aligner_options.beta"),
        ("data.crop_length=0", "data.crop_length"),
    ],
)
def test_non_finite_or_out_of_range_config_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert error.value.key == key and str(error.value).startswith(f"--set {override}: {key}: expected")


def test_an_infinite_learning_rate_on_the_command_line_is_one_line_and_exit_2(corpus, tmp_path):
    config = write_config(tmp_path / "c.yaml", experiment(corpus, tmp_path / "runs"))
    result = _dpda("train", str(config), "--set", "optim.lr=.inf")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "dpda train: --set optim.lr=.inf: optim.lr: expected a finite float > 0, found inf (float)"
    ]
    assert not (tmp_path / "runs").exists()


def test_a_learning_rate_above_one_is_accepted_with_a_warning():
    with pytest.warns(UserWarning, match=r"optim\.lr 10\.0 is above 1"):
        assert load_config(None, ["optim.lr=10"]).optim.lr == 10.0
