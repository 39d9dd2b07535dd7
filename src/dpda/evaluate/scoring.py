"""Scoring a detector on a protocol: logits per utterance, scores, and score files."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

#: How a score is read from the two logits (index 1 = bona fide): the log-odds margin, or the
#: bona fide logit alone (what the paper code writes).
SCORE_KINDS = ("logit_diff", "bonafide_logit")


def scores_from_logits(logits: Tensor, kind: str = "logit_diff") -> Tensor:
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind {kind!r}; valid: {', '.join(SCORE_KINDS)}")
    logits = logits.double()
    return logits[:, 1] - logits[:, 0] if kind == "logit_diff" else logits[:, 1]


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor, list[str]]], device: torch.device,
            autocast_dtype: torch.dtype | None = None) -> tuple[list[str], Tensor, Tensor]:
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
            output = output[1] if isinstance(output, tuple) else output
            logits.append(output.float().cpu())
            labels.append(label)
            ids += utt_ids
    finally:
        model.train(was_training)
    if not ids:
        return [], torch.empty(0, 2), torch.empty(0, dtype=torch.long)
    return ids, torch.cat(logits), torch.cat(labels)


def write_scores(path: str | Path, ids: Sequence[str], scores: Sequence[float]) -> None:
    """``<utterance id> <score>`` per line, written to a temporary file and renamed."""
    path = Path(path)
    temporary = path.with_name(path.name + ".part")
    temporary.write_text("".join(f"{utt_id} {score:.6f}\n" for utt_id, score in zip(ids, scores)))
    os.replace(temporary, path)
