"""A paper detector at its real size through ``dpda train`` itself: steps, checkpoints, kills, resume, scoring.

Each phase is its own ``dpda`` process on the built-in corpus (``--size tiny``, built into
OUT/corpus on first use), with the paper row's config (``--row``; its model at the ``--ssl``
preset, random weights) and Adam:
  steps    ``dpda train``, two optimizer steps in each mode (concat, split, joint), B per path x
           the crop length
  kill     joint, 5 epochs of one step each, dev scored, n_best 5; SIGKILL once the epoch-2
           checkpoint's temporary file is half written, then ``--resume``; SIGKILL once the epoch-3
           state's temporary file is half written, then ``--resume`` to the end: the average of
           the five checkpoints, the final model and the eval set scored. After each kill a fresh
           process reads the newest complete checkpoint and the state back (read times, checks)
  average  ``average_weights`` over the run's five checkpoints in a fresh process
  eval     ``dpda eval RUN``, and ``score``: ``dpda score`` on the eval set's files

Memory is the resident set of the ``dpda`` process, sampled every 20 ms together with the
temporary files under its run folder, so that each sample is known to fall in a step, a
checkpoint write or a state write (spikes shorter than a sample can be missed). s/step is the
epoch's ``train_seconds`` over its steps (data, RawBoost on the device and the step).

Targets (issue 15): split <= 1.05x and joint <= 1.8x concat time; split peak memory <= 1.15x
concat's; the average <= 2 weight sets; every kill leaves the previous checkpoint and state
readable and ``--resume`` finishing the run. Prints a report and writes OUT/real_size.json;
exits non-zero when a check or target fails.

    python benchmarks/real_size.py --out /tmp/real_size                    # XLSR-Conformer-TCM, xlsr_300m
    python benchmarks/real_size.py --out /tmp/real_size_aasist --row configs/paper/xlsr_aasist_pcgrad.yaml
    python benchmarks/real_size.py --out /tmp/rs_tiny --ssl tiny --batch 2 --samples 16000   # minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("concat", "split", "joint")
#: ``dpda.atomic``'s temporaries: ``.{target}.{host}.{pid}.{hex}.tmp``
TEMPORARY = re.compile(r"\.(?P<target>.+)\.[A-Za-z0-9-]+\.(?P<pid>\d+)\.[0-9a-f]{32}\.tmp")
SAMPLE_S = 0.02


@dataclass
class Sample:
    seconds: float
    rss_mb: float
    writing: str  # "checkpoint", "state", "final" or "" (computing)


@dataclass
class Watched:
    """What one process did: its exit status, wall time, memory samples and the writes seen."""

    returncode: int
    seconds: float
    samples: list[Sample]
    hwm_mb: float
    writes: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # temporary: (target, first, last)
    killed: bool = False
    output: str = ""

    def peak(self, writing: str | None = None, after: float = 0.0, before: float = float("inf")) -> float | None:
        """The largest sample taken while ``writing`` (None: any) between ``after`` and ``before``."""
        chosen = [
            s.rss_mb for s in self.samples if (writing is None or s.writing == writing) and after <= s.seconds < before
        ]
        return max(chosen, default=None)

    def first_write(self) -> float:
        """When the first checkpoint or state write began (the small files' writes do not count)."""
        return min((first for target, first, _ in self.writes.values() if _kind(target)), default=self.seconds)

    def last_state_write(self) -> float:
        return max((last for target, _, last in self.writes.values() if target == "state"), default=0.0)

    def write_seconds(self) -> dict[str, list[float]]:
        """Each write's duration (first to last sample that saw its temporary), by target."""
        durations: dict[str, list[float]] = {}
        for target, first, last in self.writes.values():
            if _kind(target):
                durations.setdefault(target, []).append(round(last - first, 3))
        return durations


def _status_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB; (nan, nan) once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            values = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS", "VmHWM")))
        return int(values["VmRSS"].split()[0]) / 1024, int(values["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError):
        return float("nan"), float("nan")


def _temporaries(folder: Path, pid: int) -> dict[str, tuple[str, int]]:
    """The temporary files and folders that process ``pid`` is writing under ``folder`` (those of
    a killed writer are other processes'): name, and their target's name and bytes so far."""
    found = {}
    for parent, folders, files in os.walk(folder):
        for name in [*folders, *files]:
            match = TEMPORARY.fullmatch(name)
            if match is None or int(match["pid"]) != pid:
                continue
            path = Path(parent, name)
            try:
                size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
            except OSError:
                continue
            found[name] = (match["target"], size)
    return found


def _kind(target: str) -> str:
    if target == "state":
        return "state"
    if target.startswith("epoch-") and target.endswith(".safetensors"):
        return "checkpoint"
    return "final" if target == "final.safetensors" else ""


def watch(
    command: list[str],
    log: Path,
    run_folder: Path | None = None,
    kill_when: Callable[[dict[str, int]], bool] | None = None,
) -> Watched:
    """Run ``command`` (its own session, stderr appended to ``log``), sampling its memory and
    ``run_folder``'s temporaries; SIGKILL its process group the first time ``kill_when(temporaries)``
    is true."""
    started = time.monotonic()
    with log.open("a") as errors:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, start_new_session=True, text=True
        )
    samples: list[Sample] = []
    writes: dict[str, tuple[str, float, float]] = {}
    state = {"hwm": 0.0, "killed": False}

    def sample() -> None:
        while process.poll() is None:
            now = time.monotonic() - started
            rss, hwm = _status_mb(process.pid)
            found = _temporaries(run_folder, process.pid) if run_folder and run_folder.exists() else {}
            temporaries = dict(found.values())
            kinds = [_kind(target) for target in temporaries if _kind(target)]
            for name, (target, _) in found.items():
                writes[name] = (target, writes.get(name, (target, now, now))[1], now)
            if rss == rss:
                samples.append(Sample(now, rss, kinds[0] if kinds else ""))
                state["hwm"] = max(state["hwm"], hwm)
            if kill_when is not None and not state["killed"] and kill_when(temporaries):
                os.killpg(process.pid, signal.SIGKILL)
                state["killed"] = True
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read() if process.stdout else ""
    returncode = process.wait()
    sampler.join()
    return Watched(returncode, time.monotonic() - started, samples, state["hwm"], writes, state["killed"], output)


def dpda(*args: str) -> list[str]:
    return [sys.executable, "-m", "dpda", *args]


def overrides(settings: dict) -> list[str]:
    """``--set KEY=VALUE`` pairs (values as JSON, which YAML reads)."""
    return [item for key, value in settings.items() for item in ("--set", f"{key}={json.dumps(value)}")]


def base_settings(args: argparse.Namespace, corpus: Path) -> dict:
    ssl = {"source": None, "tiny": "wav2vec2"} if args.ssl == "tiny" else {"source": None, "preset": args.ssl}
    return {
        "output_dir": str(args.out / "runs"),
        "data.train": {"kind": "builtin", "protocol": str(corpus / "protocols/train.txt")},
        "data.dev": None,
        "data.crop_length": args.samples,
        "data.workers": 0,
        "augment.order": "crop_then_augment",
        "augment.where": "device",
        "model.ssl": ssl,
        "train.batch_size": args.batch,
        "train.patience": None,
        "train.device": args.device,
        "logging.progress": False,
        "eval.sets": [],
    }


def epoch_rows(run: Path) -> list[dict[str, str]]:
    with (run / "epochs.csv").open() as file:
        return list(csv.DictReader(file))


def worker_read(run: Path) -> None:
    """Read every checkpoint and the state back, each value checked finite (which touches all of
    it: safetensors maps files lazily); print what they hold and how long the newest checkpoint
    and the state took. The files were just written, so they come from the page cache."""
    from dpda.checkpoint import flatten, load_state, load_weights

    def finite(tensors: dict) -> bool:
        return all(bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point())

    checkpoints = sorted((run / "checkpoints").glob("epoch-*.safetensors"))
    readable = [finite(load_weights(path)[0]) for path in checkpoints[:-1]]
    start = time.perf_counter()
    readable.append(finite(load_weights(checkpoints[-1])[0]))
    weights_s = time.perf_counter() - start
    start = time.perf_counter()
    state = load_state(run / "state")
    state_finite = finite(flatten(state)[0])
    state_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "checkpoints": [p.name for p in checkpoints],
                "checkpoint_read_s": weights_s,
                "checkpoint_finite": all(readable),
                "state_read_s": state_s,
                "state_finite": state_finite,
                "state_epoch": state["progress"]["epoch"],
                "state_step": state["progress"]["step"],
                "state_best": [epoch for epoch, _ in state["best"]["entries"]],
            }
        )
    )


def read_back(run: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--worker-read", str(run)], cwd=ROOT, capture_output=True, text=True
    )
    if completed.returncode != 0:
        raise RuntimeError(f"reading {run} back failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


class Report:
    """Checks and figures, printed as they come and kept for real_size.json."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.figures: dict = {}

    def check(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}", flush=True)
        if not ok:
            self.failed.append(what)


def step_phase(args: argparse.Namespace, corpus: Path, report: Report) -> None:
    print("== steps: two optimizer steps per mode", flush=True)
    results = {}
    for mode in MODES:
        name = f"steps_{mode}"
        settings = {
            **base_settings(args, corpus),
            "name": name,
            "dualpath.mode": mode,
            "dualpath.aligner": "mean" if mode == "concat" else "pcgrad",
            "train.epochs": 1,
            "train.max_steps_per_epoch": 2,
            "train.n_best": 1,
        }
        run = args.out / "runs" / name
        log = args.out / f"{name}.log"
        watched = watch(dpda("train", str(args.row), *overrides(settings)), log, run)
        report.check(watched.returncode == 0, f"dpda train ({mode}) exits 0 (log: {log})")
        if watched.returncode != 0:
            continue
        row = epoch_rows(run)[0]
        results[mode] = {"s_per_step": float(row["train_seconds"]) / int(row["steps"]), **_write_figures(watched)}
        print(f"  {mode}: {json.dumps(results[mode])}", flush=True)
    report.figures["steps"] = results
    if "concat" not in results:
        return
    base = results["concat"]
    for mode, (max_time, max_memory) in {"split": (1.05, 1.15), "joint": (1.8, None)}.items():
        if mode not in results:
            continue
        time_ratio = results[mode]["s_per_step"] / base["s_per_step"]
        memory_ratio = results[mode]["peak_steps_mb"] / base["peak_steps_mb"]
        results[mode].update(time_ratio=time_ratio, memory_ratio=memory_ratio)
        report.check(time_ratio <= max_time, f"{mode}: {time_ratio:.2f}x the concat step time (target <= {max_time}x)")
        if max_memory:
            report.check(
                memory_ratio <= max_memory,
                f"{mode}: {memory_ratio:.2f}x the concat step's peak memory (target <= {max_memory}x)",
            )


def kill_phase(args: argparse.Namespace, corpus: Path, report: Report) -> Path:
    print("== kill: 5 epochs of one joint step, two kills, two resumes", flush=True)
    name = "nbest"
    settings = {
        **base_settings(args, corpus),
        "name": name,
        "data.dev": {"kind": "builtin", "protocol": str(corpus / "protocols/dev.txt")},
        "eval.sets": [{"name": "builtin_eval", "kind": "builtin", "protocol": str(corpus / "protocols/eval.txt")}],
        "dualpath.mode": "joint",
        "train.epochs": 5,
        "train.max_steps_per_epoch": 1,
        "train.n_best": 5,
    }
    run = args.out / "runs" / name
    figures: dict = {}
    checkpoint = run / "checkpoints" / "epoch-001.safetensors"
    state_file = run / "state" / "state.safetensors"

    def first_epoch_written(temporaries: dict[str, int]) -> bool:  # the kill target's size is known from epoch 1
        return checkpoint.exists() and state_file.exists() and "epoch-002.safetensors" in temporaries

    # 1. run until epoch 2's checkpoint is half written
    expected = {}

    def kill_in_checkpoint(temporaries: dict[str, int]) -> bool:
        if not expected and first_epoch_written(temporaries):
            expected.update(checkpoint=checkpoint.stat().st_size, state=state_file.stat().st_size)
        return bool(expected) and temporaries.get("epoch-002.safetensors", 0) >= expected["checkpoint"] // 2

    log = args.out / f"{name}.log"
    first = watch(dpda("train", str(args.row), *overrides(settings)), log, run, kill_in_checkpoint)
    report.check(first.killed, "killed half way through the epoch-2 checkpoint write")
    figures["first"] = _write_figures(first)
    figures["checkpoint_mb"] = expected.get("checkpoint", 0) / 2**20
    figures["state_mb"] = expected.get("state", 0) / 2**20
    read = read_back(run)
    figures["after_checkpoint_kill"] = read
    report.check(
        read["checkpoints"] == ["epoch-001.safetensors"] and read["checkpoint_finite"],
        f"after it the complete checkpoints are epoch 1's only: {read['checkpoints']}",
    )
    report.check(
        read["state_epoch"] == 1 and read["state_finite"], f"and the state is epoch 1's (epoch {read['state_epoch']})"
    )

    # 2. resume until epoch 3's state is half written (its checkpoint is written before it)
    def kill_in_state(temporaries: dict[str, int]) -> bool:
        third_checkpoint = (run / "checkpoints" / "epoch-003.safetensors").exists()
        return third_checkpoint and temporaries.get("state", 0) >= expected.get("state", 2**62) // 2

    second = watch(dpda("train", "--resume", str(run)), log, run, kill_in_state)
    report.check(second.killed, "resumed, then killed half way through the epoch-3 state write")
    figures["second"] = _write_figures(second)
    read = read_back(run)
    figures["after_state_kill"] = read
    shown = f"after it the state is epoch 2's (epoch {read['state_epoch']})"
    report.check(read["state_epoch"] == 2 and read["state_finite"], shown)
    report.check(read["checkpoint_finite"], f"and the checkpoints read: {read['checkpoints']}")

    # 3. resume to the end
    third = watch(dpda("train", "--resume", str(run)), log, run)
    report.check(third.returncode == 0, f"resumed to the end, exit 0 (log: {log})")
    figures["third"] = _write_figures(third)
    figures["finish_peak_mb"] = third.peak(after=third.last_state_write())
    results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
    averaged = results.get("averaged_epochs", [])
    report.check(sorted(averaged) == [1, 2, 3, 4, 5], f"the final model averages epochs {sorted(averaged)}")
    report.check([int(r["epoch"]) for r in epoch_rows(run)] == [1, 2, 3, 4, 5], "epochs.csv holds epochs 1-5 once each")
    report.check(bool(results.get("eval")), "the eval set was scored with the averaged model")
    report.figures["kill"] = figures
    return run


def _write_figures(watched: Watched) -> dict:
    return {
        "wall_s": watched.seconds,
        "peak_steps_mb": watched.peak(before=watched.first_write()),
        "peak_checkpoint_write_mb": watched.peak("checkpoint"),
        "peak_state_write_mb": watched.peak("state"),
        "peak_process_mb": watched.hwm_mb,
        "write_s": watched.write_seconds(),
    }


def average_phase(args: argparse.Namespace, run: Path, report: Report) -> None:
    print("== average: the five checkpoints in a fresh process", flush=True)
    paths = sorted(str(p) for p in (run / "checkpoints").glob("epoch-*.safetensors"))
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/average.py"), "--worker", "dpda", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    report.check(completed.returncode == 0, f"average_weights over {len(paths)} checkpoints")
    if completed.returncode != 0:
        print(completed.stderr[-3000:])
        return
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["weight_sets"] = result["peak_mb"] / result["weights_mb"]
    report.figures["average"] = result
    report.check(result["weight_sets"] <= 2, f"the average holds {result['weight_sets']:.2f} weight sets (<= 2)")


def scoring_phase(args: argparse.Namespace, corpus: Path, run: Path, report: Report) -> None:
    print("== eval and score with the averaged model", flush=True)
    log = args.out / "scoring.log"
    evaluated = watch(dpda("eval", str(run), "--out", str(args.out / "eval"), "--device", args.device), log)
    report.check(evaluated.returncode == 0, "dpda eval RUN exits 0")
    ids = [line.split()[1] for line in (corpus / "protocols/eval.txt").read_text().splitlines()]
    files = [str(corpus / "flac" / f"{utt}.flac") for utt in ids]
    scored = watch(dpda("score", *files, "--model", str(run), "--device", args.device), log)
    lines = [json.loads(line) for line in scored.output.splitlines() if line.startswith("{")]
    report.check(
        scored.returncode == 0 and len(lines) == len(files) and all("score" in line for line in lines),
        f"dpda score: {len(lines)} JSON lines for {len(files)} files",
    )
    report.figures["eval"] = {"wall_s": evaluated.seconds, "peak_mb": evaluated.hwm_mb, "files": len(ids)}
    report.figures["score"] = {"wall_s": scored.seconds, "peak_mb": scored.hwm_mb, "files": len(files)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="working folder (corpus, runs, report); must be new or ours")
    parser.add_argument("--row", type=Path, default=Path("configs/paper/xlsr_conformer_tcm_pcgrad.yaml"))
    parser.add_argument("--ssl", default="xlsr_300m", help="an XLS-R preset (xlsr_300m, xlsr_1b, ...) or tiny")
    parser.add_argument("--batch", type=int, default=5, help="utterances per path")
    parser.add_argument("--samples", type=int, default=66800, help="crop length")
    parser.add_argument("--device", default="cpu", help="the training device (cpu, cuda, ...)")
    parser.add_argument("--phases", nargs="+", choices=["steps", "kill"], default=["steps", "kill"])
    parser.add_argument("--worker-read", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_read:
        worker_read(args.worker_read)
        return 0
    if args.out is None:
        parser.error("--out is required")
    args.out, args.row = args.out.resolve(), (ROOT / args.row).resolve()
    runs = args.out / "runs"
    if runs.exists() and any(runs.iterdir()):
        parser.error(f"{runs} holds runs already: give a new --out")
    corpus = args.out / "corpus"
    if not (corpus / "corpus.json").exists():
        subprocess.run(dpda("corpus", "build", "--out", str(corpus), "--size", "tiny", "--quiet"), check=True)
    report = Report()
    report.figures["setup"] = {"row": str(args.row), "ssl": args.ssl, "batch": args.batch, "samples": args.samples}
    print(f"# {args.row.name} at ssl {args.ssl}, {args.batch} per path x {args.samples} samples", flush=True)
    if "steps" in args.phases:
        step_phase(args, corpus, report)
    if "kill" in args.phases:
        run = kill_phase(args, corpus, report)
        if (run / "final.safetensors").exists():
            average_phase(args, run, report)
            scoring_phase(args, corpus, run, report)
    (args.out / "real_size.json").write_text(json.dumps(report.figures, indent=1) + "\n")
    print(json.dumps(report.figures, indent=1))
    print(f"{len(report.failed)} check(s) failed" if report.failed else "every check passed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
