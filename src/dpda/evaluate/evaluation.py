"""``dpda eval`` and ``dpda score``: a trained detector on eval protocols or on any audio.

A detector is a ``.safetensors`` file written by ``dpda train`` (its JSON metadata holds the
config that built it and the dev-set calibration) or a run folder (its ``final.safetensors``).
An eval set may name an ASV score file (``asv_scores``, with ``asv_keys`` for the ASVspoof 2021
form), whose target, nontarget and spoof scores give the CM's min t-DCF, and a SASV score file
(``sasv_scores``), whose min a-DCF is reported beside it; both are read and checked against the
set's trials before any audio is checked or scored (``dpda.evaluate.asv``).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dpda.atomic import remove_orphans, write_text_atomic
from dpda.checkpoint import CheckpointError, check_architecture, load_weights
from dpda.config import DataSet, ExperimentConfig, config_with_overrides
from dpda.data import AudioValidationError, Utterance, fit_length, load_audio, validate
from dpda.data.audio import duration
from dpda.data.protocols import AUDIO_EXTENSIONS
from dpda.data.sets import DataError, dataset_name, dataset_root, read_dataset
from dpda.evaluate.asv import AsvScoreError, TrialScores, check_trials, read_asv_scores, read_sasv_scores
from dpda.evaluate.calibration import Calibration
from dpda.evaluate.metrics import a_dcf, act_dcf, cllr, eer, eer_per_attack, min_dcf, min_tdcf, tdcf_weights
from dpda.evaluate.scoring import predict, score_protocol, scores_from_logits
from dpda.evaluate.segments import Aggregate, Windows, score_windows
from dpda.markdown import table
from dpda.models import UntrustedCodeError, architecture, build
from dpda.results import EvalResults, SetMetrics

#: the weights file of a folder: a run folder's final model, or a model package's weights
FOLDER_WEIGHTS = ("final.safetensors", "model.safetensors")
#: what a model package on the Hugging Face hub is fetched with (no code, no other weights)
HUB_FILES = ["config.json", "model.safetensors", "model.json", "README.md"]
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class Detector:
    model: nn.Module
    config: ExperimentConfig
    calibration: Calibration | None
    path: Path

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        device: str | torch.device = "cpu",
        *,
        revision: str | None = None,
        trust_code: bool = False,
    ) -> Detector:
        """The detector of a model package (``dpda package``), a run folder or a checkpoint, or, where
        ``source`` is no local path but a hub id (``owner/name``), of the package on the Hugging Face
        hub (needs ``huggingface_hub``: ``pip install dpda[hub]``; only the package's own files are
        fetched)."""
        path = Path(source)
        if not path.exists() and _HUB_ID.fullmatch(str(source)):
            try:
                from huggingface_hub import snapshot_download
            except ImportError as error:
                needed = "pip install 'dpda[hub]'"
                raise ImportError(f"{source}: loading from the hub needs huggingface_hub: {needed}") from error
            path = Path(snapshot_download(str(source), revision=revision, allow_patterns=HUB_FILES))
        return load_detector(path, torch.device(device), trust_code=trust_code)


def checkpoint_path(source: str | Path) -> Path:
    """The weights file ``source`` names: itself, or a folder's (``FOLDER_WEIGHTS``)."""
    source = Path(source)
    if not source.is_dir():
        return source
    found = [source / name for name in FOLDER_WEIGHTS if (source / name).is_file()]
    return found[0] if found else source / FOLDER_WEIGHTS[0]


def load_detector(
    source: str | Path, device: torch.device, overrides: Sequence[str] = (), *, trust_code: bool = False
) -> Detector:
    """The model a checkpoint (or run folder) describes, with its weights, in eval mode; a model
    whose metadata names code to import (``custom``) only with ``trust_code``."""
    path = checkpoint_path(source)
    weights, meta = load_weights(path)
    if "config" not in meta:
        raise CheckpointError(f"{path}: its metadata has no 'config'; was it written by dpda train?")
    config = config_with_overrides(meta["config"], overrides, source=f"{path} (config)")
    try:
        # the weights are the checkpoint's: model.init is not read
        model = build(architecture(config.model), trust_code=trust_code)
    except UntrustedCodeError as error:
        raise UntrustedCodeError(f"{path}: {error}") from None
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: its model cannot be built: {error}") from error
    check_architecture(model, weights, path)
    model.load_state_dict(weights)
    stored = meta.get("calibration")
    calibration = None if stored is None else Calibration.from_dict(stored, f"{path}: calibration")
    return Detector(model.to(device).eval(), config, calibration, path)


@dataclass(frozen=True)
class EvalSet:
    """An eval set as ``read_eval_sets`` checked it: its protocol's records, and the trials of its
    ASV and SASV score files (None where it names none), which match those records."""

    dataset: DataSet
    records: list[Utterance]
    asv: TrialScores | None = None
    sasv: TrialScores | None = None


def set_metrics(
    scores: Mapping[str, float],
    records: Sequence[Any],
    protocol: str | None = None,
    asv: TrialScores | None = None,
    sasv: TrialScores | None = None,
) -> SetMetrics:
    """EER (pooled and per attack), ASVspoof 5's minDCF/actDCF/Cllr (scores read as natural-log
    likelihood ratios, which raw logit margins only approximate), and counts; with ``asv`` the min
    t-DCF 2019 and 2021 of the CM in tandem with that ASV system, with ``sasv`` the min a-DCF of
    those SASV scores (which do not depend on the CM) and its threshold."""
    bonafide = np.array([scores[r.utt_id] for r in records if r.label == 1])
    spoof_records = [r for r in records if r.label == 0]
    spoof = np.array([scores[r.utt_id] for r in spoof_records])
    counts = SetMetrics(protocol=protocol, utterances=len(records), bonafide=len(bonafide), spoof=len(spoof))
    if sasv is not None:
        min_adcf, threshold = a_dcf(sasv.of("target"), sasv.of("nontarget"), sasv.of("spoof"))
        counts = replace(counts, min_adcf=min_adcf, adcf_threshold=threshold)
    if not (len(bonafide) and len(spoof)):
        return counts
    value, threshold = eer(bonafide, spoof)
    attacks = [r.attack or "unknown" for r in spoof_records]
    tdcf: list[float | None] = [None, None]
    if asv is not None:
        trials = asv.of("target"), asv.of("nontarget"), asv.of("spoof")
        tdcf = [min_tdcf(bonafide, spoof, *trials, version=version) for version in ("2019", "2021")]
    return replace(
        counts,
        eer=value,
        eer_threshold=threshold,
        min_dcf=min_dcf(bonafide, spoof)[0],
        act_dcf=act_dcf(bonafide, spoof),
        cllr=cllr(bonafide, spoof),
        eer_per_attack=eer_per_attack(bonafide, spoof, attacks) if len(set(attacks)) > 1 else None,
        min_tdcf_2019=tdcf[0],
        min_tdcf_2021=tdcf[1],
    )


def read_eval_sets(sets: Sequence[DataSet], check: str, progress: bool = True) -> list[EvalSet]:
    """Each eval set with its records and ASV/SASV trials, refused at the first problem before
    any scoring: two sets of one name (one score file) first, then every protocol and score file
    (read and matched to the protocol's trials), then every audio file (``check``), the slow part."""
    names = [dataset_name(d) for d in sets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(
            f"eval.sets: two sets share the name(s) {', '.join(repeated)}, and each set has a score file of its "
            "name; give them distinct name: values"
        )
    read = []
    for dataset, name in zip(sets, names):
        records = read_dataset(dataset, f"eval set {name!r}", "off", need_both_classes=False, progress=progress)
        try:
            read.append(EvalSet(dataset, records, _asv_trials(dataset, records), _sasv_trials(dataset, records)))
        except AsvScoreError as error:
            raise AsvScoreError(f"eval set {name!r}: {error}") from None
    if check != "off":
        for eval_set, name in zip(read, names):
            root = dataset_root(eval_set.dataset)
            try:
                validate(eval_set.records, root, decode=check == "decode", progress=progress)
            except AudioValidationError as error:
                raise DataError(f"eval set {name!r} data: {error}") from error
    return read


def _asv_trials(dataset: DataSet, records: Sequence[Utterance]) -> TrialScores | None:
    """The set's ASV trials (of the CM trials' phases, for the 2021 form), checked against its
    records and for a positive t-DCF normaliser of both versions."""
    if dataset.asv_scores is None:
        return None
    trials = read_asv_scores(dataset.asv_scores, dataset.asv_keys)
    phases = {record.extra.get("phase") for record in records}
    if trials.phases is not None and None not in phases:  # the official t-DCF takes one phase's trials
        trials = trials.in_phases({phase for phase in phases if phase is not None})
        trials.require_every_key()
    check_trials(trials, records)
    for version in ("2019", "2021"):
        try:
            tdcf_weights(trials.of("target"), trials.of("nontarget"), trials.of("spoof"), version=version)
        except ValueError as error:
            raise AsvScoreError(f"{trials.source}: t-DCF {version}: {error}") from None
    return trials


def _sasv_trials(dataset: DataSet, records: Sequence[Utterance]) -> TrialScores | None:
    if dataset.sasv_scores is None:
        return None
    trials = read_sasv_scores(dataset.sasv_scores)
    check_trials(trials, records)
    return trials


def evaluate_sets(
    detector: Detector,
    eval_sets: Sequence[EvalSet],
    out: Path,
    device: torch.device,
    progress: bool = True,
) -> EvalResults:
    """Score every set (as ``read_eval_sets`` returns them) into ``out/scores/<name>.txt``
    (resumable) and compute its metrics; ``out/results.json`` and ``out/results.md`` hold them."""
    config = detector.config
    (out / "scores").mkdir(parents=True, exist_ok=True)
    remove_orphans(out / "scores")  # a killed scoring's temporaries (a live one's stay)
    max_seconds = config.eval.max_seconds
    length = round(max_seconds * config.data.sample_rate) if max_seconds else None
    sets = {}
    for eval_set in eval_sets:
        dataset = eval_set.dataset
        name = dataset_name(dataset)
        scores = score_protocol(
            detector.model,
            eval_set.records,
            dataset_root(dataset),
            out / "scores" / f"{name}.txt",
            device=device,
            length=length,
            batch_size=config.eval.batch_size,
            kind=config.eval.score,
            sample_rate=config.data.sample_rate,
            workers=config.data.workers,
            progress=progress,
        )
        sets[name] = set_metrics(scores, eval_set.records, dataset.protocol, eval_set.asv, eval_set.sasv)
    results = EvalResults(str(detector.path), config.eval.score, max_seconds, sets)
    results.write(out / "results.json")
    write_text_atomic(out / "results.md", results_markdown(results))
    return results


def results_markdown(results: EvalResults) -> str:
    """The results as Markdown: one row per set, the t-DCF and a-DCF columns where some set has
    them (``-`` for the others), then each set's EER per attack."""

    def shown(value: float | None, percent: bool = False) -> str:
        return "-" if value is None else f"{value:.2%}" if percent else f"{value:.4f}"

    metrics = results.sets.values()
    columns = [
        ("EER", "eer", True),
        ("minDCF", "min_dcf", False),
        ("actDCF", "act_dcf", False),
        ("Cllr", "cllr", False),
    ]
    optional = [("min t-DCF 2019", "min_tdcf_2019"), ("min t-DCF 2021", "min_tdcf_2021"), ("min a-DCF", "min_adcf")]
    columns += [(title, key, False) for title, key in optional if any(getattr(m, key) is not None for m in metrics)]
    rows = [
        [name, m.utterances, m.bonafide, m.spoof, *(shown(getattr(m, key), percent) for _, key, percent in columns)]
        for name, m in results.sets.items()
    ]
    lines = [
        f"# Evaluation of {results.checkpoint}",
        "",
        *table(["set", "utterances", "bona fide", "spoof", *(title for title, _, _ in columns)], rows),
    ]
    for name, m in results.sets.items():
        if m.eer_per_attack:
            lines += [
                "",
                f"## {name}: EER per attack",
                "",
                *table(["attack", "EER"], [[a, f"{v:.2%}"] for a, v in m.eer_per_attack.items()]),
            ]
    return "\n".join(lines) + "\n"


def audio_files(paths: Sequence[str | Path]) -> list[Path]:
    """The given files, and the audio files below the given folders, sorted."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        else:
            found.append(path)
    return found


def score_files(
    detector: Detector,
    paths: Sequence[str | Path],
    device: torch.device,
    windows: Windows | None = None,
    aggregate: Aggregate = "mean",
) -> Iterator[dict[str, Any]]:
    """One record per file: the raw score, the calibrated probability that it is spoofed and the
    decision at the stored threshold. A file that cannot be read, that the model cannot take (too
    short for its frames) or that it scores NaN/inf gets an ``error`` instead, and the others are
    still scored; with ``eval.max_seconds``, only the head of each file that is scored is read.
    With ``windows``, each file is scored window by window instead (``dpda.evaluate.segments``)."""
    config = detector.config
    length = round(config.eval.max_seconds * config.data.sample_rate) if config.eval.max_seconds else None
    for path in audio_files(paths):
        if windows is not None:
            yield _checked(path, functools.partial(_segment_record, detector, path, windows, aggregate, device))
            continue
        try:
            seconds = duration(path)
            audio = load_audio(path, config.data.sample_rate, length)
            if not len(audio):
                raise ValueError("no samples")
        except Exception as error:
            yield {"path": str(path), "error": f"{type(error).__name__}: {error}"}
            continue
        if length:
            audio = fit_length(audio, length, "head")
        try:
            _, logits, _ = predict(
                detector.model, [(torch.from_numpy(audio)[None], torch.zeros(1, dtype=torch.long), [str(path)])], device
            )
        except (RuntimeError, ValueError) as error:  # too short for the model's frames or kernels, ...
            yield {"path": str(path), "error": f"the model cannot score a file of {len(audio)} samples: {error}"}
            continue
        score = float(scores_from_logits(logits, config.eval.score)[0])
        record: dict[str, Any] = {"path": str(path), "seconds": round(seconds, 3), "score": round(score, 6)}
        if detector.calibration is not None:
            record.update(detector.calibration.verdict(score), threshold=round(detector.calibration.threshold, 6))
        yield _finite(record)


def _segment_record(
    detector: Detector, path: Path, windows: Windows, aggregate: Aggregate, device: torch.device
) -> dict[str, Any]:
    scored = score_windows(
        detector.model,
        path,
        windows,
        detector.calibration,
        score_kind=detector.config.eval.score,
        device=device,
        batch_size=detector.config.eval.batch_size,
        aggregate=aggregate,
    )
    return {"path": str(path), **scored}


def _checked(path: Path, score: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``score()``'s record, or one with the ``error`` that stopped it."""
    try:
        record = score()
    except (OSError, RuntimeError, ValueError) as error:  # unreadable, or too short for the model
        return {"path": str(path), "error": f"{type(error).__name__}: {error}"}
    segments = record.get("segments", [])
    bad = [f"segment {i} score" for i, segment in enumerate(segments) if not math.isfinite(segment["score"])]
    return _finite(record, bad)


def _finite(record: dict[str, Any], bad: list[str] | None = None) -> dict[str, Any]:
    """``record``, or an error naming the values that came out NaN or infinite."""
    bad = (bad or []) + [key for key, value in record.items() if isinstance(value, float) and not math.isfinite(value)]
    if not bad:
        return record
    return {
        "path": record["path"],
        "error": f"its {' and '.join(bad[:3])} came out NaN or infinite: are the checkpoint's weights "
        "(and calibration) finite?",
    }
