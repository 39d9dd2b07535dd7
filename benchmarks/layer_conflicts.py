"""What per-layer conflict statistics add to a step at XLS-R 300M size.

Two gradient sets shaped and named like XLS-R 300M's parameters (``transformers``' Wav2Vec2Model
at dpda's ``xlsr_300m`` preset, random weights: 315M floats in ~420 tensors) exist before the clock
starts. Timed, in one process, median of ``--repeats``:
  products   what every aligned step computes anyway: three dot products per tensor and the 2x2 Gram
  + layers   the same and the per-layer sums (``logging.layer_conflicts: layer``, 32 groups), moved
             to the CPU, and each layer's cosine

    python benchmarks/layer_conflicts.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from transformers import Wav2Vec2Model

sys.path.insert(0, str(Path(__file__).parent))
from measure import time_and_memory

from dpda.align import gram_from_products, pairwise_products
from dpda.dualpath.layers import LayerStats, layer_groups
from dpda.models.ssl import preset_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    with torch.device("meta"):
        named = [(name, p.shape) for name, p in Wav2Vec2Model(preset_config("xlsr_300m")).named_parameters()]
    g_o = [torch.randn(shape) for _, shape in named]
    g_a = [torch.randn(shape).add_(g, alpha=-0.3) for (_, shape), g in zip(named, g_o)]
    names, index = layer_groups([f"ssl.model.{name}" for name, _ in named], "layer")

    def products() -> None:
        gram_from_products(pairwise_products(g_o, g_a)).cpu()

    def with_layers() -> None:
        found = pairwise_products(g_o, g_a)
        gram_from_products(found).cpu()
        LayerStats.of(found, index, names).cosines  # noqa: B018 (what the trainer logs)

    def extra() -> None:  # the per-layer part alone, on the products a step already has
        LayerStats.of(found, index, names).cosines  # noqa: B018 (what the trainer logs)

    found = pairwise_products(g_o, g_a)
    device = torch.device("cpu")
    # alternated rounds, so that a busy machine slows both alike
    rounds = [
        (time_and_memory(products, 1, device)["median_s"], time_and_memory(with_layers, 1, device)["median_s"])
        for _ in range(args.repeats)
    ]
    base, layered = (statistics.median(column) for column in zip(*rounds))
    alone = time_and_memory(extra, 100, device)["median_s"]
    floats = sum(g.numel() for g in g_o)
    print(f"{len(named)} tensors, {floats / 1e6:.1f}M floats, {len(names)} layer groups")
    print(f"products + Gram: {1000 * base:.1f} ms; with per-layer statistics: {1000 * layered:.1f} ms")
    print(f"ratio {layered / base:.3f}x; the per-layer part alone: {1000 * alone:.3f} ms ({alone / base:.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
