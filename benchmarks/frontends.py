"""SSL front-ends: forward+backward time of each kind at its published base size, against wav2vec 2.0.

Every front-end is an ``SSLFrontEnd`` at a dpda preset (random weights, the real shapes:
``dpda.models.ssl.PRESETS``): wav2vec 2.0, HuBERT, WavLM, data2vec-audio and UniSpeech-SAT at
their base size (12 layers x 768), Whisper small's and base's encoders (12 x 768, 6 x 512; log-mel
in the model, positions sliced to the input), and MMS 300M (24 x 1024, XLS-R 300M's shape). The
shape is the models benchmark's: batch 1 x 4 s (64,000 samples), train mode, CPU, 2 threads; the
loss is the mean square of the output (the front-end alone, no back-end), timed with its
backward.

Time: all front-ends are built in one process, each warmed up once, then timed in ``--rounds``
alternating rounds (one step of each per round, the order rotated), so that a machine whose load
changes slows them alike; the table gives each one's median and fastest round and the ratios of
both to wav2vec2_base's. Memory (``--memory``, the default): each front-end once more in a fresh
process (``measure.run_worker``), its peak resident set above the state before the first call.

    python benchmarks/frontends.py                       # CPU, 2 threads, batch 1 x 4 s, ~4 min
    python benchmarks/frontends.py --presets wav2vec2_base whisper_small --rounds 9 --no-memory
    python benchmarks/frontends.py --device cuda --batch 8
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_worker, time_and_memory

BASELINE = "wav2vec2_base"
PRESETS = (
    BASELINE,
    "hubert_base",
    "wavlm_base",
    "data2vec_audio_base",
    "unispeech_sat_base",
    "whisper_small",
    "whisper_base",
    "mms_300m",
)


def build(preset: str, device: torch.device) -> torch.nn.Module:
    from dpda.models.ssl import SSLFrontEnd, preset_config

    return SSLFrontEnd(preset_config(preset)).to(device).train()


def step(front_end: torch.nn.Module, x: torch.Tensor) -> None:
    front_end.zero_grad(set_to_none=True)
    front_end(x).square().mean().backward()
    front_end.zero_grad(set_to_none=True)  # no gradients held while the others run


def worker(args: argparse.Namespace) -> dict:
    """One front-end's peak memory over a warm-up and one step, in this fresh process."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    front_end = build(args.preset, device)
    x = 0.1 * torch.randn(args.batch, args.samples, device=device)
    return {"preset": args.preset, **time_and_memory(functools.partial(step, front_end, x), 1, device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help=f"dpda presets; {BASELINE} always runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=64000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    from dpda.models.ssl import preset_config

    presets = [BASELINE, *(name for name in args.presets if name != BASELINE)]
    for name in presets:
        preset_config(name)  # an unknown name fails here, before any timing
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    x = 0.1 * torch.randn(args.batch, args.samples, device=device)
    front_ends = {name: build(name, device) for name in presets}
    for front_end in front_ends.values():
        step(front_end, x)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in presets}
    for round_ in range(args.rounds):
        order = presets[round_ % len(presets) :] + presets[: round_ % len(presets)]
        for name in order:
            run = functools.partial(step, front_ends[name], x)
            times[name].append(time_and_memory(run, 1, device, warmup=0)["median_s"])
    peaks: dict[str, float] = {}
    if args.memory:
        common = ["--device", args.device, "--threads", str(args.threads), "--batch", str(args.batch)]
        common += ["--samples", str(args.samples)]
        peaks = {name: run_worker(__file__, ["--worker", "--preset", name, *common])["peak_mb"] for name in presets}
    print(
        f"# {args.device}, {args.threads} threads, batch {args.batch} x {args.samples} samples "
        f"({args.samples / 16000:g} s), train mode, mean-square loss + backward, {args.rounds} alternating rounds"
    )
    print(
        "| preset | kind | layers x width | frames | parameters (trainable) | s fwd+bwd, median (fastest) | ratio |",
        end="",
    )
    print(" peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    base_median, base_fastest = statistics.median(times[BASELINE]), min(times[BASELINE])
    for name, front_end in front_ends.items():
        median, fastest = statistics.median(times[name]), min(times[name])
        parameters = sum(p.numel() for p in front_end.parameters())
        trainable = sum(p.numel() for p in front_end.parameters() if p.requires_grad)
        print(
            f"| {name} | {front_end.model_type} | {front_end.num_layers} x {front_end.output_dim} | "
            f"{front_end.num_frames(args.samples)} | {parameters:,d} ({trainable:,d}) | {median:.3f} ({fastest:.3f}) | "
            f"{median / base_median:.2f}x ({fastest / base_fastest:.2f}x) | "
            f"{f'{peaks[name]:.0f}' if name in peaks else '-'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
