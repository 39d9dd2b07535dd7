"""Several seeds of one experiment, and the mean +- std of what they measured."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dpda.atomic import write_text_atomic
from dpda.config import ExperimentConfig
from dpda.evaluate.spread import mean_std
from dpda.markdown import table
from dpda.train.trainer import run_dir_for, train


def metrics_of(results: Mapping[str, Any]) -> dict[str, float]:
    """The comparable numbers of one run: dev loss and EER, each eval set's EER, best epoch."""
    values = {f"dev_{key}": value for key, value in (results.get("dev") or {}).items()}
    values.update(
        {f"eval/{name}/eer": entry["eer"] for name, entry in results.get("eval", {}).items() if "eer" in entry}
    )
    values["best_epoch"] = results["best_epoch"]
    return {key: float(value) for key, value in values.items()}


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one run) of every metric over runs."""
    table: dict[str, list[float]] = {}
    for results in runs:
        for key, value in metrics_of(results).items():
            table.setdefault(key, []).append(value)
    summary: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "metrics": {}}
    for key, values in table.items():
        mean, std = mean_std(values)
        summary["metrics"][key] = {"mean": mean, "std": std, "values": values}
    return summary


def summary_markdown(name: str, summary: Mapping[str, Any]) -> str:
    rows = []
    for key, entry in summary["metrics"].items():
        show = (lambda v: f"{v:.2%}") if "eer" in key else (lambda v: f"{v:.4g}")
        rows.append([key, show(entry["mean"]), show(entry["std"]), ", ".join(show(v) for v in entry["values"])])
    lines = [
        f"# {name}: {len(summary['seeds'])} seed(s) ({', '.join(map(str, summary['seeds']))})",
        "",
        *table(["metric", "mean", "std", "per seed"], rows),
    ]
    return "\n".join(lines) + "\n"


def train_seeds(config: ExperimentConfig, seeds: Sequence[int]) -> dict[str, Any]:
    """Train ``config`` once per seed, each into ``output_dir/name/seed-N``, then write
    ``summary.json`` and ``summary.md`` beside them. A seed whose run is complete is read back,
    so the command can be repeated after an interruption."""
    runs = []
    for seed in seeds:
        seeded = replace(config, seed=seed)
        folder = run_dir_for(seeded, seed_folder=True)
        done = folder / "results.json"
        if done.exists():
            runs.append(json.loads(done.read_text()))
        else:
            resume = (folder / "state").exists()
            runs.append(train(None if resume else seeded, folder, resume=resume))
    summary = summarise(runs)
    if int(os.environ.get("RANK", "0")) == 0:
        folder = Path(config.output_dir) / config.name
        for name, text in (
            ("summary.json", json.dumps(summary, indent=1)),
            ("summary.md", summary_markdown(config.name, summary)),
        ):
            write_text_atomic(folder / name, text)
    return summary
