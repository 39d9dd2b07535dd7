"""What the trainer adds to the engine's step: loading with workers, augmentation bookkeeping,
logging (CSV + TensorBoard), checkpointing and the training state, on the built-in corpus.

For each model, side by side in one run:
  bare     the engine alone: the same number of optimizer steps on batches already in memory,
           the same RawBoost chain, no logging, no checkpoints
  trainer  the training loop (`dpda.train.trainer.fit`) over the built run, on the corpus
           (dev evaluation off: it is extra work, not overhead),
           with 2 loader workers, logging every step, the state saved every epoch
Both run with the trainer's default deterministic settings. Target: trainer <= 1.05x bare.

    python benchmarks/train_overhead.py --corpus corpus        # built with dpda corpus build
    python benchmarks/train_overhead.py --models lfcc_lcnn --steps 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from dpda.align import make_aligner
from dpda.config import config_from_dict
from dpda.data import AudioDataset, read_protocol
from dpda.data.dataset import collate
from dpda.dualpath import DualPathStep, WeightedCrossEntropy
from dpda.models import build
from dpda.train.build import build_run, make_chain, make_optimizer
from dpda.train.trainer import fit

CROP = 32000  # 2 s: the built-in corpus' utterances are 1-6 s


def experiment(corpus: Path, model: str, out: Path, steps: int, batch: int, epochs: int) -> dict:
    return {
        "name": model,
        "seed": 1,
        "output_dir": str(out),
        "data": {
            "train": {"kind": "builtin", "protocol": str(corpus / "protocols/train.txt")},
            "crop_length": CROP,
            "workers": 2,
            "validate": "off",
        },
        "model": {"name": model},
        "optim": {"lr": 1e-4},
        "train": {"batch_size": batch, "epochs": epochs, "max_steps_per_epoch": steps, "n_best": 1, "patience": None},
        "logging": {"progress": False},
    }


def bare(config: dict, steps: int) -> float:
    """Seconds of ``steps`` engine steps on preloaded batches with the same augmentation."""
    parsed = config_from_dict(config)
    records = read_protocol("asvspoof2019", parsed.data.train.protocol)
    dataset = AudioDataset(records, Path(parsed.data.train.protocol).parent.parent, length=CROP)
    batch = parsed.train.batch_size
    batches = [collate([dataset[(i * batch + j) % len(dataset)] for j in range(batch)]) for i in range(steps)]
    torch.manual_seed(1)
    model = build(parsed.model)
    engine = DualPathStep(
        model,
        make_optimizer(parsed.optim, model.parameters()),
        make_aligner("pcgrad"),
        loss=WeightedCrossEntropy((0.1, 0.9)),
    )
    chain = make_chain(parsed)
    generator = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for audio, labels, _ in batches:
        engine(audio, chain.augment(audio, generator).audio, labels)
    return time.perf_counter() - start


def full(config: dict) -> float:
    run = build_run(config_from_dict(config), Path(config["output_dir"]) / config["name"])
    start = time.perf_counter()
    fit(run)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a built-in corpus folder")
    parser.add_argument("--models", nargs="+", default=["lfcc_lcnn", "aasist_l"])
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="utterances per path per step")
    args = parser.parse_args()
    torch.set_num_threads(2)
    # both variants under the trainer's default settings (train.deterministic: true)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    failed = False
    for model in args.models:
        with tempfile.TemporaryDirectory() as out:
            config = experiment(args.corpus, model, Path(out), args.steps, args.batch, args.epochs)
            reference = bare(config, args.steps * args.epochs)
            trained = full(config)
        ratio = trained / reference
        failed |= ratio > 1.05
        print(
            json.dumps(
                {
                    "model": model,
                    "steps": args.steps * args.epochs,
                    "batch_per_path": args.batch,
                    "bare_s": round(reference, 2),
                    "trainer_s": round(trained, 2),
                    "ratio": round(ratio, 3),
                    "target": 1.05,
                }
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
