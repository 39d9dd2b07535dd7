"""Files from someone else, read by dpda: no code runs from them and no path taken from them
leaves its folder (issue 14, items 1, 2 and the calibration of item 6).

33 cases: a checkpoint whose model config imports ``os:system`` (score, eval, landscape), the
variants ``subprocess:Popen``, ``builtins:exec`` and a module of the working directory that acts
on import, a class set with ``--set model.class=``, a resumed run folder whose config.yaml was
edited to import ``os:system``, and the flag that lets a trusted file through (9); eval-set names
from a checkpoint or ``--set`` that leave ``scores/`` (absolute, ``..``, a sub-folder, hidden,
empty) and two sets of one name (6); utterance ids that climb out of the dataset root in an
ASVspoof protocol, absolute and ``..`` paths in CSV and In-the-Wild protocols (refused by
``dpda validate`` too, allowed explicitly), ids with whitespace (8); a report over a run folder
whose eval-set name leaves it (1); run names that leave ``output_dir`` (4); a trained SSL
checkpoint that would name its front-end folder (1); checkpoints whose calibration is a string,
lacks a key, holds a string or NaN (4).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from tiny_runs import experiment, write_config, write_corpus, write_split

from dpda import cli
from dpda.checkpoint import save_weights
from dpda.data import ProtocolError, read_protocol
from dpda.evaluate.calibration import CalibrationError
from dpda.evaluate.evaluation import load_detector
from dpda.models import UntrustedCodeError, build
from dpda.train import TrainingError, train
from dpda.train.build import run_dir_for

TINY_AASIST = {"name": "aasist_l"}


def _error(capsys, *argv: str) -> str:
    """``dpda ARGV`` in this process: exit status 2 and one line on stderr, returned."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _checkpoint(path: Path, model: dict, weights: dict | None = None, **config: object) -> Path:
    """A dpda checkpoint whose metadata says ``model`` built it (weights of a real AASIST-L
    unless given), with the further experiment-config keys ``config``."""
    state = weights if weights is not None else build(TINY_AASIST).state_dict()
    save_weights(path, state, {"config": {"name": "handed-over", "model": model, **config}, "model": model})
    return path


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    path = tmp_path / "clip.wav"
    sf.write(str(path), np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    return path


# -- no code runs from a file ------------------------------------------------------------------
MALICIOUS = {"name": "custom", "class": "os:system", "command": "id > pwned.txt"}


@pytest.mark.parametrize("command", ["score", "eval", "landscape"])
def test_a_checkpoint_that_imports_os_system_runs_nothing(command, tmp_path, audio, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = _checkpoint(tmp_path / "evil.safetensors", MALICIOUS)
    argv = {
        "score": ["score", str(audio), "--model", str(checkpoint)],
        "eval": ["eval", str(checkpoint)],
        "landscape": ["landscape", str(checkpoint)],
    }[command]
    error = _error(capsys, *argv, "--device", "cpu")
    assert "evil.safetensors" in error and "'os:system'" in error and "--trust-code" in error
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize(
    "model",
    [
        {"name": "custom", "class": "subprocess:Popen", "args": ["touch", "pwned.txt"]},
        {"name": "custom", "class": "builtins:exec", "source": "open('pwned.txt', 'w').close()"},
        {"name": "custom", "class": "pwnmodule:Anything"},
    ],
    ids=["subprocess", "exec", "import-side-effect"],
)
def test_no_variant_of_a_class_path_is_imported(model, tmp_path, audio, capsys, monkeypatch):
    """Not even the import: a module beside the user that acts when imported stays unimported."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "pwnmodule.py").write_text("open('pwned.txt', 'w').close()\n")
    checkpoint = _checkpoint(tmp_path / "evil.safetensors", model)
    error = _error(capsys, "score", str(audio), "--model", str(checkpoint), "--device", "cpu")
    assert repr(model["class"]) in error and "--trust-code" in error
    assert not (tmp_path / "pwned.txt").exists() and "pwnmodule" not in sys.modules


def test_a_class_given_with_set_over_a_checkpoint_is_refused_too(tmp_path, audio, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = _checkpoint(tmp_path / "plain.safetensors", TINY_AASIST)
    error = _error(
        capsys, "eval", str(checkpoint), "--set", "model={name: custom, class: 'os:system', command: 'id > pwned.txt'}"
    )
    assert "--trust-code" in error and not (tmp_path / "pwned.txt").exists()


def test_the_library_refuses_it_unless_told_to_trust(tmp_path):
    checkpoint = _checkpoint(tmp_path / "evil.safetensors", MALICIOUS)
    with pytest.raises(UntrustedCodeError, match=r"evil\.safetensors"):
        load_detector(checkpoint, torch.device("cpu"))


def test_a_trusted_checkpoint_with_a_class_of_the_users_loads(tmp_path):
    """The tests' ``TinyDetector`` (tests/models.py), built by class path with ``--trust-code``."""
    from models import TinyDetector

    checkpoint = _checkpoint(
        tmp_path / "mine.safetensors",
        {"name": "custom", "class": "models:TinyDetector"},
        weights=TinyDetector().state_dict(),
    )
    detector = load_detector(checkpoint, torch.device("cpu"), trust_code=True)
    assert isinstance(detector.model, TinyDetector)


def test_a_resumed_folder_whose_config_imports_os_system_runs_nothing(tmp_path, monkeypatch):
    """A run folder is someone's: its config.yaml, edited to import ``os:system``, is refused on
    ``--resume`` (the library's ``train(None, folder, resume=True)``) before the model is built."""
    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(tmp_path / "corpus")
    config = experiment(corpus, tmp_path / "runs", epochs=1, max_steps_per_epoch=1)
    config["model"] = {"name": "aasist_l"}
    config["eval"]["sets"] = []
    from dpda.config import load_config

    folder = run_dir_for(load_config(write_config(tmp_path / "c.yaml", config)))
    train(load_config(tmp_path / "c.yaml"))
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    saved["model"] = MALICIOUS
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(TrainingError, match="--trust-code"):
        train(None, folder, resume=True)
    assert not (tmp_path / "pwned.txt").exists()


# -- no path from data leaves its folder ---------------------------------------------------------
@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../../escaped", "sub/name", ".hidden", ""])
def test_an_eval_set_name_that_leaves_scores_is_refused(name, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    eval_set = {"kind": "asvspoof2019", "protocol": str(corpus / "eval.txt"), "root": str(corpus), "name": name}
    checkpoint = _checkpoint(tmp_path / "model.safetensors", TINY_AASIST, eval={"sets": [eval_set]})
    out = tmp_path / "out"
    error = _error(capsys, "eval", str(checkpoint), "--out", str(out), "--device", "cpu")
    assert repr(name) in error and "not a plain file name" in error
    assert not out.exists() and not (tmp_path / "escaped.txt").exists()


def test_two_eval_sets_of_one_name_are_refused(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    eval_set = {"kind": "asvspoof2019", "protocol": str(corpus / "eval.txt"), "root": str(corpus), "name": "same"}
    checkpoint = _checkpoint(tmp_path / "model.safetensors", TINY_AASIST, eval={"sets": [eval_set, eval_set]})
    assert "share the name(s) same" in _error(capsys, "eval", str(checkpoint), "--device", "cpu")


def test_an_utterance_id_that_climbs_out_of_the_root_is_refused(tmp_path, capsys):
    protocol = write_split(tmp_path / "corpus", "train", 4, seed=0)
    lines = protocol.read_text().splitlines()
    lines[2] = "SPK0 ../../../etc/passwd - - bonafide"
    protocol.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ProtocolError, match=r"train\.txt:3: utterance id '\.\./\.\./\.\./etc/passwd' is not a plain file name"
    ):
        read_protocol("asvspoof2019", protocol)
    assert "train.txt:3: utterance id" in _error(capsys, "validate", "asvspoof2019", str(protocol))


def _csv(tmp_path: Path, rows: list[str], header: str = "path,label") -> Path:
    path = tmp_path / "protocol.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("/etc/passwd,bonafide", "absolute path"),
        ("../outside.wav,spoof", "'..'"),
        ("audio/..\\..\\outside.wav,spoof", "'..'"),
    ],
)
def test_csv_paths_that_leave_the_root_are_refused(row, reason, tmp_path, capsys):
    protocol = _csv(tmp_path, ["inside.wav,bonafide", row])
    with pytest.raises(ProtocolError, match=rf"protocol\.csv:3: .*would leave the dataset root: .*{re.escape(reason)}"):
        read_protocol("csv", protocol)
    assert "would leave the dataset root" in _error(capsys, "validate", "csv", str(protocol), "--header-only")


def test_in_the_wild_paths_are_confined_too(tmp_path):
    protocol = _csv(tmp_path, ["/abs/0.wav,alice,spoof"], header="file,speaker,label")
    with pytest.raises(ProtocolError, match="absolute path"):
        read_protocol("in_the_wild", protocol)


def test_absolute_csv_paths_pass_when_the_config_allows_them(tmp_path, audio, capsys):
    protocol = _csv(tmp_path, [f"{audio},bonafide"])
    (record,) = read_protocol("csv", protocol, allow_absolute_paths=True)
    assert record.path == str(audio)
    assert cli.main(["validate", "csv", str(protocol), "--option", "allow_absolute_paths=true"]) == 0
    with pytest.raises(ProtocolError, match=r"'\.\.'"):  # '..' stays refused: it is never needed
        read_protocol("csv", _csv(tmp_path, ["../x.wav,spoof"]), allow_absolute_paths=True)


def test_an_utterance_id_with_whitespace_is_refused(tmp_path):
    """``<id> <score>`` lines: an id with a space would put a word where the score belongs."""
    protocol = _csv(tmp_path, ["a.wav,bonafide,two words"], header="path,label,id")
    with pytest.raises(ProtocolError, match=r"protocol\.csv:2: utterance id 'two words' holds whitespace"):
        read_protocol("csv", protocol, id_column="id")


def test_a_report_over_a_run_folder_whose_set_name_leaves_it_is_refused(tmp_path, capsys):
    folder = tmp_path / "someones-run"
    folder.mkdir()
    eval_set = {"kind": "asvspoof2019", "protocol": "eval.txt", "name": "../../../etc/passwd"}
    (folder / "config.yaml").write_text(yaml.safe_dump({"name": "x", "eval": {"sets": [eval_set]}}))
    error = _error(capsys, "report", str(folder), "--out", str(tmp_path / "report"))
    assert "config.yaml: eval.sets" in error and "not a plain file name" in error


# -- a calibration is numbers --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        ("sigmoid", "expected {scale, offset, threshold"),
        ({"scale": 1.0, "offset": 0.0}, "expected {scale, offset, threshold"),
        ({"scale": "1", "offset": 0.0, "threshold": 0.0}, "calibration.scale: expected a finite number"),
        ({"scale": 1.0, "offset": 0.0, "threshold": float("nan")}, "calibration.threshold: expected a finite number"),
    ],
)
def test_a_checkpoint_whose_calibration_is_not_numbers_is_one_error(calibration, message, tmp_path, audio, capsys):
    path = tmp_path / "model.safetensors"
    model = build(TINY_AASIST)
    # written as the file would arrive: the header's JSON by hand (dpda's writer refuses NaN)
    save_weights(path, model.state_dict(), {"config": {"name": "x", "model": TINY_AASIST}, "model": TINY_AASIST})
    _rewrite_meta(path, calibration)
    with pytest.raises(CalibrationError, match=message):
        load_detector(path, torch.device("cpu"))
    assert "model.safetensors: calibration" in _error(capsys, "score", str(audio), "--model", str(path))


def _rewrite_meta(path: Path, calibration: object) -> None:
    """Put ``calibration`` into the safetensors header's dpda metadata of ``path``."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as file:
        document = json.loads(file.metadata()["dpda"])
    document["calibration"] = calibration
    save_file(load_file(str(path)), str(path), metadata={"dpda": json.dumps(document)})


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "a\\b"])
def test_a_run_name_that_leaves_output_dir_is_refused(name):
    """``output_dir/name`` is the run folder: ``..`` would put it (and its cleanup) above."""
    from dpda.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="name: expected a plain folder name"):
        config_from_dict({"name": name})


def test_a_trained_ssl_checkpoint_names_no_front_end_folder(tmp_path, audio, capsys):
    """Trained from a ``save_pretrained`` folder, the checkpoint stores the front-end's config:
    it scores with that folder gone, and its metadata holds no path of the training machine."""
    from transformers import Wav2Vec2Model

    from dpda.config import load_config
    from dpda.models.ssl import tiny_config

    folder = tmp_path / "pretrained-w2v"
    Wav2Vec2Model(tiny_config("wav2vec2")).save_pretrained(folder)
    corpus = write_corpus(tmp_path / "corpus")
    config = experiment(corpus, tmp_path / "runs", epochs=1, max_steps_per_epoch=1)
    config["model"] = {"name": "xlsr_aasist", "ssl": {"source": str(folder), "local_files_only": True}}
    config["eval"]["sets"] = []
    train(load_config(write_config(tmp_path / "c.yaml", config)))
    final = tmp_path / "runs" / "tiny" / "final.safetensors"
    assert str(folder) not in final.with_suffix(".json").read_text()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    assert cli.main(["score", str(audio), "--model", str(final), "--device", "cpu"]) == 0
    assert "score" in json.loads(capsys.readouterr().out)
