"""The experiment configuration: defaults, YAML and overrides, strict checking and saving."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import get_type_hints

import pytest
import yaml

from dpda.config import (
    ConfigError,
    DataSet,
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults():
    config = load_config(None)
    assert config == ExperimentConfig()
    assert config.model == {"name": "aasist_l"}
    assert config.data.train is None and config.data.crop_length == 66800
    assert config.dualpath.class_weights == (0.1, 0.9)
    assert config.optim.lr == 1e-6 and config.train.batch_size == 5 and config.eval.sets == []


def test_default_yaml_matches_the_dataclasses():
    assert load_config(DEFAULT_YAML) == load_config(None)
    raw = yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8"))
    text = DEFAULT_YAML.read_text(encoding="utf-8")

    def check(cls, section, where):
        hints = get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        assert list(section) == names, where
        for name in names:
            if dataclasses.is_dataclass(hints[name]):
                check(hints[name], section[name], f"{where}.{name}")

    check(ExperimentConfig, raw, "top level")
    for name in (f.name for f in dataclasses.fields(DataSet)):  # documented in the commented example
        assert re.search(rf"^\s*#\s+{name}:", text, re.MULTILINE), name


def test_file_and_overrides(tmp_path):
    path = write(
        tmp_path,
        """
name: aasist-pcgrad
optim: {lr: 1e-4, scheduler: cosine}
data:
  train: {kind: asvspoof2019, protocol: train.txt, options: {path_template: "flac/{utt_id}.flac"}}
eval:
  sets:
    - {kind: in_the_wild, protocol: meta.csv}
""",
    )
    config = load_config(
        path,
        [
            "optim.lr=1e-5",
            "dualpath.class_weights=[0.2,0.8]",
            "train.compile=true",
            "data.dev={kind: asvspoof2019, protocol: dev.txt}",
            "model.name=rawnet2",
            "dualpath.aligner_options.eps=1e-8",
            "train.patience=null",
        ],
    )
    assert config.name == "aasist-pcgrad" and config.optim.scheduler == "cosine"
    assert config.optim.lr == 1e-5 and isinstance(config.optim.lr, float)
    assert config.dualpath.class_weights == (0.2, 0.8)
    assert config.dualpath.aligner_options == {"eps": 1e-8}
    assert config.train.compile is True and config.train.patience is None
    assert config.data.train == DataSet("asvspoof2019", "train.txt", options={"path_template": "flac/{utt_id}.flac"})
    assert config.data.dev == DataSet("asvspoof2019", "dev.txt")
    assert config.eval.sets == [DataSet("in_the_wild", "meta.csv")]
    assert config.model == {"name": "rawnet2"}


def test_override_fields_of_a_null_section_build_it():
    config = load_config(None, ["data.train.kind=csv", "data.train.protocol=train.csv"])
    assert config.data.train == DataSet("csv", "train.csv")
    with pytest.raises(ConfigError, match=r"data\.train\.protocol: required key missing"):
        load_config(None, ["data.train.kind=csv"])


def test_float_strings_are_accepted_where_floats_are_expected():
    config = config_from_dict({"optim": {"lr": "3e-4", "weight_decay": 0}})
    assert config.optim.lr == 3e-4 and config.optim.weight_decay == 0.0
    assert isinstance(config.optim.weight_decay, float)


@pytest.mark.parametrize(
    "key, suggestion, section",
    [
        ("optim.lrr=1", "lr", "optim"),
        ("train.batchsize=4", "batch_size", "train"),
        ("sed=3", "seed", "the top level"),
    ],
)
def test_unknown_override_key_suggests_the_nearest(key, suggestion, section):
    with pytest.raises(ConfigError, match=rf"did you mean '{suggestion}'.*valid keys of {section}:"):
        load_config(None, [key])


def test_unknown_key_in_a_file_names_the_file_and_the_path(tmp_path):
    path = write(tmp_path, "optim:\n  lrr: 1.0e-5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and "optim.lrr" in message and "did you mean 'lr'" in message
    assert "lr, weight_decay, betas" in message
    path = write(tmp_path, "eval:\n  sets:\n    - {kind: csv, protocol: a.csv}\n    - {kindd: csv, protocol: b}\n")
    with pytest.raises(ConfigError, match=r"eval\.sets\[1\]\.kindd: unknown key \(did you mean 'kind'"):
        load_config(path)


@pytest.mark.parametrize(
    "data, key, expected",
    [
        ({"train": {"batch_size": True}}, "train.batch_size", "expected int, found True (bool)"),
        ({"train": {"batch_size": 2.0}}, "train.batch_size", "expected int, found 2.0 (float)"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "expected float, found 'fast' (str)"),
        ({"train": {"compile": "yes"}}, "train.compile", "expected bool, found 'yes' (str)"),
        ({"optim": {"name": "lamb"}}, "optim.name", "expected one of 'adam', 'adamw', 'sgd', found 'lamb'"),
        ({"dualpath": {"class_weights": [1.0]}}, "dualpath.class_weights", "expected tuple[float, float]"),
        ({"dualpath": {"class_weights": [1.0, "x"]}}, "dualpath.class_weights[1]", "expected float"),
        (
            {"eval": {"sets": [{"kind": "csv", "protocol": "a"}, {"kind": "mp3", "protocol": "b"}]}},
            "eval.sets[1].kind",
            "expected one of asvspoof2019",
        ),
        ({"model": {"layers": 3}}, "model.name", "expected a model registry name"),
        ({"model": "aasist"}, "model", "expected a mapping"),
        ({"data": {"train": "train.txt"}}, "data.train", "expected a mapping of DataSet keys"),
        ({"seed": None}, "seed", "expected int, found None"),
    ],
)
def test_wrong_types_name_the_key_and_what_was_expected(data, key, expected):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, source="exp.yaml")
    assert caught.value.key == key
    assert str(caught.value).startswith(f"exp.yaml: {key}: ")
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.batch_size=0", "train.batch_size"),
        ("train.n_best=0", "train.n_best"),
        ("optim.lr=0", "optim.lr"),
        ("optim.betas=[0.9, 1.5]", "optim.betas[1]"),
        ("dualpath.class_weights=[0, 0]", "dualpath.class_weights"),
        ("augment.chain=null", "augment.chain"),
    ],
)
def test_value_checks_name_the_key(override, key):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert caught.value.key == key
    assert str(caught.value).startswith(f"--set {override}: {key}: ")


def test_override_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"train\.epochs: has no sub-keys"):
        load_config(None, ["train.epochs.max=3"])
    with pytest.raises(ConfigError, match=r"eval\.sets: has no sub-keys"):
        load_config(None, ["eval.sets.0.kind=csv"])
    assert load_config(None, ["augment.chain=null", "augment.inline={stages: []}"]).augment.inline == {"stages": []}
    with pytest.raises(ConfigError, match=r"augment\.chain: give exactly one of augment\.chain .* and augment\.inline"):
        load_config(None, ["augment.inline={stages: []}"])


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "optim: [unclosed\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": invalid YAML"):
        load_config(path)
    path = write(tmp_path, "- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(path)


def test_round_trip_and_atomic_save(tmp_path):
    config = load_config(
        None,
        [
            "data.train={kind: csv, protocol: t.csv, options: {label_column: is_fake}}",
            "eval.sets=[{kind: for, protocol: /data/for}]",
            "optim.betas=[0.8, 0.99]",
        ],
    )
    plain = config_to_dict(config)
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # plain YAML types only
    assert config_from_dict(plain) == config
    target = tmp_path / "run" / "config.yaml"
    save_config(config, target)
    save_config(config, target)  # replaces the previous copy
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]
    assert load_config(target) == config
    assert yaml.safe_load(target.read_text(encoding="utf-8")) == plain


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    save_config(ExperimentConfig(), target)
    old = target.read_text(encoding="utf-8")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("dpda.atomic.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_config(ExperimentConfig(name="other"), target)
    assert target.read_text(encoding="utf-8") == old
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
