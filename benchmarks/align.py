"""Alignment alone at XLS-R size: dpda's Gram-and-combine against flatten-project-unflatten.

Two gradient sets shaped like XLS-R 300M's parameters (~315M floats in ~415 tensors) exist
before the clock starts. Variants, each in a fresh process, PCGrad on both:
  dpda    three dot products per tensor -> 2x2 Gram -> weights -> in-place w_o g_o + w_a g_a
  paper   the paper code's organisation, rebuilt from its description: both sets (and their
          has-gradient masks) concatenated into full vectors, projected, merged through the
          masks, split back into tensors

Target: dpda >= 20x faster, and no buffer of model size beyond the second gradient set (the
extra peak memory, above the two sets, is reported for both).

    python benchmarks/align.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_worker, time_and_memory
from step import paper_pcgrad

from dpda.align import combine_, gram_from_products, make_aligner, pairwise_products


def xlsr_300m_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of a wav2vec 2.0 large / XLS-R 300M model (24 layers, width 1024)."""
    shapes: list[tuple[int, ...]] = [(512, 1, 10)] + [(512, 512, 3)] * 4 + [(512, 512, 2)] * 2
    shapes += [(512,)] * 14  # feature-extractor layer norms
    shapes += [(512,), (512,), (1024, 512), (1024,)]  # feature projection
    shapes += [(1, 1, 128), (1024, 64, 128), (1024,), (1024,), (1024,), (1024,)]  # positional conv, norm
    for _ in range(24):
        shapes += [(1024, 1024), (1024,)] * 4  # q, k, v, out
        shapes += [(1024,), (1024,), (4096, 1024), (4096,), (1024, 4096), (1024,), (1024,), (1024,)]
    return shapes


def worker(variant: str, repeats: int) -> None:
    torch.manual_seed(0)
    shapes = xlsr_300m_shapes()
    g_o = [torch.randn(s) for s in shapes]
    g_a = [torch.randn(s).add_(g, alpha=-0.3) for s, g in zip(shapes, g_o)]  # conflicting paths
    if variant == "dpda":
        aligner = make_aligner("pcgrad")

        def run() -> None:
            gram = gram_from_products(pairwise_products(g_o, g_a))
            w_o, w_a = aligner.weights(gram)[0].tolist()
            combine_(g_o, g_a, w_o, w_a)  # type: ignore[arg-type]
    else:

        def run() -> None:
            flats = [torch.cat([g.flatten() for g in grads]) for grads in (g_o, g_a)]
            masks = [torch.cat([torch.ones_like(g).flatten() for g in grads]) for grads in (g_o, g_a)]
            merged = paper_pcgrad(flats, masks)
            del flats, masks
            offset = 0
            for g in g_o:
                g.copy_(merged[offset : offset + g.numel()].view_as(g).clone())
                offset += g.numel()

    result = time_and_memory(run, repeats, torch.device("cpu"))
    result["parameters"] = sum(g.numel() for g in g_o)
    result["tensors"] = len(g_o)
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=["dpda", "paper"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.repeats)
        return 0
    results = {
        v: run_worker(__file__, ["--repeats", str(args.repeats), "--threads", str(args.threads), "--worker", v])
        for v in ("dpda", "paper")
    }
    dpda, paper = results["dpda"], results["paper"]
    set_mb = dpda["parameters"] * 4 / 2**20
    print(
        f"# CPU, {args.threads} threads, {dpda['parameters'] / 1e6:.0f}M parameters in {dpda['tensors']} "
        f"tensors (one gradient set: {set_mb:.0f} MiB), PCGrad, median of {args.repeats}"
    )
    for name, r in results.items():
        print(
            f"{name:6s} {r['median_s']:8.3f} s  extra peak memory {r['peak_mb']:8.0f} MiB "
            f"({r['peak_mb'] / set_mb:.2f} gradient sets)"
        )
    speedup = paper["median_s"] / dpda["median_s"]
    ok = speedup >= 20 and dpda["peak_mb"] < 0.05 * set_mb
    print(
        f"speed-up {speedup:.1f}x (target >= 20x); dpda's extra memory {dpda['peak_mb']:.0f} MiB "
        f"(target: no model-size buffer)  {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
