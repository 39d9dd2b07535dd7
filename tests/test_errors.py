"""One base for the errors a user causes: the CLI prints them as one line and exits 2; any other
exception is a bug and keeps its traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dpda import cli
from dpda.checkpoint import CheckpointError
from dpda.config import ConfigError
from dpda.corpus import CorpusError, MissingPackagesError
from dpda.data import AudioValidationError, ProtocolError
from dpda.data.sets import DataError
from dpda.errors import DpdaError
from dpda.evaluate.calibration import CalibrationError
from dpda.evaluate.scoring import ScoreError
from dpda.landscape import LandscapeError
from dpda.models import UntrustedCodeError
from dpda.models.fairseq_convert import ConversionError, UnsafeCheckpointError
from dpda.models.weights import WeightsError
from dpda.report import ReportError
from dpda.results import ResultsError
from dpda.train import TrainingError
from dpda.train.logger import LogFileError


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ConfigError, ValueError),
        (TrainingError, RuntimeError),
        (CorpusError, RuntimeError),
        (MissingPackagesError, RuntimeError),
        (ScoreError, ValueError),
        (CheckpointError, ValueError),
        (ProtocolError, ValueError),
        (AudioValidationError, ValueError),
        (DataError, ValueError),
        (ConversionError, ValueError),
        (UnsafeCheckpointError, ValueError),
        (WeightsError, ValueError),
        (LandscapeError, ValueError),
        (ResultsError, ValueError),
        (LogFileError, ValueError),
        (ReportError, ValueError),
        (UntrustedCodeError, ValueError),
        (CalibrationError, ValueError),
    ],
)
def test_every_user_error_is_a_dpda_error_and_keeps_its_builtin_base(error, builtin):
    """``except ValueError`` (or ``RuntimeError``) in callers of the library goes on working."""
    assert issubclass(error, DpdaError) and issubclass(error, builtin)


def one_line_error(capsys, *argv: str) -> str:
    """``dpda ARGV`` through ``dpda.cli.main``: its exit status is 2 and stderr is one
    line, which is returned."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_config_path_that_cannot_be_read(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert one_line_error(capsys, "train", str(missing)) == f"dpda train: {missing}: No such file or directory\n"
    assert one_line_error(capsys, "train", str(tmp_path)) == f"dpda train: {tmp_path}: Is a directory\n"


def test_a_bad_set_key_names_the_override(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("name: run\n")
    error = one_line_error(capsys, "train", str(config), "--set", "optim.lrr=1e-4")
    assert error.startswith("dpda train: --set optim.lrr=1e-4: optim.lrr: unknown key (did you mean 'lr'?)")
    assert "KEY=VALUE" in one_line_error(capsys, "train", str(config), "--set", "optim.lr")
    assert not (tmp_path / "runs").exists()


def test_score_with_a_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "missing.safetensors"
    error = one_line_error(capsys, "score", str(tmp_path / "a.wav"), "--model", str(missing), "--device", "cpu")
    assert error.startswith(f"dpda score: {missing}: no such file")
    assert "--device nonsense: Expected one of cpu" in one_line_error(
        capsys, "score", str(tmp_path / "a.wav"), "--model", str(missing), "--device", "nonsense"
    )


def test_bad_validate_arguments(tmp_path, capsys):
    protocol = tmp_path / "protocol.txt"
    protocol.write_text("LA_0001 LA_T_0 - - bonafide\n")
    workers = one_line_error(capsys, "validate", "asvspoof2019", str(protocol), "--workers", "-3")
    assert workers == "dpda validate: --workers must be at least 1, got -3\n"
    assert "'colour'" in one_line_error(capsys, "validate", "asvspoof2019", str(protocol), "--option", "colour=red")
    assert "--option expects KEY=VALUE" in one_line_error(capsys, "validate", "csv", str(protocol), "--option", "x")
    missing = tmp_path / "missing.txt"
    assert (
        one_line_error(capsys, "validate", "asvspoof2019", str(missing)) == f"dpda validate: {missing}: no such file\n"
    )


def test_corpus_build_refuses_bad_workers_before_building(tmp_path, capsys):
    error = one_line_error(capsys, "corpus", "build", "--out", str(tmp_path / "c"), "--workers", "0", "--no-install")
    assert error == "dpda corpus build: --workers must be at least 1, got 0\n"
    assert not (tmp_path / "c").exists()


def test_a_failed_conversion_exits_2_like_every_user_error(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    error = one_line_error(
        capsys, "convert-paper", str(missing), str(tmp_path / "out.safetensors"), "--model", "xlsr_aasist"
    )
    assert error == f"dpda convert-paper: {missing}: No such file or directory\n"


def test_other_exceptions_are_bugs_and_keep_their_traceback(monkeypatch):
    def broken(_):
        raise ValueError("a bug in dpda")

    monkeypatch.setattr(cli, "_list_aligners", broken)
    with pytest.raises(ValueError, match="a bug in dpda"):
        cli.main(["aligners"])


def test_the_installed_command_prints_one_line_and_exits_2(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "dpda", "train", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr == f"dpda train: {tmp_path / 'missing.yaml'}: No such file or directory\n"


def test_a_bad_demo_reference_model_is_refused_before_the_corpus_is_built(tmp_path, capsys):
    corrupt = tmp_path / "AASIST.pth"
    corrupt.write_bytes(b"not a checkpoint")
    error = one_line_error(capsys, "demo", "--out", str(tmp_path / "demo"), "--reference-model", str(corrupt))
    assert error.startswith(f"dpda demo: --reference-model {corrupt}: not the published AASIST weights")
    assert not (tmp_path / "demo").exists()
