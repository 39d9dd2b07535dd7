"""Shared helpers for the benchmarks: each variant runs in a fresh process so that its peak
memory is its own, and the parent prints ratios measured side by side in one run."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def peak_rss_mb() -> float:
    """This process' resident high-water mark (VmHWM): ``getrusage``'s ``ru_maxrss`` survives
    ``exec`` and so can report the size of the parent that forked the worker."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def time_and_memory(run: Callable[[], None], repeats: int, device: torch.device, warmup: int = 1) -> dict:
    """Median seconds of ``run`` over ``repeats`` calls and its peak memory above the state
    before the first call (GPU: allocated bytes; CPU: resident set size)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = current_rss_mb()
    times = []
    for i in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()) - base
    return {"median_s": statistics.median(times), "times_s": times, "peak_mb": peak}


def run_worker(script: str, args: list[str]) -> dict:
    """Run ``script --worker ...`` in a fresh interpreter and return the JSON it prints last."""
    completed = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark worker {args} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
