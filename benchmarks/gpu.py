"""The GPU checks of issue 15 in one go (under 8 minutes on one card), each part in a fresh process.

Parts (``--parts``):
  step      the real-size XLSR-Conformer-TCM step in bf16, concat / split / joint: s/step, peak
            GPU memory (allocated, above the model) and the ratios (``benchmarks/step.py``'s workers)
  rawboost  dpda's batched RawBoost algo 4 on the device: x real time at batch 32 x 4 s
  mamba     the XLSR-Mamba back-end with the pure-PyTorch chunked scan against ``mamba_ssm``'s CUDA
            kernel (where it is installed): max abs difference of the output, forward+backward speed
  compile   ``train.compile``: the same dual-path steps (SGD) on a compiled and an eager copy of one
            model; the largest weight difference after N steps against the largest weight change, and
            s/step of both (the first steps, which compile, are not timed)
  nccl      a one-process NCCL group: initialisation time, then the engine's broadcast of the
            parameters and its bucketed all-reduce of a real-size gradient set (time, GB/s; a sum
            over one rank must leave every value as it was)

Every part has its own time limit; one that fails or runs out is reported and the others still run.
Prints a table and writes the figures as JSON (``--json``). On a card:

    python benchmarks/gpu.py --json $OUT/gpu.json

and on a CPU, with tiny models, to check the script itself (gloo instead of NCCL):

    python benchmarks/gpu.py --device cpu --small
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

PARTS = ("step", "rawboost", "mamba", "compile", "nccl")
LIMITS_S = {"step": 210, "rawboost": 40, "mamba": 60, "compile": 110, "nccl": 40}  # 7.7 minutes at most
#: no random masking or layer drop in the front-end (the paper rows' overrides), so that two
#: copies of the model given the same inputs compute the same thing
DETERMINISTIC = "config_overrides: {layerdrop: 0.0, mask_time_prob: 0.0, mask_feature_prob: 0.0}"
REAL = f"{{name: xlsr_conformer_tcm, ssl: {{preset: xlsr_300m, {DETERMINISTIC}}}}}"
TINY = f"{{name: xlsr_conformer_tcm, ssl: {{tiny: wav2vec2, {DETERMINISTIC}}}}}"


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(run, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def part_step(args: argparse.Namespace) -> dict:
    from measure import run_worker

    common = ["--device", args.device, "--precision", args.precision, "--per-path", str(args.batch)]
    common += ["--seconds", str(args.seconds), "--repeats", "3", "--threads", str(os.cpu_count() or 1)]
    common += ["--model", args.model]
    script = str(Path(__file__).parent / "step.py")
    results = {mode: run_worker(script, [*common, "--worker", mode]) for mode in ("concat", "split", "joint")}
    base = results["concat"]
    for mode in ("split", "joint"):
        results[mode]["time_ratio"] = results[mode]["median_s"] / base["median_s"]
        results[mode]["memory_ratio"] = results[mode]["peak_mb"] / base["peak_mb"]
    results["targets"] = {
        "split_time_le_1.05": results["split"]["time_ratio"] <= 1.05,
        "split_memory_le_1.15": results["split"]["memory_ratio"] <= 1.15,
        "joint_time_le_1.8": results["joint"]["time_ratio"] <= 1.8,
    }
    return results


def part_rawboost(args: argparse.Namespace) -> dict:
    import torch

    from dpda.augment.rawboost import RawBoost

    device = torch.device(args.device)
    batch, samples = (4, 16000) if args.small else (32, 64000)
    rawboost = RawBoost(algo=4)
    audio = 0.1 * torch.randn(batch, samples, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    rawboost(audio, generator)  # warm-up (kernels, allocator)
    seconds = _median_s(lambda: rawboost(audio, generator), 10, device)
    audio_s = batch * samples / rawboost.sample_rate
    return {"batch": batch, "seconds_audio": audio_s, "median_s": seconds, "x_real_time": audio_s / seconds}


def part_mamba(args: argparse.Namespace) -> dict:
    import torch

    from dpda.models import mamba

    device = torch.device(args.device)
    torch.manual_seed(0)
    ssl_dim, frames = (32, 50) if args.small else (1024, 208)  # 208 frames: 4.175 s of XLS-R output
    chunked = mamba.MambaBackEnd(ssl_dim=ssl_dim, scan="chunked").to(device).eval()
    kernel = copy.deepcopy(chunked)
    for module in kernel.modules():
        if isinstance(module, mamba.Mamba):
            module.scan = "auto"
    features = torch.randn(args.batch * 2, frames, ssl_dim, device=device)
    installed = mamba._cuda_kernel() is not None and device.type == "cuda"

    def forward_backward(model) -> None:
        model.zero_grad(set_to_none=True)
        model(features)[1].sum().backward()

    result: dict = {"mamba_ssm": installed, "batch": features.shape[0], "frames": frames}
    with torch.no_grad():
        reference = chunked(features)[1]
        result["max_abs_difference"] = float((kernel(features)[1] - reference).abs().max()) if installed else None
        result["output_max_abs"] = float(reference.abs().max())
    forward_backward(chunked)
    result["chunked_s"] = _median_s(lambda: forward_backward(chunked), 5, device)
    if installed:
        forward_backward(kernel)
        result["mamba_ssm_s"] = _median_s(lambda: forward_backward(kernel), 5, device)
        result["speed_up"] = result["chunked_s"] / result["mamba_ssm_s"]
    return result


def _engine_inputs(args: argparse.Namespace, device):
    import torch

    generator = torch.Generator().manual_seed(1)
    x = 0.1 * torch.randn(args.batch, int(args.seconds * 16000), generator=generator)
    x_aug = x + 0.01 * torch.randn(x.shape, generator=generator)
    return x.to(device), x_aug.to(device), (torch.arange(args.batch) % 2).to(device)


def _model(args: argparse.Namespace, device):
    import torch
    import yaml

    from dpda.models import build

    torch.manual_seed(0)
    model = build(yaml.safe_load(args.model)).to(device)
    for module in model.modules():  # compiled code draws dropout masks from its own generator
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _max_difference(first, second) -> float:
    return max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(first.parameters(), second.parameters()))


def part_compile(args: argparse.Namespace) -> dict:
    import torch

    from dpda.dualpath import DualPathStep

    device = torch.device(args.device)
    eager = _model(args, device)
    start = copy.deepcopy(eager)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    x, x_aug, y = _engine_inputs(args, device)
    result: dict = {}
    for name, model, params in (("eager", eager, eager), ("compiled", compiled, compiled_model)):
        # SGD: Adam moves every weight by about lr whatever its gradient's size, so elements whose
        # gradient is rounding noise would differ by 2 lr and hide how close the two runs are
        optimizer = torch.optim.SGD(params.parameters(), lr=1e-2)
        engine = DualPathStep(model, optimizer, "pcgrad", mode="joint", precision="fp32")
        for _ in range(2):  # compiles, and Adam's state
            engine(x, x_aug, y)
        result[f"{name}_s"] = _median_s(lambda engine=engine: engine(x, x_aug, y), args.steps - 2, device)
    result["steps"] = args.steps
    result["max_weight_difference"] = _max_difference(eager, compiled_model)
    result["max_weight_change"] = _max_difference(eager, start)
    result["difference_over_change"] = result["max_weight_difference"] / result["max_weight_change"]
    result["speed_up"] = result["eager_s"] / result["compiled_s"]
    return result


def part_nccl(args: argparse.Namespace) -> dict:
    """A world of one: the engine itself skips synchronisation there (``is_distributed`` needs two
    ranks), so its collectives are called directly on a real gradient set, where a sum over one
    rank must change nothing."""
    import torch
    import torch.distributed as dist

    from dpda.dualpath.sync import all_reduce_sum_, broadcast_module_

    device = torch.device(args.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    init_s = time.perf_counter() - start
    try:
        model = _model(args, device)
        before = copy.deepcopy(model)
        x, _, y = _engine_inputs(args, device)
        torch.nn.functional.cross_entropy(model(x)[1], y).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        expected = [g.clone() for g in grads]
        broadcast_module_(model)
        all_reduce_sum_(grads)  # warm-up: NCCL's communicators are made on first use
        for g, e in zip(grads, expected):
            g.copy_(e)
        seconds = _median_s(lambda: all_reduce_sum_(grads), 3, device)
        # three sums of one rank leave every gradient as it was
        gradient_difference = max(float((g - e).abs().max()) for g, e in zip(grads, expected))
        size_gb = sum(g.numel() * g.element_size() for g in grads) / 1e9
    finally:
        dist.destroy_process_group()
    return {
        "backend": backend,
        "init_s": init_s,
        "gradient_set_gb": size_gb,
        "all_reduce_s": seconds,
        "all_reduce_gb_per_s": size_gb / seconds,
        "max_gradient_difference": gradient_difference,
        "max_weight_difference_after_broadcast": _max_difference(model, before),
    }


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons stay fp32
    result = globals()[f"part_{args.worker}"](args)
    result["device_name"] = _device_name(torch.device(args.device))
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny models and inputs: a check of the script")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    for name, value in (("--model", None), ("--batch", None), ("--seconds", None), ("--steps", 6)):
        parser.add_argument(name, default=value, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or (TINY if args.small else REAL)
    args.batch = int(args.batch or (2 if args.small else 5))
    args.seconds = float(args.seconds or (1.0 if args.small else 4.175))
    args.steps = int(args.steps)
    args.precision = "bf16"
    if args.worker:
        worker(args)
        return 0
    figures: dict = {}
    shared = ["--device", args.device, "--model", args.model, "--batch", str(args.batch)]
    shared += ["--seconds", str(args.seconds), "--steps", str(args.steps)] + (["--small"] if args.small else [])
    for part in args.parts:
        started = time.monotonic()
        try:
            completed = subprocess.run(
                [sys.executable, __file__, *shared, "--worker", part],
                capture_output=True,
                text=True,
                timeout=LIMITS_S[part] * (3 if args.small else 1),
            )
            if completed.returncode == 0:
                figures[part] = json.loads(completed.stdout.strip().splitlines()[-1])
            else:
                figures[part] = {"error": completed.stderr.strip()[-2000:]}
        except subprocess.TimeoutExpired:
            figures[part] = {"error": f"ran past its {LIMITS_S[part]} s limit"}
        figures[part]["wall_s"] = time.monotonic() - started
        print(f"{part}: {json.dumps(figures[part])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    failed = [part for part, result in figures.items() if "error" in result]
    print(f"failed parts: {', '.join(failed)}" if failed else "every part ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
