"""Scoring a detector on a protocol: logits per utterance, scores, and checked, resumable score files."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dpda.data import AudioDataset, Utterance
from dpda.data.dataset import collate
from dpda.dualpath.loss import logits_of
from dpda.errors import DpdaError
from dpda.names import SCORE_KINDS

#: How a score is read from the two logits (index 1 = bona fide): the log-odds margin, or the
#: bona fide logit alone (what the paper code writes).


def scores_from_logits(logits: Tensor, kind: str = "logit_diff") -> Tensor:
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind {kind!r}; valid: {', '.join(SCORE_KINDS)}")
    logits = logits.double()
    return logits[:, 1] - logits[:, 0] if kind == "logit_diff" else logits[:, 1]


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor, list[str]]],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[list[str], Tensor, Tensor]:
    """Utterance ids, logits (N, 2) in float32 on the CPU and labels of every batch, in eval mode
    (the model's training flag is restored afterwards)."""
    was_training = model.training
    model.eval()
    ids: list[str] = []
    logits, labels = [], []
    try:
        for audio, label, utt_ids in batches:
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                output = model(audio.to(device, non_blocking=True))
            output = logits_of(output)
            logits.append(output.float().cpu())
            labels.append(label)
            ids += utt_ids
    finally:
        model.train(was_training)
    if not ids:
        return [], torch.empty(0, 2), torch.empty(0, dtype=torch.long)
    return ids, torch.cat(logits), torch.cat(labels)


class ScoreError(DpdaError, ValueError):
    """A score file that does not match its protocol: unknown, missing or repeated ids, NaN."""


def _listed(ids: Sequence[str], limit: int = 8) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def read_scores(path: str | Path, expected: Sequence[str] | None = None, *, complete: bool = True) -> dict[str, float]:
    """``<utterance id> <score>`` lines (the score is the last column) as a mapping; ids that
    the protocol (``expected``) does not list, ids it lists that are missing (``complete``),
    repeated ids and non-finite scores are one error naming them."""
    path = Path(path)
    scores: dict[str, float] = {}
    repeated, bad = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            value = float(fields[-1])
        except ValueError:
            raise ScoreError(f"{path}:{number}: expected '<utterance id> <score>', got {line!r}") from None
        if len(fields) < 2:
            raise ScoreError(f"{path}:{number}: expected '<utterance id> <score>', got {line!r}")
        if fields[0] in scores:
            repeated.append(fields[0])
        if not math.isfinite(value):
            bad.append(fields[0])
        scores[fields[0]] = value
    problems = []
    if repeated:
        problems.append(f"repeated ids: {_listed(repeated)}")
    if bad:
        problems.append(f"NaN/inf scores for: {_listed(bad)}")
    if expected is not None:
        wanted = set(expected)
        unknown = [utt for utt in scores if utt not in wanted]
        if unknown:
            problems.append(f"ids not in the protocol: {_listed(unknown)}")
        if complete:
            missing = [utt for utt in expected if utt not in scores]
            if missing:
                problems.append(f"{len(missing)} protocol ids without a score: {_listed(missing)}")
    if problems:
        raise ScoreError(f"{path}: " + "; ".join(problems))
    return scores


def score_protocol(
    model: nn.Module,
    records: Sequence[Utterance],
    root: Path,
    out: Path,
    *,
    device: torch.device,
    length: int | None,
    batch_size: int,
    kind: str = "logit_diff",
    sample_rate: int = 16000,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Score every record into ``out``, resumably: scores are appended to ``out.partial`` batch by
    batch, a re-run skips the ids already there, and the complete file is checked against the
    protocol and renamed to ``out``. ``length`` (samples) crops or repeats every utterance to one
    length; ``None`` scores each at its own length, one utterance per forward pass."""
    partial = out.with_name(out.name + ".partial")
    done = read_scores(partial, [r.utt_id for r in records], complete=False) if partial.exists() else {}
    todo = [r for r in records if r.utt_id not in done]
    if todo:
        dataset = AudioDataset(todo, root, length=length, crop="head" if length else "full", sample_rate=sample_rate)
        loader = DataLoader(dataset, batch_size=batch_size if length else 1, num_workers=workers, collate_fn=collate)
        with partial.open("a") as stream:
            bar = tqdm(
                total=len(records), initial=len(done), desc=f"scoring {out.stem}", unit="utt", disable=not progress
            )
            for batch in loader:
                ids, logits, _ = predict(model, [batch], device)
                stream.write(
                    "".join(
                        f"{utt} {score:.6f}\n" for utt, score in zip(ids, scores_from_logits(logits, kind).tolist())
                    )
                )
                stream.flush()
                bar.update(len(ids))
            bar.close()
    scores = read_scores(partial, [r.utt_id for r in records])
    os.replace(partial, out)
    return scores
