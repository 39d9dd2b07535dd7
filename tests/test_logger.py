"""The run logger: CSV rows under a fixed header, resume truncation, TensorBoard events and purge,
the disabled logger, and augmentation summaries in the log."""

from __future__ import annotations

import csv
import doctest
import math
import warnings
from importlib.util import find_spec

import pytest
import torch

import dpda.train.logger as logger_module
from dpda.augment.summary import summarise_augmentation
from dpda.train.logger import RunLogger, read_csv

needs_tensorboard = pytest.mark.skipif(find_spec("tensorboard") is None, reason="tensorboard is not installed")


def rows(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def scalars(folder, tag):
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return {}
    events = accumulator.Scalars(tag)
    assert len({event.step for event in events}) == len(events), f"{tag}: a step logged twice"
    return {event.step: event.value for event in events}


def age_event_files(folder, seconds=100):
    """Date the event files under ``folder`` back, as if an earlier process had written them:
    TensorBoard reads a run's files in name order, and the name starts with the creation second."""
    for path in folder.rglob("events.out.tfevents.*"):
        stamp, rest = path.name.removeprefix("events.out.tfevents.").split(".", 1)
        path.rename(path.with_name(f"events.out.tfevents.{int(stamp) - seconds:010d}.{rest}"))


def stats(loss, *, skipped=False, conflict=None, cosine=None):
    return {
        "loss_orig": loss,
        "loss_aug": loss + 0.5,
        "skipped": skipped,
        "cosine": cosine,
        "conflict": conflict,
        "clip_coef": None,
    }


def logger(folder, steps=("loss", "skipped", "aug/noise.snr_db"), epochs=("step", "dev_eer"), **options):
    return RunLogger(folder, step_columns=steps, epoch_columns=epochs, **options)


def test_the_header_is_fixed_and_absent_keys_are_empty_cells(tmp_path):
    with logger(tmp_path, tensorboard=False) as log:
        assert rows(tmp_path / "steps.csv") == [["step", "epoch", "loss", "skipped", "aug/noise.snr_db"]]
        log.log_step(1, 0, {"loss": 0.5, "skipped": False})
        log.log_step(2, 0, {"loss": 0.25, "skipped": True})
        log.log_step(3, 1, {"loss": 0.125, "aug/noise.snr_db": 7.5, "skipped": False})
        log.log_step(4, 1, {"skipped": None, "aug/noise.snr_db": 2.0})
        with pytest.raises(ValueError, match=r"no column 'aug/reverb\.rir_index'"):
            log.log_step(5, 1, {"aug/reverb.rir_index": 3.0})
    assert rows(tmp_path / "steps.csv") == [
        ["step", "epoch", "loss", "skipped", "aug/noise.snr_db"],
        ["1", "0", "0.5", "0", ""],
        ["2", "0", "0.25", "1", ""],
        ["3", "1", "0.125", "0", "7.5"],
        ["4", "1", "", "", "2.0"],
    ]
    columns = read_csv(tmp_path / "steps.csv")
    assert columns == {
        "step": [1.0, 2.0, 3.0, 4.0],
        "epoch": [0.0, 0.0, 1.0, 1.0],
        "loss": [0.5, 0.25, 0.125, None],
        "skipped": [0.0, 1.0, 0.0, None],
        "aug/noise.snr_db": [None, None, 7.5, 2.0],
    }
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="repeated"):
        logger(tmp_path, steps=("loss", "loss"), tensorboard=False)


def test_cells_round_trip_and_non_finite(tmp_path):
    third = 1 / 3
    with logger(tmp_path, steps=("x", "n", "nan", "inf", "none", "t"), tensorboard=False) as log:
        log.log_step(1, 0, {"x": third, "n": 7, "nan": math.nan, "inf": -math.inf, "none": None, "t": True})
    assert rows(tmp_path / "steps.csv")[1] == ["1", "0", repr(third), "7", "nan", "-inf", "", "1"]
    columns = read_csv(tmp_path / "steps.csv")
    assert columns["x"] == [third] and columns["none"] == [None] and columns["inf"] == [-math.inf]
    assert math.isnan(columns["nan"][0])


def test_epoch_rows_and_index_keys(tmp_path):
    with logger(tmp_path, epochs=("step", "dev_eer", "conflict_rate"), tensorboard=False) as log:
        log.log_epoch(1, {"epoch": 1, "step": 10, "dev_eer": 0.1, "conflict_rate": math.nan})
        log.log_epoch(2, {"epoch": 2, "step": 20, "dev_eer": 0.05, "conflict_rate": 0.25})
        with pytest.raises(ValueError, match="disagrees"):
            log.log_epoch(3, {"epoch": 4})
    assert rows(tmp_path / "epochs.csv") == [
        ["epoch", "step", "dev_eer", "conflict_rate"],
        ["1", "10", "0.1", "nan"],
        ["2", "20", "0.05", "0.25"],
    ]
    assert read_csv(tmp_path / "steps.csv") == {
        "step": [],
        "epoch": [],
        "loss": [],
        "skipped": [],
        "aug/noise.snr_db": [],
    }


def test_flush_makes_rows_visible_and_close_is_final(tmp_path):
    log = logger(tmp_path, steps=("a",), tensorboard=False, flush_secs=3600)
    log.log_step(1, 0, {"a": 1.0})
    log.log_step(2, 0, {"a": 2.0})
    log.flush()
    assert read_csv(tmp_path / "steps.csv")["a"] == [1.0, 2.0]
    log.close()
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.log_step(3, 0, {"a": 3.0})


@needs_tensorboard
def test_fresh_start_overwrites(tmp_path):
    with logger(tmp_path, steps=("old",), epochs=("old",)) as log:
        log.log_step(1, 0, {"old": 1.0})
        log.log_epoch(1, {"old": 1.0})
    with logger(tmp_path, steps=("new",), epochs=()) as log:
        log.log_step(1, 0, {"new": 2.0})
    assert read_csv(tmp_path / "steps.csv") == {"step": [1.0], "epoch": [0.0], "new": [2.0]}
    assert read_csv(tmp_path / "epochs.csv") == {"epoch": []}
    assert scalars(tmp_path / "tensorboard" / "steps", "train/old") == {}
    assert scalars(tmp_path / "tensorboard" / "steps", "train/new") == {1: 2.0}


@needs_tensorboard
def test_tensorboard_scalars(tmp_path):
    columns = ("loss_orig", "loss_aug", "skipped", "cosine", "conflict", "clip_coef", "lr", "bad")
    with logger(tmp_path, steps=columns, epochs=("dev_eer", "conflict_rate"), csv=False) as log:
        for step in range(1, 5):
            log.log_step(
                step,
                0,
                {
                    **stats(step / 4, conflict=step % 2 == 0, cosine=0.5 - step / 4),
                    "lr": 1e-3,
                    "bad": math.nan if step == 2 else 1.0,
                },
            )
        log.log_epoch(1, {"dev_eer": 0.125, "conflict_rate": 0.5})
    assert not (tmp_path / "steps.csv").exists() and not (tmp_path / "epochs.csv").exists()
    steps = tmp_path / "tensorboard" / "steps"
    assert scalars(steps, "train/loss_orig") == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}
    assert scalars(steps, "train/conflict") == {1: 0.0, 2: 1.0, 3: 0.0, 4: 1.0}
    assert scalars(steps, "train/cosine") == {1: 0.25, 2: 0.0, 3: -0.25, 4: -0.5}
    assert scalars(steps, "train/lr") == pytest.approx(dict.fromkeys(range(1, 5), 0.001))
    assert scalars(steps, "train/bad") == {1: 1.0, 3: 1.0, 4: 1.0}  # NaN skipped
    assert scalars(steps, "train/clip_coef") == {}  # None skipped
    assert scalars(tmp_path / "tensorboard" / "epochs", "epoch/dev_eer") == {1: 0.125}


@needs_tensorboard
def test_resume_truncates_csvs_and_purges_events(tmp_path):
    columns = {"steps": ("loss", "extra"), "epochs": ("dev_loss",)}
    with logger(tmp_path, **columns) as log:
        for step in range(1, 7):
            log.log_step(step, (step - 1) // 2, {"loss": float(step)})
            if step % 2 == 0:
                log.log_epoch(step // 2, {"dev_loss": step / 10})
    age_event_files(tmp_path / "tensorboard")
    # killed after a state saved at step 4, end of epoch 2: steps 5-6 and epoch 3 are redone
    with logger(tmp_path, **columns, resume_step=4, resume_epoch=2) as log:
        assert read_csv(tmp_path / "steps.csv")["step"] == [1.0, 2.0, 3.0, 4.0]
        assert read_csv(tmp_path / "epochs.csv")["epoch"] == [1.0, 2.0]
        log.log_step(5, 2, {"loss": 50.0, "extra": 1.0})
        log.log_epoch(3, {"dev_loss": 3.0})
    assert read_csv(tmp_path / "steps.csv") == {
        "step": [1.0, 2.0, 3.0, 4.0, 5.0],
        "epoch": [0.0, 0.0, 1.0, 1.0, 2.0],
        "loss": [1.0, 2.0, 3.0, 4.0, 50.0],
        "extra": [None, None, None, None, 1.0],
    }
    assert read_csv(tmp_path / "epochs.csv") == {"epoch": [1.0, 2.0, 3.0], "dev_loss": [0.2, 0.4, 3.0]}
    assert scalars(tmp_path / "tensorboard" / "steps", "train/loss") == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 50.0}
    assert scalars(tmp_path / "tensorboard" / "epochs", "epoch/dev_loss") == pytest.approx({1: 0.2, 2: 0.4, 3: 3.0})


def test_resume_keeps_a_file_without_bound_and_drops_a_cut_row(tmp_path):
    columns = {"steps": ("a", "b"), "epochs": ("c",), "tensorboard": False}
    with logger(tmp_path, **columns) as log:
        for step in range(1, 4):
            log.log_step(step, 0, {"a": 1.0, "b": 2.0})
        log.log_epoch(1, {"c": 1.0})
    with open(tmp_path / "steps.csv", "a") as file:
        file.write("4,0,1.")  # a crash in the middle of a row
    with pytest.warns(RuntimeWarning, match="malformed"):
        logger(tmp_path, **columns, resume_step=10).close()
    assert read_csv(tmp_path / "steps.csv")["step"] == [1.0, 2.0, 3.0]
    assert read_csv(tmp_path / "epochs.csv") == {"epoch": [1.0], "c": [1.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger(tmp_path, **columns, resume_epoch=0).close()
    assert read_csv(tmp_path / "steps.csv")["step"] == [1.0, 2.0, 3.0]
    assert read_csv(tmp_path / "epochs.csv") == {"epoch": [], "c": []}


def test_disabled_writes_nothing(tmp_path):
    folder = tmp_path / "run"
    with logger(folder, steps=("a",), epochs=("a",), enabled=False, resume_step=3, resume_epoch=1) as log:
        log.log_step(1, 0, {"a": 1.0})
        log.log_epoch(1, {"a": 1.0})
        log.flush()
    assert not folder.exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError):
        logger(tmp_path, resume_step=True)
    with pytest.raises(TypeError):
        logger(tmp_path, resume_step=2.0)
    (tmp_path / "epochs.csv").write_text("step,loss\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        logger(tmp_path, tensorboard=False, resume_epoch=1)
    logger(tmp_path, tensorboard=False).close()
    with pytest.raises(ValueError, match="not the one this run writes"):  # another config's columns
        logger(tmp_path, steps=("loss",), tensorboard=False, resume_step=1)


def test_summarise_augmentation():
    nan = math.nan
    first = summarise_augmentation(
        {
            "rawboost.applied": torch.tensor([True, False, True, True]),
            "rawboost.snr_db": torch.tensor([10.0, nan, 20.0, 30.0]),
            "noise.applied": torch.tensor([False, False, False, False]),
            "codec.bitrate_kbps": torch.full((4,), nan, dtype=torch.float16),
            "noise.noise_index": torch.tensor([[3, -1], [-1, -1], [1, 2], [-1, -1]]),
            "reverb.rir_index": torch.tensor([-1, -1, -1, -1]),
        }
    )
    assert first == {
        "aug/rawboost.applied": 0.75,
        "aug/rawboost.snr_db": 20.0,
        "aug/noise.applied": 0.0,
        "aug/noise.noise_index": 2.0,
    }
    second = summarise_augmentation(
        {
            "rawboost.applied": torch.tensor([False, False]),
            "noise.applied": torch.tensor([True, True]),
            "noise.snr_db": torch.tensor([1.0, 2.0], dtype=torch.float64),
        }
    )
    assert second == {"aug/rawboost.applied": 0.0, "aug/noise.applied": 1.0, "aug/noise.snr_db": 1.5}
    assert summarise_augmentation({}) == {}


@needs_tensorboard
def test_augmentation_keys_changing_between_batches(tmp_path):
    batches = [
        {"noise.applied": torch.tensor([False, False])},
        {"noise.applied": torch.tensor([True, False]), "noise.snr_db": torch.tensor([4.0, math.nan])},
        {"noise.applied": torch.tensor([False, False])},
    ]
    with logger(tmp_path, steps=("loss", "aug/noise.applied", "aug/noise.snr_db")) as log:
        for step, params in enumerate(batches, start=1):
            log.log_step(step, 0, {"loss": 1.0, **summarise_augmentation(params)})
    columns = read_csv(tmp_path / "steps.csv")
    assert columns["aug/noise.applied"] == [0.0, 0.5, 0.0]
    assert columns["aug/noise.snr_db"] == [None, 4.0, None]
    assert scalars(tmp_path / "tensorboard" / "steps", "train/aug/noise.snr_db") == {2: 4.0}


def test_docstring_examples():
    result = doctest.testmod(logger_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
