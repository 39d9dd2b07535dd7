"""Run folders under hostile conditions (issue 14): kills, two trainings at once, debris, the
umask, a full disk. Real processes throughout (``dpda train`` in subprocesses, SIGKILL, torchrun,
``RLIMIT_FSIZE``, a real tmpfs), held at known steps by ``gated.GatedDetector``; every run that
finishes is compared with an uninterrupted one, weight for weight.

15 cases:

1-2. a run killed before its first state save restarts with the same ``dpda train CONFIG``, or
     with ``--resume DIR``, and ends with the uninterrupted run's weights; the killed attempt's
     files are moved into ``.aborted-*``;
3.   a folder of another config is refused, naming the differing key and both values;
4.   a second training into a locked folder is refused naming the holder (pid, host, command),
     and once the holder is killed its lock file does not block;
5.   two real trainings started into one folder at once: one trains to the uninterrupted
     weights, the other is refused in one line naming it;
6.   with two torchrun ranks, a locked folder stops both (no rank waits forever);
7.   temporaries of a SIGKILLed writer (in the folder, ``state/``, ``checkpoints/``, a state
     save's temporary folder) are removed when the run resumes, and it resumes exactly;
8.   a state save killed between its two renames resumes from the previous state, exactly;
9.   outside a lock, ``remove_orphans`` removes only the temporaries of ended writers of this host;
10-11. every file and folder a run writes has the umask's permissions (022 and 027);
12.  a file size limit hit while saving the state is one line naming the file (EFBIG), and the
     folder resumes to the uninterrupted weights;
13.  the same for a really full disk (ENOSPC, a tmpfs: needs the right to mount one);
14.  a fresh start into a folder that holds a saved state is refused (resume it instead);
15.  a checkpoint the disk cannot hold is refused before its write (free space against its size),
     the complete one of that name kept.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import environment, experiment, write_config

from dpda.atomic import atomic_path, remove_orphans
from dpda.checkpoint import load_weights
from dpda.config import load_config, save_config
from dpda.train import TrainingError, train
from dpda.train.lock import FolderInUseError
from dpda.train.logger import read_csv

KILL_AT = 9  # held at step 9: 8 steps done, mid-way through epoch 2 (6 steps an epoch)


def _config(corpus: Path, runs: Path, gate: Path, after: int = 1, **train: object) -> dict:
    """The tiny experiment, saving its state every step, with a gated model (same weights)."""
    config = experiment(corpus, runs, save_every_steps=1, **train)
    config["model"] = {"name": "custom", "class": "gated:GatedDetector", "gate": str(gate), "after": after}
    return config


def _dpda(*args: str, **options: object) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dpda", *args]
    return subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300, **options)


def _held(config: Path, gate: Path) -> subprocess.Popen:
    """``dpda train config`` started and held at its gate."""
    gate.touch()
    process = subprocess.Popen(
        [sys.executable, "-m", "dpda", "train", str(config)],
        env=environment(),
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not gate.with_suffix(".reached").exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the run never reached its gate"
        time.sleep(0.01)
    return process


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def _lock_holder(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock (until killed)."""
    code = "import sys, time; from pathlib import Path; from dpda.train.lock import RunLock; "
    code += "RunLock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        env=environment(),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def _assert_same_weights(run: Path, reference: Path) -> None:
    final, expected = (load_weights(folder / "final.safetensors")[0] for folder in (run, reference))
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[key], expected[key]) for key in final)
    assert read_csv(run / "steps.csv")["loss_aug"] == read_csv(reference / "steps.csv")["loss_aug"]
    assert read_csv(run / "epochs.csv")["epoch"] == [1, 2, 3]


def _error_line(completed: subprocess.CompletedProcess) -> str:
    """The one line a refused ``dpda train`` printed (warnings aside)."""
    assert completed.returncode == 2, completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.startswith("dpda train: ")]
    assert len(lines) == 1 and "Traceback" not in completed.stderr, completed.stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end up equal to."""
    root = tmp_path_factory.mktemp("reference")
    config = {**_config(corpus, root / "runs", root / "no-gate"), "name": "reference"}
    completed = _dpda("train", str(write_config(root / "reference.yaml", config)))
    assert completed.returncode == 0, completed.stderr
    return root / "runs" / "reference"


@pytest.mark.parametrize("command", ["config", "resume"])
def test_a_run_killed_before_its_first_state_save_restarts(corpus, tmp_path, reference, command):
    gate = tmp_path / "gate"
    config = write_config(tmp_path / "c.yaml", _config(corpus, tmp_path / "runs", gate))
    _kill(_held(config, gate))
    run = tmp_path / "runs" / "tiny"
    assert (run / "config.yaml").exists() and (run / "steps.csv").exists() and not (run / "state").exists()
    gate.unlink()
    completed = _dpda("train", *([str(config)] if command == "config" else ["--resume", str(run), "--trust-code"]))
    assert completed.returncode == 0, completed.stderr
    assert "no saved training state" in completed.stderr and "starting it anew" in completed.stderr
    (aside,) = run.glob(".aborted-*")
    assert str(aside) in completed.stderr
    assert {p.name for p in aside.iterdir()} >= {"steps.csv", "epochs.csv", "tensorboard"}
    _assert_same_weights(run, reference)


def test_a_folder_of_another_config_is_refused_naming_the_difference(corpus, tmp_path):
    config = _config(corpus, tmp_path / "runs", tmp_path / "gate")
    run = tmp_path / "runs" / "tiny"
    save_config(load_config(write_config(tmp_path / "a.yaml", config)), run / "config.yaml")
    other = load_config(write_config(tmp_path / "b.yaml", {**config, "optim": {"lr": 0.02}}))
    with pytest.raises(
        TrainingError, match=r"another run: its config.yaml differs in optim.lr \(0.01 there, 0.02 here\)"
    ):
        train(other)
    assert [p.name for p in run.iterdir()] == ["config.yaml"]


def test_a_locked_folder_is_refused_naming_its_holder_and_a_dead_holder_does_not_block(corpus, tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml", _config(corpus, tmp_path / "runs", tmp_path / "gate")))
    run = tmp_path / "runs" / "tiny"
    holder = _lock_holder(run)
    with pytest.raises(FolderInUseError) as refused:
        train(config)
    message = str(refused.value)
    assert f"pid {holder.pid} on {socket.gethostname()}" in message and "time.sleep(600)" in message
    assert [p.name for p in run.iterdir()] == [".lock"]  # nothing written
    _kill(holder)
    assert train(config).epochs == 3
    assert (run / ".lock").read_text().startswith(f"pid {os.getpid()} on ")


def test_two_trainings_at_once_one_trains_and_the_other_is_refused(corpus, tmp_path, reference):
    gate = tmp_path / "gate"
    config = write_config(tmp_path / "c.yaml", _config(corpus, tmp_path / "runs", gate))
    gate.touch()  # whichever takes the folder first waits at its first step, holding the lock
    command = [sys.executable, "-m", "dpda", "train", str(config)]
    both = [subprocess.Popen(command, env=environment(), stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 120
    while all(process.poll() is None for process in both):
        assert time.monotonic() < deadline, "neither training was refused"
        time.sleep(0.01)
    refused = next(process for process in both if process.returncode is not None)
    (winner,) = (process for process in both if process is not refused)
    stderr = refused.communicate()[1]
    line = _error_line(subprocess.CompletedProcess(command, refused.returncode, "", stderr))
    assert f"is in use by another training (pid {winner.pid} on " in line
    gate.unlink()
    assert winner.communicate(timeout=300) is not None and winner.returncode == 0
    _assert_same_weights(tmp_path / "runs" / "tiny", reference)


def test_every_torchrun_rank_stops_on_a_locked_folder(corpus, tmp_path):
    config = write_config(tmp_path / "c.yaml", _config(corpus, tmp_path / "runs", tmp_path / "gate"))
    holder = _lock_holder(tmp_path / "runs" / "tiny")
    try:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command += ["--master_port", "29537", "-m", "dpda", "train", str(config)]
        completed = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=180)
    finally:
        _kill(holder)
    assert completed.returncode != 0
    assert completed.stderr.count("dpda train: rank 0: ") == 1, completed.stderr  # rank 1 has rank 0's word
    assert completed.stderr.count(f"is in use by another training (pid {holder.pid} ") == 2, completed.stderr


@pytest.fixture(scope="module")
def killed_mid_epoch(corpus, tmp_path_factory) -> Path:
    """The run folder of a tiny run killed after step 8, its state saved (its config beside ``runs``)."""
    root = tmp_path_factory.mktemp("killed")
    gate = root / "gate"
    config = write_config(root / "c.yaml", _config(corpus, root / "runs", gate, after=KILL_AT))
    _kill(_held(config, gate))
    gate.unlink()
    return root / "runs" / "tiny"


def _copy(run: Path, tmp_path: Path) -> Path:
    """A copy of ``run`` to resume (``--resume DIR`` trains in DIR)."""
    return Path(shutil.copytree(run, tmp_path / "tiny"))


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def test_a_killed_writers_temporaries_are_removed_on_resume(killed_mid_epoch, tmp_path, reference):
    run = _copy(killed_mid_epoch, tmp_path)
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from dpda.atomic import atomic_path, temporary_sibling\n"
        "run = Path(sys.argv[1])\n"
        "for target in ('results.json', 'state/state.json', 'checkpoints/epoch-002.safetensors'):\n"
        "    atomic_path(run / target).__enter__().write_bytes(bytes(100_000))\n"
        "save = temporary_sibling(run / 'state')\n"  # what save_state builds before its renames
        "save.mkdir()\n"
        "(save / 'state.safetensors').write_bytes(bytes(100_000))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(run)], env=environment(), check=False)
    assert killed.returncode == -signal.SIGKILL and len(_temporaries(run)) == 4
    completed = _dpda("train", "--resume", str(run), "--trust-code")
    assert completed.returncode == 0, completed.stderr
    assert _temporaries(run) == []
    _assert_same_weights(run, reference)


def test_a_state_save_killed_between_its_renames_resumes_from_the_previous_state(killed_mid_epoch, tmp_path, reference):
    run = _copy(killed_mid_epoch, tmp_path)
    os.replace(run / "state", run / ".state.old-4242")  # what save_state leaves between its renames
    completed = _dpda("train", "--resume", str(run), "--trust-code")
    assert completed.returncode == 0, completed.stderr
    assert not list(run.glob(".state.old-*"))
    _assert_same_weights(run, reference)


def test_remove_orphans_outside_a_lock_removes_only_ended_writers_temporaries(tmp_path):
    folder = tmp_path / "out"
    (folder / "scores").mkdir(parents=True)
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from dpda.atomic import atomic_path\n"
        "for target in sys.argv[1:]:\n"
        "    atomic_path(Path(target)).__enter__().write_text('half')\n"
        "print(os.getpid(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    targets = [folder / "results.json", folder / "scores" / "eval.txt"]
    killed = subprocess.run(
        [sys.executable, "-c", code, *map(str, targets)], env=environment(), capture_output=True, text=True
    )
    dead = _temporaries(folder)
    assert killed.returncode == -signal.SIGKILL and len(dead) == 2
    elsewhere = folder / f".x.json.another-host.{killed.stdout.strip()}.{'0' * 32}.tmp"  # cannot be asked
    elsewhere.write_text("?")
    (folder / ".state.old-1").mkdir()  # not a temporary
    with atomic_path(folder / "mine.json") as mine:  # this live process' own
        mine.write_text("going on")
        assert sorted(remove_orphans(folder)) == dead
        assert _temporaries(folder) == sorted([elsewhere, mine])
    assert remove_orphans(folder, locked=True) == [elsewhere]
    assert sorted(p.name for p in folder.iterdir()) == [".state.old-1", "mine.json", "scores"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_output_of_a_run_has_the_umasks_permissions(corpus, tmp_path, umask):
    config = write_config(tmp_path / "c.yaml", _config(corpus, tmp_path / "runs", tmp_path / "gate", epochs=1))
    completed = _dpda("train", str(config), umask=umask)
    assert completed.returncode == 0, completed.stderr
    run = tmp_path / "runs" / "tiny"
    written = [run, *run.rglob("*")]
    expected = {path: (0o777 if path.is_dir() else 0o666) & ~umask for path in written}
    assert {path: stat.S_IMODE(path.stat().st_mode) for path in written} == expected
    names = {str(path.relative_to(run)) for path in written}
    assert {".lock", "final.safetensors", "results.json", "scores/heldout.txt", "state/state.safetensors"} <= names


def test_a_file_size_limit_while_saving_is_one_error_and_the_run_resumes(corpus, tmp_path, reference):
    # the last state (three epochs in its history) does not fit, every earlier and smaller file does
    limit = (reference / "state" / "state.safetensors").stat().st_size - 150
    assert all(p.stat().st_size < limit for p in reference.rglob("*") if p.is_file() and p.parent.name != "state")
    config = write_config(tmp_path / "c.yaml", _config(corpus, tmp_path / "runs", tmp_path / "gate"))
    limited = _dpda("train", str(config), preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    line = _error_line(limited)
    assert "state.safetensors: File too large (EFBIG): the file size limit" in line and "--resume" in line
    run = tmp_path / "runs" / "tiny"
    assert _temporaries(run) == [] and not (run / "final.safetensors").exists()
    completed = _dpda("train", "--resume", str(run), "--trust-code")
    assert completed.returncode == 0, completed.stderr
    _assert_same_weights(run, reference)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (skipped where this process may not mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_error_and_the_run_resumes_once_there_is_room(corpus, tmp_path, reference, small_disk):
    config = write_config(tmp_path / "c.yaml", _config(corpus, small_disk / "runs", tmp_path / "gate"))
    filler = small_disk / "filler"
    free = os.statvfs(small_disk)
    filler.write_bytes(bytes(free.f_bavail * free.f_frsize - 96 * 1024))  # room for the run's first epoch or so
    line = _error_line(_dpda("train", str(config)))
    full = r"No space left on device(: needs [\d,]+ bytes, [\d,]+ free)? \(ENOSPC\): the disk is full"
    assert re.search(full, line) and "--resume" in line
    filler.unlink()
    run = small_disk / "runs" / "tiny"
    assert _temporaries(run) == []
    completed = _dpda("train", "--resume", str(run), "--trust-code")
    assert completed.returncode == 0, completed.stderr
    _assert_same_weights(run, reference)


def test_a_checkpoint_the_disk_cannot_hold_is_refused_before_the_write_and_the_old_one_kept(small_disk):
    """Free space is checked against the checkpoint's size first: no partial file, no temporary,
    and the complete checkpoint of the same name (and its .json) stay as they were."""
    from dpda.checkpoint import load_weights, save_weights

    path = small_disk / "epoch-001.safetensors"
    save_weights(path, {"w": torch.ones(1000)}, {"epoch": 1})
    before = {p.name: p.read_bytes() for p in small_disk.iterdir()}
    with pytest.raises(OSError, match=r"needs [\d,]+ bytes, [\d,]+ free") as caught:
        save_weights(path, {"w": torch.ones(2**19)}, {"epoch": 2})  # 2 MiB on a 1 MiB disk
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert {p.name: p.read_bytes() for p in small_disk.iterdir()} == before
    assert load_weights(path)[1]["epoch"] == 1


def test_a_fresh_start_into_a_folder_with_a_saved_state_is_refused(killed_mid_epoch):
    run, before = killed_mid_epoch, sorted(killed_mid_epoch.rglob("*"))
    refusal = re.escape(f"{run} already holds a run; continue it with `dpda train --resume {run}`")
    with pytest.raises(TrainingError, match=refusal):
        train(load_config(run.parents[1] / "c.yaml"))
    assert sorted(run.rglob("*")) == before
