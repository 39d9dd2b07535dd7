"""Linear fusion and calibration of several systems' scores (``dpda fuse``), as BOSARIS and FoCal do it.

The fused score of a trial is ``sum_i w_i s_i + b`` over the systems' scores ``s_i``. The weights
and the offset are fitted on labelled dev trials by minimising the prior-weighted cross-entropy
(logistic regression with the classes weighted so that bona fide has the effective prior
``prior``, and the prior's log-odds ``logit(prior)`` added inside the objective only). Its minimum
is where the fused scores are calibrated natural-log likelihood ratios of bona fide over spoof
(higher = more bona fide, dpda's convention): if the systems' scores are linear in the true
LLR, the fit recovers it, at any prior. At ``prior`` 0.5 the objective is exactly Cllr, so the
fusion's dev Cllr is never above that of any one system calibrated alone.

Scores are standardised per system before the fit (the weights are scaled back after), so that
L-BFGS meets one well-conditioned problem whatever the systems' scales, and the optional L2 term
``l2 / 2 * |w|^2`` (in nats, on the standardised weights) means the same for every system. A small
one is the default because dev sets that strong systems separate completely (0 % EER, common on
ASVspoof 2019 LA dev) have no finite unregularised optimum.

Every input is checked before the fit: each file through ``read_scores`` (format, repeated ids,
NaN/inf, with their lines), the systems of one set against the first (which ids each file lacks
or adds), the scored trials against the key (either way), and the dev and eval systems' counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import expit, logit

from dpda.atomic import write_text_atomic
from dpda.config import DataSet
from dpda.data import Utterance
from dpda.data.sets import read_dataset
from dpda.errors import DpdaError
from dpda.evaluate.metrics import cllr, eer
from dpda.evaluate.scoring import read_scores
from dpda.markdown import table

#: The L2 weight of ``dpda fuse`` and ``fit_fusion`` unless one is given (see the module's docstring).
DEFAULT_L2 = 1e-4
_SHOWN = 5  # ids an error lists per kind of difference


class FusionError(DpdaError, ValueError):
    """Score files that cannot be fused (different trials, a key that does not match them, system
    counts that differ) or a fit that has no answer (one class, a constant system, no convergence)."""


@dataclass(frozen=True)
class Fusion:
    """A fitted linear fusion: ``apply`` gives calibrated LLRs (bona fide over spoof)."""

    weights: tuple[float, ...]
    offset: float
    prior: float
    l2: float
    objective: float  # the prior-weighted cross-entropy on the dev trials, in bits (Cllr at prior 0.5)
    iterations: int

    def apply(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Fused scores of an (N, systems) matrix."""
        matrix = np.asarray(scores, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.weights):
            raise ValueError(f"expected scores of shape (N, {len(self.weights)}), got {matrix.shape}")
        return matrix @ np.asarray(self.weights) + self.offset


def fit_fusion(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    prior: float = 0.5,
    l2: float = DEFAULT_L2,
    names: Sequence[str] | None = None,
) -> Fusion:
    """The fusion of the systems' dev ``scores`` (N, systems) with ``labels`` (1 = bona fide,
    0 = spoof) that minimises the prior-weighted cross-entropy plus ``l2 / 2 * |w|^2``; ``names``
    (one per system) are what errors call the systems."""
    matrix = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if matrix.ndim != 2 or matrix.shape[1] == 0 or y.shape != (matrix.shape[0],):
        raise ValueError(f"expected scores (N, systems) and labels (N,), got {matrix.shape} and {y.shape}")
    names = list(names) if names is not None else [f"system {i + 1}" for i in range(matrix.shape[1])]
    _check_options(prior, l2)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 1 (bona fide) or 0 (spoof)")
    bonafide = y == 1
    n_bonafide, n_spoof = int(bonafide.sum()), int((~bonafide).sum())
    if not (n_bonafide and n_spoof):
        only = "bona fide" if n_bonafide else "spoof"
        raise FusionError(f"the dev trials are all {only} ({len(y)}): a fusion needs both classes to be fitted")
    if not np.isfinite(matrix).all():
        raise FusionError("the dev scores hold NaN or infinite values")
    mean, spread = matrix.mean(axis=0), matrix.std(axis=0)
    constant = [f"{name} ({matrix[0, i]:g})" for i, name in enumerate(names) if not spread[i] > 0]
    if constant:
        raise FusionError(
            f"{', '.join(constant)}: gives every dev trial the same score, so its weight cannot be told "
            "from the offset; leave it out"
        )
    # (systems, N): every product below is an einsum over contiguous rows, not a BLAS call, whose
    # worker threads, spinning between the optimiser's many small calls, made a fit on a busy
    # machine 50x slower (0.4 s instead of 8 ms for 22,000 trials on 2 shared cores)
    standard = np.ascontiguousarray(((matrix - mean) / spread).T)
    # per trial: the class weight (prior / count), and the sign that makes the loss softplus(sign * z)
    weight = np.where(bonafide, prior / n_bonafide, (1 - prior) / n_spoof)
    sign = np.where(bonafide, -1.0, 1.0)
    shift = float(logit(prior))

    def objective(parameters: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        w, b = parameters[:-1], parameters[-1]
        margin = sign * (np.einsum("kn,k->n", standard, w) + b + shift)
        slope = weight * sign * expit(margin)  # d loss / d z of each trial
        value = float(np.einsum("n,n->", weight, np.logaddexp(0.0, margin))) + 0.5 * l2 * float(w @ w)
        return value, np.append(np.einsum("kn,n->k", standard, slope) + l2 * w, slope.sum())

    result = minimize(
        objective,
        np.zeros(matrix.shape[1] + 1),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9},
    )
    w, b = result.x[:-1], result.x[-1]
    if not (result.success and np.isfinite(result.x).all()):
        raise FusionError(f"the fusion fit did not converge ({result.message}); a larger --l2 may help")
    fused = np.einsum("kn,k->n", standard, w) + b
    if l2 == 0 and fused[~bonafide].max() < fused[bonafide].min():
        raise FusionError(
            "the dev trials are separated completely, so without an L2 term the weights grow without bound; "
            f"give an L2 weight above 0 (the default is {DEFAULT_L2})"
        )
    margin = sign * (fused + shift)
    cross_entropy = float(np.einsum("n,n->", weight, np.logaddexp(0.0, margin))) / math.log(2)
    weights = w / spread
    return Fusion(
        weights=tuple(float(v) for v in weights),
        offset=float(b - weights @ mean),
        prior=prior,
        l2=l2,
        objective=cross_entropy,
        iterations=int(result.nit),
    )


def _check_options(prior: float, l2: float) -> None:
    if not 0 < prior < 1:
        raise FusionError(f"the prior of bona fide must be between 0 and 1 (exclusive), got {prior}")
    if not (l2 >= 0 and math.isfinite(l2)):
        raise FusionError(f"the L2 weight must be a finite number >= 0, got {l2}")


@dataclass(frozen=True)
class Systems:
    """Several systems' scores of the same trials: ``scores[n, i]`` is file ``i``'s score of ``ids[n]``."""

    files: tuple[Path, ...]
    ids: list[str]
    scores: NDArray[np.float64]

    def ordered(self, ids: Sequence[str]) -> Systems:
        """The same scores in the order of ``ids`` (the same trials)."""
        if list(ids) == self.ids:
            return self
        row = {utt: n for n, utt in enumerate(self.ids)}
        return Systems(self.files, list(ids), self.scores[[row[utt] for utt in ids]])


def read_systems(paths: Sequence[str | Path], role: str) -> Systems:
    """Each file through ``read_scores``, then every file's trials compared with the first's: a
    file that lacks or adds ids is named with how many and the first few, all files at once."""
    files = tuple(Path(f) for f in paths)
    if not files:
        raise FusionError(f"no {role} score files")
    maps = [read_scores(f) for f in files]
    for path, scores in zip(files, maps):
        if not scores:
            raise FusionError(f"{path}: no scores ({role} score file)")
    first = maps[0]
    problems = [
        f"{path}: {found}"
        for path, scores in zip(files[1:], maps[1:])
        if (found := _differences(first, scores, f"trials of {files[0].name} missing", f"not in {files[0].name}"))
    ]
    if problems:
        raise FusionError(
            f"the {role} score files do not score the same trials (compared with {files[0]}, {len(first)} trials):\n  "
            + "\n  ".join(problems)
        )
    ids = list(first)
    columns = [np.fromiter(map(scores.__getitem__, ids), np.float64, count=len(ids)) for scores in maps]
    return Systems(files, ids, np.stack(columns, axis=1))


def _differences(wanted: dict[str, Any], have: dict[str, Any], lacking: str, adding: str) -> str:
    """The ids of ``wanted`` that ``have`` lacks and those it adds (both in their file order), as
    counts and the first few of each, or ``""`` when they are the same trials."""
    if wanted.keys() == have.keys():
        return ""
    missing = [utt for utt in wanted if utt not in have]
    extra = [utt for utt in have if utt not in wanted]
    found = []
    if missing:
        found.append(f"{len(missing)} {lacking} ({_first(missing)})")
    if extra:
        found.append(f"{len(extra)} {adding} ({_first(extra)})")
    return "; ".join(found)


def _first(ids: list[str]) -> str:
    return ", ".join(ids[:_SHOWN]) + (", ..." if len(ids) > _SHOWN else "")


def labelled(systems: Systems, records: Sequence[Utterance], role: str, key: str) -> tuple[Systems, NDArray[np.int64]]:
    """The systems' scores in the key's trial order and the key's labels; key trials without a
    score and scored trials the key does not list are one error naming them."""
    label = {r.utt_id: r.label for r in records}
    found = _differences(
        label, dict.fromkeys(systems.ids), "key trials without a score", "scored trials not in the key"
    )
    if found:
        raise FusionError(
            f"the {role} scores ({', '.join(map(str, systems.files))}) do not score the trials of the {role} key "
            f"{key} ({len(label)} trials): {found}"
        )
    return systems.ordered(list(label)), np.array(list(label.values()), dtype=np.int64)


def set_summary(systems: Systems, labels: NDArray[np.int64], fused: NDArray[np.float64]) -> dict[str, Any]:
    """Trial counts and the EER and Cllr of each system and of the fusion on one labelled set
    (``None`` where the set has one class only)."""
    bonafide = labels == 1
    counts = {"trials": len(labels), "bonafide": int(bonafide.sum()), "spoof": int((~bonafide).sum())}

    def metrics(scores: NDArray[np.float64]) -> dict[str, float | None]:
        if not (counts["bonafide"] and counts["spoof"]):
            return {"eer": None, "cllr": None}
        return {"eer": eer(scores[bonafide], scores[~bonafide])[0], "cllr": cllr(scores[bonafide], scores[~bonafide])}

    systems_metrics = [metrics(systems.scores[:, i]) for i in range(systems.scores.shape[1])]
    return {**counts, "systems": systems_metrics, "fusion": metrics(fused)}


def fuse(
    scores: Sequence[str | Path],
    dev: DataSet,
    out: str | Path,
    *,
    dev_scores: Sequence[str | Path] | None = None,
    eval_key: DataSet | None = None,
    prior: float = 0.5,
    l2: float = DEFAULT_L2,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``dpda fuse``: fit the fusion on ``dev_scores`` (one file per system; default: ``scores``
    themselves) with the ``dev`` key, apply it to ``scores`` (the same systems, in the same order)
    and write ``out`` (a score file in the key's trial order, or the first file's) and ``out`` with
    the suffix ``.json`` (the fusion and the metrics, which this returns). ``eval_key`` labels
    ``scores`` when they are not the dev scores, for their metrics. Every check runs before the fit."""
    out = Path(out)
    summary_path = out.with_suffix(".json")
    apply_files = [Path(f) for f in scores]
    fit_files = apply_files if dev_scores is None else [Path(f) for f in dev_scores]
    if len(fit_files) != len(apply_files):
        raise FusionError(
            f"{len(fit_files)} dev score file(s) and {len(apply_files)} score file(s) to fuse: give one of each per "
            "system, in the same order"
        )
    if dev_scores is None and eval_key is not None:
        raise FusionError(
            "an eval key labels the scores to fuse when they are not the dev scores: give the dev scores too"
        )
    _check_options(prior, l2)
    _check_outputs(out, summary_path, [*apply_files, *fit_files], overwrite)
    dev_systems, dev_labels = labelled(
        read_systems(fit_files, "dev"), read_dataset(dev, "dev key", check="off", progress=False), "dev", dev.protocol
    )
    if dev_scores is None:
        apply_systems, apply_labels = dev_systems, dev_labels
    else:
        apply_systems, apply_labels = read_systems(apply_files, "eval"), None
        if eval_key is not None:
            records = read_dataset(eval_key, "eval key", check="off", need_both_classes=False, progress=False)
            apply_systems, apply_labels = labelled(apply_systems, records, "eval", eval_key.protocol)
    names = [str(path) for path in fit_files]
    fusion = fit_fusion(dev_systems.scores, dev_labels, prior=prior, l2=l2, names=names)
    fused = fusion.apply(apply_systems.scores)
    summary: dict[str, Any] = {
        **asdict(fusion),
        "systems": [
            {"dev": str(d), "scores": str(s), "weight": w} for d, s, w in zip(fit_files, apply_files, fusion.weights)
        ],
        "out": str(out),
        "dev": {
            "key": str(dev.protocol),
            "kind": dev.kind,
            **set_summary(dev_systems, dev_labels, fusion.apply(dev_systems.scores)),
        },
        "eval": None,
    }
    if eval_key is not None and apply_labels is not None:
        summary["eval"] = {
            "key": str(eval_key.protocol),
            "kind": eval_key.kind,
            **set_summary(apply_systems, apply_labels, fused),
        }
    write_text_atomic(out, "".join(f"{utt} {value:.6f}\n" for utt, value in zip(apply_systems.ids, fused.tolist())))
    write_text_atomic(summary_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def _check_outputs(out: Path, summary_path: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    if not out.parent.is_dir():
        raise FusionError(f"--out {out}: its folder {out.parent} does not exist")
    if out.suffix == ".json":
        raise FusionError(
            f"--out {out}: the summary goes beside the scores as {summary_path.name}; name the scores *.txt"
        )
    resolved = {path.resolve() for path in inputs}
    for path in (out, summary_path):
        if path.resolve() in resolved:
            raise FusionError(f"--out {out}: {path} is one of the input score files")
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} exists; remove it, pick another name or overwrite it (--overwrite)")


def fusion_markdown(summary: dict[str, Any]) -> str:
    """The table ``dpda fuse`` prints: each system's weight, EER and Cllr, then the fusion's."""
    sets = [name for name in ("dev", "eval") if summary[name] is not None]

    def cells(metrics: dict[str, float | None]) -> list[str]:
        return [
            "-" if metrics[k] is None else f"{metrics[k]:.2%}" if k == "eer" else f"{metrics[k]:.4f}"
            for k in ("eer", "cllr")
        ]

    header = ["system", "weight", *[f"{name} {m}" for name in sets for m in ("EER", "Cllr")]]
    rows = [
        [system["scores"], f"{system['weight']:.6g}", *[c for name in sets for c in cells(summary[name]["systems"][i])]]
        for i, system in enumerate(summary["systems"])
    ]
    rows.append(
        ["fusion", f"offset {summary['offset']:.6g}", *[c for name in sets for c in cells(summary[name]["fusion"])]]
    )
    counts = ", ".join(
        f"{name} {summary[name]['trials']:,} trials ({summary[name]['bonafide']:,} bona fide)" for name in sets
    )
    lines = [
        f"fused LLR = sum of weight x score + offset, fitted at prior {summary['prior']} (L2 {summary['l2']}); "
        f"{counts}",
        "",
        *table(header, rows),
        "",
        f"wrote {summary['out']} and {Path(summary['out']).with_suffix('.json')}",
    ]
    return "\n".join(lines)
