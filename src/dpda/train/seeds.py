"""Several seeds of one experiment, and the mean +- std of what they measured."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from dpda.atomic import write_text_atomic
from dpda.config import ExperimentConfig
from dpda.markdown import table
from dpda.results import RunResults, SeedSummary
from dpda.train.build import run_dir_for
from dpda.train.trainer import train


def summary_markdown(name: str, summary: SeedSummary) -> str:
    rows = []
    for key, spread in summary.metrics.items():
        show = (lambda v: f"{v:.2%}") if "eer" in key else (lambda v: f"{v:.4g}")
        rows.append([key, show(spread.mean), show(spread.std), ", ".join(show(v) for v in spread.values)])
    lines = [
        f"# {name}: {len(summary.seeds)} seed(s) ({', '.join(map(str, summary.seeds))})",
        "",
        *table(["metric", "mean", "std", "per seed"], rows),
    ]
    return "\n".join(lines) + "\n"


def train_seeds(config: ExperimentConfig, seeds: Sequence[int]) -> SeedSummary:
    """Train ``config`` once per seed, each into ``output_dir/name/seed-N``, then write
    ``summary.json`` and ``summary.md`` beside them. A seed whose run is complete is read back,
    so the command can be repeated after an interruption."""
    runs = []
    for seed in seeds:
        seeded = replace(config, seed=seed)
        folder = run_dir_for(seeded, seed_folder=True)
        done = folder / "results.json"
        if done.exists():
            runs.append(RunResults.read(done))
        else:
            resume = (folder / "state").exists()
            runs.append(train(seeded, folder, resume=resume))  # resumed: the folder's config, trusted if it is this one
    summary = SeedSummary.of(runs)
    if int(os.environ.get("RANK", "0")) == 0:
        folder = Path(config.output_dir) / config.name
        summary.write(folder / "summary.json")
        write_text_atomic(folder / "summary.md", summary_markdown(config.name, summary))
    return summary
