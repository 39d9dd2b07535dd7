"""``dpda report``: one Markdown page with plots that compares finished training runs.

Everything is read from the folders ``dpda train`` writes (``config.yaml``, ``steps.csv``,
``epochs.csv``, ``layers_epochs.csv``, ``results.json``, ``scores/``, and ``summary.json`` beside
``seed-N/`` folders);
no model is loaded. A piece a run lacks (no dev set, no eval sets, ``concat`` mode without
per-path gradients, a missing score file, an unreadable protocol) becomes a line of the report,
not an error, so runs set up differently or still training can be compared.

Figures are drawn on bare ``matplotlib.figure.Figure`` objects rendered by Agg, never through
pyplot: the caller's backend and pyplot figure list are left alone and nothing needs closing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.stats import norm

from dpda.atomic import atomic_path, write_text_atomic
from dpda.config import DataSet, ExperimentConfig, load_config
from dpda.data.sets import DataError, dataset_name, read_dataset
from dpda.errors import DpdaError
from dpda.evaluate.metrics import det_curve, eer
from dpda.evaluate.paper import PAPER_CLAIMS, PAPER_CONFLICT_RATE, published
from dpda.markdown import table
from dpda.results import RunResults, SeedSummary, conflict_rate, mean_std
from dpda.train.logger import EPOCHS_CSV, LAYER_EPOCHS_CSV, STEPS_CSV, read_csv

__all__ = ["ReportError", "write_report"]

Columns = dict[str, list[float | None]]

_CLIP = 1e-4  # DET rates are clipped to [_CLIP, 1 - _CLIP]: the probit of 0 and 1 is infinite
_DET_TICKS = np.array([0.01, 0.1, 1, 5, 20, 50, 80, 95, 99, 99.9, 99.99]) / 100
_SEED_FOLDER = re.compile(r"seed-\d+")

_CAPTIONS = {  # what each figure shows, said once in the report
    "loss": "Left: the loss of the original and of the augmented path at every logged step (faint) and "
    "its moving average (solid). Right: the mean training losses of each epoch and the dev loss "
    "after it; the dotted line marks the best epoch (lowest dev loss, or train loss without dev).",
    "conflict": "Left: the share of steps of each epoch whose two path gradients conflict (negative inner "
    "product), with the paper's ~25 % (RawBoost) as a dashed line. Middle, where the run logged "
    "them (`logging.layer_conflicts`): the same share for each layer (or parameter group, top to "
    "bottom from the input) and epoch, where in the network the paths disagree. Right: the cosine "
    "between the two path gradients over all logged steps; mass left of 0 is conflict.",
    "weights": "The weights the aligner gave the original and the augmented path gradient at each step "
    "(their mean over groups); `mean` keeps both at 0.5.",
    "scores": "Score distributions of bona fide and spoofed trials per eval set (densities, so sets of "
    "different sizes compare); the dashed line is the EER threshold. Overlap means errors.",
    "det": "DET curve: miss rate (bona fide rejected) against false-alarm rate (spoof accepted) at every "
    "threshold, on normal-deviate axes; lower-left is better, and the curve crosses the dashed "
    "diagonal at the EER (recomputed from the score file).",
}


class ReportError(DpdaError, ValueError):
    """A folder given to ``dpda report`` that holds no run."""


class Scores(NamedTuple):
    """One eval set's scores of a run, split by the protocol's labels."""

    bonafide: np.ndarray
    spoof: np.ndarray
    eer: float
    threshold: float


@dataclass
class Run:
    """One training run folder and what it recorded."""

    path: Path
    config: ExperimentConfig
    results: RunResults | None  # None while the run is training
    steps: Columns
    epochs: Columns
    layers: Columns = field(default_factory=dict)  # layers_epochs.csv: per-group conflict rates
    scores: dict[str, Scores] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # what cannot be shown, in words
    label: str = ""  # set by write_report: unique among the report's runs
    slug: str = ""  # the label's file-name form, also unique

    def conflicts(self) -> tuple[int, int]:
        """Conflicting steps and steps with a defined flag (skipped steps and concat have none),
        over every optimizer step of the epochs done (``epochs.csv``: the counts behind the
        pooled rate of ``results.json``)."""
        conflicts, flagged = (
            int(sum(value for value in self.epochs.get(key, []) if value is not None))
            for key in ("conflicts", "flagged_steps")
        )
        return conflicts, flagged


@dataclass
class Entry:
    """A row of the comparison table: one run folder, or a multi-seed experiment folder."""

    path: Path
    label: str
    runs: list[Run]
    summary: SeedSummary | None = None  # summary.json of an experiment
    notes: list[str] = field(default_factory=list)


def write_report(runs: Sequence[Path], out: Path) -> Path:
    """Write ``out/report.md`` and its PNG figures for the run or experiment folders ``runs``.

    Raises ReportError for a path that is neither a run folder (``config.yaml``) nor a folder of
    ``seed-N`` runs. Returns the path of the Markdown file.
    """
    if not runs:
        raise ReportError("no run folders given")
    entries = [_load_entry(Path(path)) for path in runs]
    for entry, label in zip(entries, _unique([entry.label for entry in entries])):
        entry.label = label
        for run in entry.runs:
            run.label = label if run.path == entry.path else f"{label}/{run.path.name}"
    every = [run for entry in entries for run in entry.runs]
    for run, slug in zip(every, _unique([_sanitise(run.label) for run in every])):
        run.slug = slug
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Training report: {len(entries)} folder(s), {len(every)} training run(s)",
        "",
        *(f"- `{entry.path}`" for entry in entries),
        "",
        *_table(entries),
        "",
        *_claims(entries),
        "",
        *_det_section(every, out),
        "",
        "## Runs",
        "",
        "How to read the figures of each run:",
        *(f"- {kind}: {_CAPTIONS[kind]}" for kind in ("loss", "conflict", "weights", "scores")),
        "",
    ]
    for entry in entries:
        lines += [f"- {entry.label}: {note}" for note in entry.notes]
        for run in entry.runs:
            lines += ["", *_run_section(run, out)]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    return report


# ------------------------------------------------------------------------------------------------
# Reading


def _load_entry(path: Path) -> Entry:
    if (path / "config.yaml").is_file():
        run = _load_run(path)
        return Entry(path, run.config.name, [run])
    seeds = sorted(
        (
            child
            for child in path.glob("seed-*")
            if _SEED_FOLDER.fullmatch(child.name) and (child / "config.yaml").is_file()
        ),
        key=lambda child: int(child.name[5:]),
    )
    if not seeds:
        raise ReportError(
            f"{path}: not a run folder (no config.yaml) nor a multi-seed experiment "
            "(no seed-N/ folders with a config.yaml)"
        )
    runs = [_load_run(seed) for seed in seeds]
    entry = Entry(path, runs[0].config.name, runs)
    if (path / "summary.json").is_file():
        summary = path / "summary.json"
        entry.summary = SeedSummary.read(summary)
    else:
        entry.notes.append(
            "no summary.json (seeds still training?): mean ± std computed from the finished seeds' results.json"
        )
    return entry


def _load_run(path: Path) -> Run:
    config = load_config(path / "config.yaml")
    results = path / "results.json"
    run = Run(
        path,
        config,
        RunResults.read(results) if results.is_file() else None,
        _csv(path / STEPS_CSV),
        _csv(path / EPOCHS_CSV),
        _csv(path / LAYER_EPOCHS_CSV),
    )
    for name, value in (("results.json", run.results), (STEPS_CSV, run.steps), (EPOCHS_CSV, run.epochs)):
        if value is None or value == {}:
            run.missing.append(f"no {name} in the run folder")
    if config.data.dev is None:
        run.missing.append("no dev set: no dev loss or dev EER, the best epoch is by train loss")
    if config.dualpath.mode == "concat" or (run.steps and not _finite(run.steps.get("cosine", []))):
        run.missing.append(
            f"no per-path gradient statistics (dualpath.mode {config.dualpath.mode}): "
            "no conflict rate, cosine or aligner weights"
        )
    if not config.eval.sets:
        run.missing.append("no eval sets configured: no DET curves or score histograms")
    for dataset in config.eval.sets:
        try:
            dataset_name(dataset)  # a name that would leave scores/ refuses the run folder
        except DataError as error:
            raise ReportError(f"{path / 'config.yaml'}: eval.sets: {error}") from error
        _load_scores(run, dataset)
    return run


def _csv(path: Path) -> Columns:
    return read_csv(path) if path.is_file() else {}


def _load_scores(run: Run, dataset: DataSet) -> None:
    """Score file + protocol labels -> ``run.scores[name]``, or a line in ``run.missing``."""
    name = dataset_name(dataset)
    path = run.path / "scores" / f"{name}.txt"
    if not path.is_file():
        run.missing.append(f"eval set {name}: no score file scores/{name}.txt")
        return
    try:
        labels = {
            record.utt_id: record.label
            for record in read_dataset(
                dataset, f"eval set {name!r}", check="off", need_both_classes=False, progress=False
            )
        }
    except DataError as error:
        run.missing.append(f"eval set {name}: labels unavailable ({error})")
        return
    split: dict[int, list[float]] = {0: [], 1: []}
    unknown = 0
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            utt_id, score = line.split()
            if utt_id in labels:
                split[labels[utt_id]].append(float(score))
            else:
                unknown += 1
    if unknown:
        run.missing.append(f"eval set {name}: {unknown} scored utterance(s) not in the protocol, left out")
    if not (split[0] and split[1]):
        run.missing.append(f"eval set {name}: scores of one class only, no DET curve")
        return
    bonafide, spoof = np.array(split[1]), np.array(split[0])
    run.scores[name] = Scores(bonafide, spoof, *eer(bonafide, spoof))


# ------------------------------------------------------------------------------------------------
# Markdown


def _table(entries: Sequence[Entry]) -> list[str]:
    sets = list(
        dict.fromkeys(
            name
            for entry in entries
            for run in entry.runs
            for name in [*map(dataset_name, run.config.eval.sets), *((run.results and run.results.eval) or {})]
        )
    )
    header = [
        "run",
        "aligner",
        "seed(s)",
        "epochs",
        "best epoch",
        "dev EER (%)",
        *(f"{name} EER (%)" for name in sets),
        "conflict rate (%)",
        "skipped steps",
        "paper EER (%)",
    ]
    rows = []
    sources: list[str] = []  # the publications the paper column cites, numbered in order
    for entry in entries:
        stats = _entry_stats(entry)
        config = entry.runs[0].config
        paper = published(config.paper_row)
        if paper and paper.source not in sources:
            sources.append(paper.source)
        cells = [
            entry.label,
            _aligner(config),
            ", ".join(str(run.config.seed) for run in entry.runs),
            _cell(stats, "epochs"),
            _cell(stats, "best_epoch"),
            _cell(stats, "dev_dev_eer", percent=True),
            *(_cell(stats, f"eval/{name}/eer", percent=True) for name in sets),
            _cell(stats, "conflict_rate", percent=True),
            _cell(stats, "skipped_steps"),
            (
                " / ".join(f"{name} {value:.2f}" for name, value in paper.eers.items())
                + f" [{sources.index(paper.source) + 1}]"
            )
            if paper
            else "–",
        ]
        rows.append(cells)
    lines = ["## Comparison", "", *table(header, rows)]
    lines += [
        "",
        (
            "EERs are in %, on the final (averaged) model; the dev EER is from results.json. A row of "
            "several seeds shows mean ± sample standard deviation over them (summary.json where written). "
            "The conflict rate is conflicting steps over all optimizer steps with a defined conflict "
            "flag (epochs.csv; results.json holds the same). The paper column is the published EER of the "
            "config's `paper_row`, where a publication reports one (its source numbered below); it was "
            "measured on the full data sets and is comparable only with runs on the same data."
        ),
    ]
    if sources:
        lines += ["", "Paper column sources: " + "; ".join(f"[{i}] {s}" for i, s in enumerate(sources, 1)) + "."]
    return lines


def _entry_stats(entry: Entry) -> dict[str, tuple[float, float, int]]:
    """metric -> (mean, std, runs): summary.json's metrics (or ``SeedSummary.of`` the results), plus
    epochs, skipped steps and the conflict rate, which summary.json does not hold."""
    finished = [run.results for run in entry.runs if run.results is not None]
    summary = entry.summary or SeedSummary.of(finished)
    stats = {key: (spread.mean, spread.std, len(spread.values)) for key, spread in summary.metrics.items()}
    extra: dict[str, list[float]] = {
        "epochs": [results.epochs for results in finished],
        "skipped_steps": [results.skipped_steps for results in finished],
        "conflict_rate": [conflict_rate(c, n) for c, n in (run.conflicts() for run in entry.runs) if n],
    }
    for key, values in extra.items():
        if values:
            stats[key] = (*mean_std(values), len(values))
    return stats


def _cell(stats: dict[str, tuple[float, float, int]], key: str, percent: bool = False) -> str:
    if key not in stats:
        return "–"
    mean, std, count = stats[key]
    show = (lambda v: f"{100 * v:.2f}") if percent else (lambda v: f"{v:.4g}")
    return show(mean) + (f" ± {show(std)}" if count > 1 else "")


def _claims(entries: Sequence[Entry]) -> list[str]:
    runs = [run for entry in entries for run in entry.runs]
    lines = [
        "## Against the paper's claims",
        "",
        (
            f"These numbers come from {len(runs)} training run(s) in {len(entries)} configuration(s); "
            "single runs have no spread estimate, so differences smaller than the seed-to-seed spread of a "
            "multi-seed row are not evidence of an effect."
        ),
        "",
    ]
    for key, measured in (("conflict_rate", _conflict_line), ("convergence", _convergence_line)):
        claim = PAPER_CLAIMS[key]
        lines += [
            f"- Paper ({claim.where}): {claim.text}. Here:",
            *(f"  - {run.label} (aligner {_aligner(run.config)}): {measured(run)}" for run in runs),
        ]
    claim = PAPER_CLAIMS["eer"]
    lines.append(
        f"- Paper ({claim.where}): {claim.text}. Here: see the table; the paper's numbers come "
        "from full-size corpora and XLS-R models."
    )
    return lines


def _conflict_line(run: Run) -> str:
    conflicts, flagged = run.conflicts()
    if not flagged:
        return "no conflict flags recorded"
    augment = run.config.augment
    chain = Path(augment.chain).stem if augment.chain else "an inline chain"
    return (
        f"{conflict_rate(conflicts, flagged):.1%} ({conflicts} of {flagged} steps) with augmentation {chain}; "
        "the paper's figure is for RawBoost on ASVspoof 2019 LA"
    )


def _convergence_line(run: Run) -> str:
    if run.results is None:
        return "not finished"
    basis = "dev loss" if run.config.data.dev is not None else "train loss (no dev set)"
    return f"best epoch {run.results.best_epoch} of {run.results.epochs} by {basis}"


def _det_section(runs: Sequence[Run], out: Path) -> list[str]:
    sets = list(dict.fromkeys(name for run in runs for name in run.scores))
    lines = ["## DET curves", "", _CAPTIONS["det"]]
    if not sets:
        return [*lines, "", "No run has scores with both classes for any eval set."]
    for name, slug in zip(sets, _unique([_sanitise(name) for name in sets])):
        curves = [(run.label, run.scores[name]) for run in runs if name in run.scores]
        lines += ["", f"![DET {name}]({_det_figure(name, curves, out / f'det-{slug}.png')})"]
    return lines


def _run_section(run: Run, out: Path) -> list[str]:
    config, results = run.config, run.results
    lines = [
        f"### {run.label}",
        "",
        (
            f"`{run.path}`: model {config.model['name']}, mode {config.dualpath.mode}, aligner "
            f"{config.dualpath.aligner}, seed {config.seed}, paper row {config.paper_row or '–'}; "
            f"{results.steps if results else '?'} steps, averaged epochs "
            f"{results.averaged_epochs if results else '?'}."
        ),
    ]
    if run.missing:
        lines += ["", *(f"- Not shown: {item}" for item in run.missing)]
    for kind, draw in (
        ("loss", _loss_figure),
        ("conflict", _conflict_figure),
        ("weights", _weights_figure),
        ("scores", _scores_figure),
    ):
        name = draw(run, out / f"run-{run.slug}-{kind}.png")
        if name:
            lines += ["", f"![{run.label} {kind}]({name})"]
    return lines


# ------------------------------------------------------------------------------------------------
# Figures


def _loss_figure(run: Run, path: Path) -> str | None:
    step_keys = [key for key in ("loss_orig", "loss_aug") if _finite(run.steps.get(key, []))]
    epoch_keys = [key for key in ("train_loss_orig", "train_loss_aug", "dev_loss") if _finite(run.epochs.get(key, []))]
    if not (step_keys or epoch_keys):
        return None
    figure, (left, right) = _figure(2)
    for index, key in enumerate(step_keys):
        x, y = _series(run.steps, "step", key)
        left.plot(x, y, color=f"C{index}", alpha=0.25, linewidth=0.8)
        left.plot(x, _smooth(y), color=f"C{index}", label=key)
    for index, key in enumerate(epoch_keys):
        right.plot(*_series(run.epochs, "epoch", key), marker="o", color=f"C{index}", label=key)
    if run.results is not None and run.results.best_epoch > 0:
        right.axvline(run.results.best_epoch, color="grey", linestyle=":")
    _finish(left, "optimizer step", "loss", "per step", counted=True)
    _finish(right, "epoch", "loss", "per epoch", counted=True)
    return _save(figure, path)


def _conflict_figure(run: Run, path: Path) -> str | None:
    x, rate = _series(run.epochs, "epoch", "conflict_rate")
    cosine = np.array(_finite(run.steps.get("cosine", [])))
    if not (rate.size or cosine.size):
        return None
    groups = [key for key in run.layers if key != "epoch"]
    figure, axes = _figure(3 if groups else 2, height=max(3.6, 1.2 + 0.16 * len(groups)))
    left, right = axes[0], axes[-1]
    if groups:
        _layer_heat_map(figure, axes[1], run.layers, groups)
    left.plot(x, 100 * rate, marker="o", label="this run")
    left.axhline(100 * PAPER_CONFLICT_RATE, color="grey", linestyle="--", label="paper, RawBoost (~25 %)")
    left.set_ylim(0, 100)
    right.hist(cosine, bins=40, range=(-1, 1), color="C1")
    right.axvline(0, color="black", linewidth=0.8)
    _finish(left, "epoch", "conflicting steps (%)", "conflict rate", counted=True)
    _finish(right, "cosine of the path gradients", "steps", "per-step cosine")
    return _save(figure, path)


def _layer_heat_map(figure: Figure, ax: Axes, layers: Columns, groups: Sequence[str]) -> None:
    """Conflict rate of each group (rows, in the model's order) and epoch (columns); white where
    no step flagged the group (its gradient was zero on a path)."""
    epochs = [int(e) for e in layers["epoch"] if e is not None]
    rates = np.array([[np.nan if v is None else v for v in layers[group]] for group in groups], dtype=float)
    image = ax.imshow(
        100 * rates,
        aspect="auto",
        cmap="magma",
        vmin=0,
        vmax=100,
        interpolation="nearest",
        extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(groups) - 0.5, -0.5),
    )
    prefix = _common_prefix(groups)
    ax.set_yticks(range(len(groups)), [group[len(prefix) :] or group for group in groups], fontsize="x-small")
    figure.colorbar(image, ax=ax, label="conflicting steps (%)")
    ylabel = f"parameter group ({prefix}...)" if prefix else "parameter group"
    _finish(ax, "epoch", ylabel, "conflict rate per layer", counted=True)


def _common_prefix(groups: Sequence[str]) -> str:
    """The dotted prefix all group names share (``ssl.model.``), left out of the tick labels."""
    parts = [group.split(".") for group in groups]
    shared = []
    for pieces in zip(*parts):
        if len(set(pieces)) != 1:
            break
        shared.append(pieces[0])
    if len(groups) < 2 or any(len(p) <= len(shared) for p in parts):
        return ""
    return ".".join(shared) + "." if shared else ""


def _weights_figure(run: Run, path: Path) -> str | None:
    keys = [key for key in ("weight_orig", "weight_aug") if _finite(run.steps.get(key, []))]
    if not keys:
        return None
    figure, (axes,) = _figure(1)
    for key, style in zip(keys, ("-", "--")):
        axes.plot(*_series(run.steps, "step", key), linestyle=style, label=key)
    _finish(axes, "optimizer step", "weight", "aligner weights", counted=True)
    return _save(figure, path)


def _scores_figure(run: Run, path: Path) -> str | None:
    if not run.scores:
        return None
    figure, axes = _figure(len(run.scores))
    for ax, (name, scores) in zip(axes, run.scores.items()):
        bins = np.histogram_bin_edges(np.concatenate((scores.bonafide, scores.spoof)), bins=40).tolist()
        for values, label, color in ((scores.bonafide, "bona fide", "C2"), (scores.spoof, "spoof", "C3")):
            ax.hist(values, bins=bins, density=True, alpha=0.5, color=color, label=f"{label} ({values.size})")
        ax.axvline(scores.threshold, color="black", linestyle="--", linewidth=0.8)
        _finish(ax, "score (higher = bona fide)", "density", f"{name}: EER {scores.eer:.2%}")
    return _save(figure, path)


def _det_figure(name: str, curves: Sequence[tuple[str, Scores]], path: Path) -> str:
    figure = Figure(figsize=(6, 6), layout="constrained")
    ax = figure.subplots()
    for label, scores in curves:
        frr, far, _ = det_curve(scores.bonafide, scores.spoof)
        ax.plot(_probit(far), _probit(frr), label=f"{label} (EER {scores.eer:.2%})")
    limits = _probit(np.array([_CLIP, 1 - _CLIP]))
    ax.plot(limits, limits, color="grey", linestyle="--", linewidth=0.8)
    labels = [f"{100 * tick:g}" for tick in _DET_TICKS]
    ax.set_xticks(_probit(_DET_TICKS), labels)
    ax.set_yticks(_probit(_DET_TICKS), labels)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_aspect("equal")
    _finish(ax, "false-alarm rate: spoof accepted (%)", "miss rate: bona fide rejected (%)", f"DET: {name}")
    ax.legend(fontsize="small", loc="upper right")
    return _save(figure, path)


def _figure(panels: int, height: float = 3.6) -> tuple[Figure, Sequence[Axes]]:
    figure = Figure(figsize=(5 * panels, height), layout="constrained")
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])


def _finish(ax: Axes, xlabel: str, ylabel: str, title: str, counted: bool = False) -> None:
    """Labels, grid and legend; ``counted``: x is a step or epoch number, so ticks are whole."""
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if counted:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _save(figure: Figure, path: Path) -> str:
    """Render ``figure`` to ``path`` (PNG, Agg) atomically; the name to link from the report."""
    with atomic_path(path, fsync=False) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return path.name


# ------------------------------------------------------------------------------------------------
# Small helpers


def _aligner(config: ExperimentConfig) -> str:
    return "none (concat)" if config.dualpath.mode == "concat" else config.dualpath.aligner


def _finite(values: Sequence[float | None]) -> list[float]:
    return [value for value in values if value is not None and math.isfinite(value)]


def _series(columns: Columns, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """The points of column ``y`` against ``x`` where both are defined and finite."""
    pairs = [
        (a, b)
        for a, b in zip(columns.get(x, []), columns.get(y, []))
        if a is not None and b is not None and math.isfinite(b)
    ]
    points = np.array(pairs, dtype=float).reshape(-1, 2)
    return points[:, 0], points[:, 1]


def _smooth(values: np.ndarray) -> np.ndarray:
    """Trailing moving average over ~5 % of the points: per-step losses are too noisy to read."""
    window = max(1, len(values) // 20)
    sums = np.concatenate(([0.0], np.cumsum(values)))
    end = np.arange(1, len(values) + 1)
    start = np.maximum(0, end - window)
    return (sums[end] - sums[start]) / (end - start)


def _probit(rates: np.ndarray) -> np.ndarray:
    return norm.ppf(np.clip(rates, _CLIP, 1 - _CLIP))


def _sanitise(name: str) -> str:
    """A file-name-safe, lower-case form (case-insensitive file systems would merge 'A' and 'a')."""
    return re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "run"


def _unique(names: Sequence[str]) -> list[str]:
    """``names`` with repeats suffixed ``-2``, ``-3``, ... so every one is distinct."""
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, count = name, 1
        while candidate in seen:
            count += 1
            candidate = f"{name}-{count}"
        seen.add(candidate)
        unique.append(candidate)
    return unique
