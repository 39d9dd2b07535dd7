"""``dpda eval`` and ``dpda score``: a trained detector on eval protocols or on any audio.

A detector is a ``.safetensors`` file written by ``dpda train`` (its JSON metadata holds the
config that built it and the dev-set calibration) or a run folder (its ``final.safetensors``).
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
from dpda.data import Utterance, fit_length, load_audio
from dpda.data.audio import duration
from dpda.data.protocols import AUDIO_EXTENSIONS
from dpda.data.sets import DataError, dataset_name, dataset_root, read_dataset
from dpda.evaluate.calibration import Calibration
from dpda.evaluate.metrics import act_dcf, cllr, eer, eer_per_attack, min_dcf
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


def set_metrics(scores: Mapping[str, float], records: Sequence[Any], protocol: str | None = None) -> SetMetrics:
    """EER (pooled and per attack), ASVspoof 5's minDCF/actDCF/Cllr (scores read as natural-log
    likelihood ratios, which raw logit margins only approximate), and counts."""
    bonafide = np.array([scores[r.utt_id] for r in records if r.label == 1])
    spoof_records = [r for r in records if r.label == 0]
    spoof = np.array([scores[r.utt_id] for r in spoof_records])
    counts = SetMetrics(protocol=protocol, utterances=len(records), bonafide=len(bonafide), spoof=len(spoof))
    if not (len(bonafide) and len(spoof)):
        return counts
    value, threshold = eer(bonafide, spoof)
    attacks = [r.attack or "unknown" for r in spoof_records]
    return replace(
        counts,
        eer=value,
        eer_threshold=threshold,
        min_dcf=min_dcf(bonafide, spoof)[0],
        act_dcf=act_dcf(bonafide, spoof),
        cllr=cllr(bonafide, spoof),
        eer_per_attack=eer_per_attack(bonafide, spoof, attacks) if len(set(attacks)) > 1 else None,
    )


def read_eval_sets(sets: Sequence[DataSet], check: str, progress: bool = True) -> list[tuple[DataSet, list[Utterance]]]:
    """Each eval set with its records, every audio file checked (``check``) before any scoring;
    two sets of one name (one score file) are refused first."""
    names = [dataset_name(d) for d in sets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(
            f"eval.sets: two sets share the name(s) {', '.join(repeated)}, and each set has a score file of its "
            "name; give them distinct name: values"
        )
    return [
        (d, read_dataset(d, f"eval set {name!r}", check, need_both_classes=False, progress=progress))
        for d, name in zip(sets, names)
    ]


def evaluate_sets(
    detector: Detector,
    sets_and_records: Sequence[tuple[DataSet, list[Utterance]]],
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
    for dataset, records in sets_and_records:
        name = dataset_name(dataset)
        scores = score_protocol(
            detector.model,
            records,
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
        sets[name] = set_metrics(scores, records, dataset.protocol)
    results = EvalResults(str(detector.path), config.eval.score, max_seconds, sets)
    results.write(out / "results.json")
    write_text_atomic(out / "results.md", results_markdown(results))
    return results


def results_markdown(results: EvalResults) -> str:
    def shown(value: float | None, percent: bool = False) -> str:
        return "-" if value is None else f"{value:.2%}" if percent else f"{value:.4f}"

    rows = [
        [
            name,
            m.utterances,
            m.bonafide,
            m.spoof,
            shown(m.eer, percent=True),
            shown(m.min_dcf),
            shown(m.act_dcf),
            shown(m.cllr),
        ]
        for name, m in results.sets.items()
    ]
    lines = [
        f"# Evaluation of {results.checkpoint}",
        "",
        *table(["set", "utterances", "bona fide", "spoof", "EER", "minDCF", "actDCF", "Cllr"], rows),
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
