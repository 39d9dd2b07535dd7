"""Run by ``torchrun`` from test_distributed.py: a few dual-path steps with a slice of a global
batch per rank; each rank writes its final parameters to OUT_DIR/<config>_rank<r>.safetensors.
Imported by the test to produce the single-process reference."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from models import TinyDetector, batch
from safetensors.torch import save_file

from dpda.dualpath import DualPathStep

CONFIGS = [("joint", "pcgrad"), ("split", "gradvac"), ("concat", "mean"), ("joint", "cagrad")]
GLOBAL_BATCH = 8
MICRO_BATCHES = 2
STEPS = 3


def train(mode: str, aligner: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    """STEPS steps, each over GLOBAL_BATCH utterances split across ranks and micro-batches.
    Every rank starts from a different initialisation: the engine broadcasts rank 0's."""
    model = TinyDetector(seed=rank)
    engine = DualPathStep(
        model, torch.optim.Adam(model.parameters(), lr=1e-2), aligner, mode=mode, bucket_mb=0.0005
    )  # tiny buckets, so several all-reduce calls happen
    for step in range(STEPS):
        x, x_aug, labels = batch(size=GLOBAL_BATCH, seed=10 + step)
        labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])  # uneven class counts per rank
        per_rank = GLOBAL_BATCH // world
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        x, x_aug, labels = x[rows], x_aug[rows], labels[rows]
        per_micro = per_rank // MICRO_BATCHES
        for m in range(MICRO_BATCHES):
            part = slice(m * per_micro, (m + 1) * per_micro)
            engine.accumulate(x[part], x_aug[part], labels[part])
        engine.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for mode, aligner in CONFIGS:
        save_file(train(mode, aligner, rank, world), out_dir / f"{mode}_{aligner}_rank{rank}.safetensors")
    dist.barrier()  # no rank tears its connections down while another still uses them
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(__file__))
    main(Path(sys.argv[1]))
