"""A trained detector as a model package: one folder in the Hugging Face convention.

``dpda package RUN_OR_CHECKPOINT OUT`` writes

- ``model.safetensors`` (+ ``model.json``): the weights with the checkpoint's own metadata (the
  config that builds the model, the dev calibration), which is what every loader reads;
- ``config.json``: the facts a person or a service wants without loading anything: the
  architecture, sample rate, score kind, calibration and decision threshold, how it was trained
  and the eval metrics;
- ``README.md``: the model card (Hugging Face front matter, then the same facts, intended use and
  limits).

``dpda score``, ``dpda eval``, ``dpda serve`` and :meth:`dpda.evaluate.evaluation.Detector.from_pretrained`
take the folder (or, online, a hub id holding one). A package is untrusted input like any
checkpoint: its JSON is only parsed, and its config is checked by the config loader.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import Any

from dpda import __version__
from dpda.atomic import atomic_folder
from dpda.checkpoint import CheckpointError, load_weights, save_weights
from dpda.config import config_with_overrides
from dpda.errors import DpdaError
from dpda.evaluate.calibration import Calibration
from dpda.markdown import table
from dpda.results import EvalResults, RunResults, SetMetrics

PACKAGE_FORMAT = "dpda-package"
PACKAGE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


class PackageError(DpdaError, ValueError):
    """A package that cannot be written (or read) as asked."""


def is_package(folder: Path) -> bool:
    """Whether ``folder`` holds a model package (its ``config.json`` names the format)."""
    config = folder / CONFIG_FILE
    if not (folder.is_dir() and config.is_file() and (folder / WEIGHTS_FILE).is_file()):
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == PACKAGE_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def write_package(source: Path, out: Path, results: list[Path] | None = None) -> Path:
    """Write the package of ``source`` (a run folder or a ``.safetensors`` checkpoint) to the new
    folder ``out``, with the eval metrics of the run's ``results.json`` and of ``results`` (``dpda
    eval`` outputs; later files win for a set of the same name). Everything is checked before
    ``out`` is made, and it appears whole or not at all."""
    source = Path(source)
    checkpoint = source / "final.safetensors" if source.is_dir() else source
    out = Path(out)
    if out.exists():
        raise PackageError(f"{out} exists; give a new folder for the package")
    weights, meta = load_weights(checkpoint)
    if "config" not in meta:
        raise CheckpointError(f"{checkpoint}: its metadata has no 'config'; was it written by dpda train?")
    config = config_with_overrides(meta["config"], source=f"{checkpoint} (config)")
    stored = meta.get("calibration")
    calibration = None if stored is None else Calibration.from_dict(stored, f"{checkpoint}: calibration")
    run = _run_results(checkpoint)
    eval_sets = dict(run.eval or {}) if run else {}
    for path in results or []:
        eval_sets.update(EvalResults.read(path).sets)
    facts = _facts(config, meta, calibration, run, eval_sets)
    card = model_card(facts)
    with atomic_folder(out) as folder:
        save_weights(folder / WEIGHTS_FILE, weights, {k: v for k, v in meta.items() if k not in ("format", "version")})
        (folder / CONFIG_FILE).write_text(json.dumps(facts, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        (folder / CARD_FILE).write_text(card, encoding="utf-8")
    return out


def read_facts(folder: Path) -> dict[str, Any]:
    """A package's ``config.json``, checked to be one."""
    path = Path(folder) / CONFIG_FILE
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PackageError(f"{path}: not a readable package config ({error})") from error
    if not isinstance(facts, dict) or facts.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{path}: expected a {PACKAGE_FORMAT!r} config")
    if facts.get("version") != PACKAGE_VERSION:
        raise PackageError(f"{path}: package version {facts.get('version')!r}; this dpda reads {PACKAGE_VERSION}")
    return facts


def _run_results(checkpoint: Path) -> RunResults | None:
    """The ``results.json`` of the run whose final model ``checkpoint`` is, if there is one."""
    path = checkpoint.parent / "results.json"
    if checkpoint.name != "final.safetensors" or not path.is_file():
        return None
    return RunResults.read(path)


def _name(path: str | None) -> str | None:
    """A protocol's file name only: the package does not carry the trainer's folders."""
    return None if path is None else PurePath(path).name


def core_facts(config: Any, model: dict[str, Any], calibration: Calibration | None) -> dict[str, Any]:
    """What any detector says of itself (a package's config.json, a service's /v1/model): its
    architecture, input, score kind and how scores become decisions."""
    return {
        "dpda_version": __version__,
        "name": config.name,
        "model": model,
        "sample_rate": config.data.sample_rate,
        "score": config.eval.score,
        "max_seconds": config.eval.max_seconds,
        "calibration": None if calibration is None else calibration.as_dict(),
        "decision_threshold": None if calibration is None else calibration.threshold,
    }


def _facts(
    config: Any,
    meta: dict[str, Any],
    calibration: Calibration | None,
    run: RunResults | None,
    sets: dict[str, SetMetrics],
) -> dict[str, Any]:
    data, dualpath = config.data, config.dualpath
    return {
        "format": PACKAGE_FORMAT,
        "version": PACKAGE_VERSION,
        **core_facts(config, meta.get("model", config.model), calibration),
        "training": {
            "train_protocol": _name(data.train.protocol) if data.train else None,
            "train_kind": data.train.kind if data.train else None,
            "dev_protocol": _name(data.dev.protocol) if data.dev else None,
            "crop_length": data.crop_length,
            "augmentation": config.augment.chain or "inline chain",
            "mode": dualpath.mode,
            "aligner": dualpath.aligner,
            "aligner_options": dualpath.aligner_options,
            "optimizer": config.optim.name,
            "lr": config.optim.lr,
            "batch_size": config.train.batch_size,
            "seed": config.seed,
            "paper_row": config.paper_row,
            "epochs": run.epochs if run else meta.get("epoch"),
            "steps": run.steps if run else meta.get("step"),
            "averaged_epochs": run.averaged_epochs if run else meta.get("metrics", {}).get("averaged_epochs"),
        },
        "dev": run.dev.to_json() if run and run.dev else None,
        "eval": {name: {**metrics.to_json(), "protocol": _name(metrics.protocol)} for name, metrics in sets.items()},
    }


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value:.2%}"


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def model_card(facts: dict[str, Any]) -> str:
    """The ``README.md`` of a package: Hugging Face front matter, then what the model is, how it was
    trained, how it scored, how its scores become decisions, and what it is not for."""
    training, calibration = facts["training"], facts["calibration"]
    options = training["aligner_options"] or ""
    front = [
        "---",
        "library_name: dpda",
        "pipeline_tag: audio-classification",
        "tags: [anti-spoofing, audio-deepfake-detection, asvspoof, dpda]",
        "---",
    ]
    rows = [
        [
            name,
            m.get("utterances"),
            _percent(m.get("eer")),
            _number(m.get("min_dcf")),
            _number(m.get("act_dcf")),
            _number(m.get("cllr")),
        ]
        for name, m in facts["eval"].items()
    ]
    evaluation = (
        table(["set", "utterances", "EER", "minDCF", "actDCF", "Cllr"], rows)
        if rows
        else ["No eval set was scored with this model when it was packaged."]
    )
    if calibration is None:
        decision = [
            "This model has no calibration (it was trained without a dev set): `dpda score` reports raw "
            f"scores only ({facts['score']}, higher means more likely bona fide)."
        ]
    else:
        decision = [
            f"Raw score: `{facts['score']}` (higher means more likely bona fide). The probability of bona fide "
            f"is `sigmoid({calibration['scale']:.6g} * score + {calibration['offset']:.6g})`, fitted on the "
            f"{calibration['fitted_on']} set with both classes weighted equally; a score below the decision "
            f"threshold {calibration['threshold']:.6g} (the {calibration['fitted_on']} EER threshold) is called "
            "spoofed. The threshold is an operating point of its own: it need not be where P(spoof) is 50 %, so "
            "a file can be called bona fide with P(spoof) above one half (or the reverse); pick the one your "
            "use needs.",
        ]
        if calibration["scale"] <= 0:
            decision += [
                "",
                "**Warning**: the calibration's slope is not positive: on the dev set this model ranks "
                "bona fide speech below spoofed speech. Do not use it for decisions.",
            ]
    model = facts["model"]
    lines = [
        *front,
        "",
        f"# {facts['name']}",
        "",
        f"A speech deepfake (spoofing) detector, `{model.get('name')}`, trained with dpda {facts['dpda_version']} "
        f"by dual-path data-augmented training ({training['mode']} mode) with the `{training['aligner']}` "
        "gradient aligner. It takes mono audio at "
        f"{facts['sample_rate']} Hz (other rates are resampled) and scores "
        + (f"its first {facts['max_seconds']} s." if facts["max_seconds"] else "the whole of it."),
        "",
        "## Training",
        "",
        *table(
            ["what", "value"],
            [
                ["training protocol", f"{training['train_protocol']} ({training['train_kind']})"],
                ["dev protocol", training["dev_protocol"] or "none"],
                ["augmentation", training["augmentation"]],
                ["mode, aligner", f"{training['mode']}, {training['aligner']} {options}".rstrip()],
                ["optimizer", f"{training['optimizer']}, lr {training['lr']:g}"],
                ["batch", f"{training['batch_size']} utterances per path"],
                ["crop", f"{training['crop_length']} samples"],
                ["epochs, steps", f"{training['epochs']}, {training['steps']}"],
                ["averaged epochs", training["averaged_epochs"]],
                ["seed", training["seed"]],
                ["paper row", training["paper_row"] or "-"],
            ],
        ),
        "",
        "The whole training config is in `model.json` (`config`).",
        "",
        "## Evaluation",
        "",
        *evaluation,
        "",
        "## Scores and decisions",
        "",
        *decision,
        "",
        "## Use",
        "",
        "```",
        "dpda score audio.wav --model THIS_FOLDER",
        "dpda serve THIS_FOLDER",
        "```",
        "",
        "```python",
        "from dpda.evaluate.evaluation import Detector",
        'detector = Detector.from_pretrained("THIS_FOLDER")',
        "```",
        "",
        "## Intended use and limits",
        "",
        "- For research on spoofing countermeasures and for screening audio as one signal among others; "
        "a decision about a person should not rest on it alone.",
        "- Its error rates hold for data like its eval sets. Other languages, codecs, channels, "
        "unseen synthesis methods, music or noise can move scores far from the calibration; recalibrate "
        "on data of the target domain before relying on the probability or the threshold.",
        "- A detector can be attacked (adversarial perturbations, replay through other channels).",
        "",
    ]
    return "\n".join(lines)
