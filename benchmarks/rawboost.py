"""Throughput of RawBoost algorithm 4 (LnL, ISD, SSI in series): dpda's batched torch version
against the paper code's NumPy version, which augments one utterance at a time.

Both variants run in one fresh worker process on one thread each (torch.set_num_threads(1); the
OpenMP/BLAS thread variables are set before NumPy loads), on the same batch, median of --repeats
after one warm-up. On CPU the worker runs twice: with glibc's default allocator settings, and
with glibc keeping freed memory (GLIBC_TUNABLES; PyTorch's CPU performance guide gets the same
effect from jemalloc or tcmalloc): dpda's batch-sized temporaries otherwise come back as fresh
pages on every call, and page faults are expensive on some (virtual) machines. The target is
judged on the default settings; the second run shows how much of the time was the allocator.

The reference RawBoost.py is not part of dpda; take it from the paper's code
(github.com/ductuantruong/dpda_ga) and pass its path:

    git -C <clone of dpda_ga> show HEAD:RawBoost.py > /tmp/RawBoost.py
    python benchmarks/rawboost.py --reference /tmp/RawBoost.py
    python benchmarks/rawboost.py --reference /tmp/RawBoost.py --device cuda

NumPy 2 refuses ``int()`` of the one-element array that the reference's ``randRange`` returns;
the worker replaces ``randRange`` with the same uniform draw returning a scalar.

Targets: on CPU dpda >= 10x the reference's throughput; on a GPU >= 20,000x real time.
Exits non-zero when the target is missed.

``--loader`` measures instead what one loader worker does in the paper's order
(``augment.order: augment_then_crop``, ``augment.where: loader``): read an utterance of 1-10 s
from a WAV file, RawBoost the whole of it, repeat-pad or crop both copies to 66,800 samples.
dpda: ``PairedDataset[i]``; the reference: the same soundfile read, ``process_Rawboost_feature``
on the whole utterance, then the paper's head crop / repeat-pad of both. One thread each, in one
process. Target: dpda >= the reference's throughput.

    python benchmarks/rawboost.py --reference /tmp/RawBoost.py --loader
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_worker

ALGO = 4
CPU_SPEED_UP_TARGET = 10.0
LOADER_SPEED_UP_TARGET = 1.0
LOADER_SECONDS = (1.0, 10.0)  # range of the utterance lengths (ASVspoof utterances)
CROP = 66800
GPU_REAL_TIME_TARGET = 20_000.0
ONE_THREAD = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")
ALLOCATORS = {
    "glibc default": None,
    "glibc keeps freed memory": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296",
}


def load_reference(path: Path) -> types.ModuleType:
    """Import the paper code's RawBoost.py from a file path."""
    import numpy as np

    spec = importlib.util.spec_from_file_location("reference_rawboost", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def uniform(low: float, high: float, integer: bool) -> float | int:
        value = np.random.uniform(low, high)
        return int(value) if integer else value

    module.randRange = uniform
    return module


def reference_options(rawboost: Any) -> types.SimpleNamespace:
    """The reference's option names, with dpda's (identical) defaults."""
    return types.SimpleNamespace(
        nBands=rawboost.n_bands,
        minF=rawboost.min_freq,
        maxF=rawboost.max_freq,
        minBW=rawboost.min_bandwidth,
        maxBW=rawboost.max_bandwidth,
        minCoeff=rawboost.min_taps,
        maxCoeff=rawboost.max_taps,
        minG=rawboost.min_gain_db,
        maxG=rawboost.max_gain_db,
        minBiasLinNonLin=rawboost.min_bias_db,
        maxBiasLinNonLin=rawboost.max_bias_db,
        N_f=rawboost.n_orders,
        P=rawboost.max_isd_percent,
        g_sd=rawboost.isd_gain,
        SNRmin=rawboost.min_snr_db,
        SNRmax=rawboost.max_snr_db,
    )


def worker(args: argparse.Namespace) -> None:
    """Time both variants in this process; print the medians as JSON."""
    import numpy as np
    import torch
    from measure import time_and_memory

    from dpda.augment.rawboost import RawBoost

    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    device = torch.device(args.device)
    rawboost = RawBoost(algo=ALGO)
    reference = load_reference(args.reference)
    reference_args = reference_options(rawboost)
    audio = 0.1 * torch.randn(args.batch, args.samples)
    utterances = list(audio.numpy())
    batch = audio.to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def run_reference() -> None:
        for utterance in utterances:
            reference.process_Rawboost_feature(utterance, rawboost.sample_rate, reference_args, ALGO)

    seconds = {
        "reference": time_and_memory(run_reference, args.repeats, torch.device("cpu"))["median_s"],
        "dpda": time_and_memory(lambda: rawboost(batch, generator), args.repeats, device)["median_s"],
    }
    if device.type == "cuda":
        seconds["device_name"] = torch.cuda.get_device_name(device)
    print(json.dumps(seconds))


def loader_worker(args: argparse.Namespace) -> None:
    """One loader worker's items in the paper's order, dpda against the reference; JSON out."""
    import tempfile

    import numpy as np
    import soundfile as sf
    import torch
    from measure import time_and_memory

    from dpda.augment import build_chain
    from dpda.data import Utterance
    from dpda.data.audio import fit_length
    from dpda.data.dataset import AudioDataset
    from dpda.train.paired import PairedDataset

    torch.set_num_threads(1)
    np.random.seed(0)
    chain = build_chain({"sample_rate": 16000, "stages": [{"name": "rawboost", "algo": ALGO}]})
    reference = load_reference(args.reference)
    reference_args = reference_options(chain.stages[0])
    rng = np.random.default_rng(0)
    lengths = (rng.uniform(*LOADER_SECONDS, args.batch) * 16000).astype(int)
    with tempfile.TemporaryDirectory() as folder:
        records = []
        for i, length in enumerate(lengths):
            sf.write(
                f"{folder}/{i}.wav", (0.1 * rng.standard_normal(length)).astype(np.float32), 16000, subtype="FLOAT"
            )
            records.append(Utterance(str(i), f"{i}.wav", i % 2))
        dataset = PairedDataset(
            AudioDataset(records, folder, length=CROP, crop="head", seed=0), chain, "augment_then_crop", seed=0
        )
        epoch = iter(range(10**6))

        def run_dpda() -> None:
            e = next(epoch)
            for i in range(len(records)):
                dataset[(i, e)]

        def run_reference() -> None:
            for i in range(len(records)):
                x, rate = sf.read(f"{folder}/{i}.wav", dtype="float32")
                noisy = reference.process_Rawboost_feature(x, rate, reference_args, ALGO)
                fit_length(x, CROP, "head"), fit_length(np.asarray(noisy, dtype=np.float32), CROP, "head")

        seconds = {
            "reference": time_and_memory(run_reference, args.repeats, torch.device("cpu"))["median_s"],
            "dpda": time_and_memory(run_dpda, args.repeats, torch.device("cpu"))["median_s"],
            "audio_s": float(lengths.sum() / 16000),
        }
    print(json.dumps(seconds))


def report_loader(args: argparse.Namespace, common: list[str]) -> int:
    results = {allocator: run_worker(__file__, common) for allocator in list(ALLOCATORS)[:1]}
    seconds = results["glibc default"]
    audio = seconds["audio_s"]
    print(
        f"# one loader worker, paper order (augment the whole utterance, then crop to {CROP}): "
        f"{args.batch} utterances of {LOADER_SECONDS[0]:g}-{LOADER_SECONDS[1]:g} s ({audio:.1f} s of audio) "
        f"read from WAV; RawBoost algorithm {ALGO}; one CPU thread; median of {args.repeats}"
    )
    for variant in ("reference", "dpda"):
        print(
            f"{variant:10s} {seconds[variant] * 1e3:9.1f} ms/{args.batch} items  "
            f"{audio / seconds[variant]:7.1f}x real time"
        )
    speed_up = seconds["reference"] / seconds["dpda"]
    passed = speed_up >= LOADER_SPEED_UP_TARGET
    print(f"dpda / reference: {speed_up:.2f}x  {'PASS' if passed else 'FAIL'} (target >= {LOADER_SPEED_UP_TARGET:g}x)")
    return 0 if passed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="path to the paper code's RawBoost.py")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32, help="utterances per batch")
    parser.add_argument("--samples", type=int, default=64600, help="samples per utterance (16 kHz)")
    parser.add_argument("--repeats", type=int, default=7, help="timed batches per variant (median)")
    parser.add_argument(
        "--loader", action="store_true", help="time one loader worker in the paper's order on whole 1-10 s utterances"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        (loader_worker if args.loader else worker)(args)
        return 0
    if not args.reference.is_file():
        raise SystemExit(f"{args.reference} is not a file; see the instructions at the top of this script")
    common = [
        "--reference",
        str(args.reference.resolve()),
        "--device",
        args.device,
        "--batch",
        str(args.batch),
        "--samples",
        str(args.samples),
        "--repeats",
        str(args.repeats),
        "--worker",
    ]
    if args.loader:
        os.environ.update(ONE_THREAD)
        return report_loader(args, [*common, "--loader"])
    on_gpu = args.device.startswith("cuda")
    allocators = list(ALLOCATORS)[:1] if on_gpu else list(ALLOCATORS)
    os.environ.update(ONE_THREAD)  # the workers inherit the environment
    results = {}
    for allocator in allocators:
        os.environ.pop("GLIBC_TUNABLES", None)
        if ALLOCATORS[allocator]:
            os.environ["GLIBC_TUNABLES"] = ALLOCATORS[allocator]
        results[allocator] = run_worker(__file__, common)
    audio_seconds = args.batch * args.samples / 16000
    dpda_device = results[allocators[0]].get("device_name", "CPU")
    print(
        f"# RawBoost algorithm {ALGO}; {args.batch} utterances x {args.samples} samples ({audio_seconds:.1f} s "
        f"of audio at 16 kHz); reference: NumPy on CPU, one utterance at a time; dpda: the batch on "
        f"{dpda_device}; one CPU thread each, both in one process; median of {args.repeats}"
    )
    passed = True
    for i, (allocator, seconds) in enumerate(results.items()):
        for variant in ("reference", "dpda"):
            print(
                f"{allocator:26s} {variant:10s} {seconds[variant] * 1e3:9.1f} ms/batch  "
                f"{audio_seconds / seconds[variant]:9.0f}x real time"
            )
        speed_up, real_time = seconds["reference"] / seconds["dpda"], audio_seconds / seconds["dpda"]
        verdict = ""
        if i == 0:
            passed = real_time >= GPU_REAL_TIME_TARGET if on_gpu else speed_up >= CPU_SPEED_UP_TARGET
            target = (
                f"dpda >= {GPU_REAL_TIME_TARGET:,.0f}x real time"
                if on_gpu
                else f"dpda >= {CPU_SPEED_UP_TARGET:g}x the reference"
            )
            verdict = f"  {'PASS' if passed else 'FAIL'} (target {target})"
        print(f"{allocator:26s} dpda / reference: {speed_up:.1f}x{verdict}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
