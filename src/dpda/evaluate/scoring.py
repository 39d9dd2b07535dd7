"""Scoring a detector on a protocol: logits per utterance, scores, and checked, resumable score files.

A score file is built in ``<name>.partial``, one batch of whole lines appended at a time; a write
cut short (a full disk) is truncated back to the last whole line. A crash can still leave a half
line (or a NaN from an older version, or garbage), so a re-run keeps only the lines that are valid
for its protocol and scores the other utterances again: a half line never joins the next one
(``u1228 0.246u1229 0.220``) and no utterance takes another's score.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dpda.atomic import atomic_path, fsync_path
from dpda.data import AudioDataset, Utterance
from dpda.data.dataset import collate
from dpda.dualpath.loss import logits_of
from dpda.errors import DpdaError, listed
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
    """A score file that does not match its protocol (unknown, missing or repeated ids, NaN), or an
    utterance that the model cannot score (too short for it, or a NaN/inf score)."""


def _listed(ids: Sequence[str]) -> str:
    return listed(ids, 8)


def read_scores(path: str | Path, expected: Sequence[str] | None = None, *, complete: bool = True) -> dict[str, float]:
    """``<utterance id> <score>`` lines (the score is the last column) as a mapping; ids that
    the protocol (``expected``) does not list, ids it lists that are missing (``complete``),
    repeated ids and non-finite scores are one error naming them (the last two with their lines)."""
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
            repeated.append(f"{fields[0]} (line {number})")
        if not math.isfinite(value):
            bad.append(f"{fields[0]} (line {number})")
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


def resume_scores(partial: Path, expected: Sequence[str]) -> dict[str, float]:
    """The scores of an interrupted run's ``partial`` file. A line that is not a complete
    ``<utterance id> <score>`` of this protocol (a half line, garbage, a NaN/inf score, an unknown
    id, an id on two lines) is dropped, with one warning naming the file and its lines, and the
    file rewritten without it, so that its utterance is scored again."""
    wanted = set(expected)
    *lines, tail = partial.read_bytes().split(b"\n")
    parsed = [_parse_line(line, wanted) for line in lines]
    counts = Counter(entry[0] for entry in parsed if isinstance(entry, tuple))
    scores, kept, problems = {}, [], []
    for number, (line, entry) in enumerate(zip(lines, parsed), start=1):
        if isinstance(entry, tuple) and counts[entry[0]] > 1:
            entry = f"{entry[0]} is on {counts[entry[0]]} lines"
        if isinstance(entry, str):
            problems.append(f"line {number} ({entry}: {line[:60]!r})")
        else:
            scores[entry[0]] = entry[1]
            kept.append(line + b"\n")
    if tail:
        problems.append(f"line {len(lines) + 1} (a half line, cut short: {tail[:60]!r})")
    if problems:
        warnings.warn(
            f"{partial}: dropped {len(problems)} invalid line(s), their utterances are scored again: "
            + _listed(problems),
            stacklevel=2,
        )
        with atomic_path(partial) as temporary:
            temporary.write_bytes(b"".join(kept))
    return scores


def _parse_line(line: bytes, wanted: set[str]) -> tuple[str, float] | str:
    """``(utterance id, score)`` of one line of a partial score file, or why it is not valid."""
    try:
        fields = line.decode("utf-8").split()
    except UnicodeDecodeError:
        return "not UTF-8 text"
    if len(fields) != 2:
        return "expected '<utterance id> <score>'"
    utt, text = fields
    try:
        value = float(text)
    except ValueError:
        return f"score {text!r} is not a number"
    if not math.isfinite(value):
        return f"score {text} is not finite"
    if utt not in wanted:
        return f"{utt} is not in the protocol"
    return utt, value


def _append(fd: int, text: str) -> None:
    """Append ``text`` (whole lines) to the open file ``fd``; a write cut short (a full disk, an
    interrupt) is truncated back, so the file still ends with a whole line."""
    start = os.lseek(fd, 0, os.SEEK_END)
    data = memoryview(text.encode())
    try:
        while data:
            data = data[os.write(fd, data) :]
    except BaseException:
        os.ftruncate(fd, start)
        raise


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
    batch, a re-run keeps its valid lines (``resume_scores``) and scores the rest, and the complete
    file is checked against the protocol and renamed to ``out``. ``length`` (samples) crops or
    repeats every utterance to one length; ``None`` scores each at its own length, one utterance per
    forward pass. An utterance that the model cannot score, or scores NaN/inf, is a ``ScoreError``
    naming it: a protocol's scores are complete and finite or not written."""
    partial = out.with_name(out.name + ".partial")
    expected = [r.utt_id for r in records]
    done = resume_scores(partial, expected) if partial.exists() else {}
    todo = [r for r in records if r.utt_id not in done]
    if todo:
        dataset = AudioDataset(todo, root, length=length, crop="head" if length else "full", sample_rate=sample_rate)
        loader = DataLoader(dataset, batch_size=batch_size if length else 1, num_workers=workers, collate_fn=collate)
        paths = {r.utt_id: root / str(r.path) for r in todo}
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o666)
        bar = tqdm(total=len(records), initial=len(done), desc=f"scoring {out.stem}", unit="utt", disable=not progress)
        try:
            for audio, labels, utt_ids in loader:
                try:
                    ids, logits, _ = predict(model, [(audio, labels, utt_ids)], device)
                except (RuntimeError, ValueError) as error:  # too short for its frames or kernels, ...
                    shown = _listed([f"{utt} ({paths[utt]}, {audio.shape[1]} samples)" for utt in utt_ids])
                    raise ScoreError(f"{out}: the model cannot score {shown}: {error}") from error
                values = scores_from_logits(logits, kind).tolist()
                _append(fd, "".join(f"{u} {v:.6f}\n" for u, v in zip(ids, values) if math.isfinite(v)))
                bad = [f"{u} ({paths[u]})" for u, v in zip(ids, values) if not math.isfinite(v)]
                if bad:
                    raise ScoreError(
                        f"{out}: the model's score of {_listed(bad)} is NaN or infinite, and is not written; "
                        "are the checkpoint's weights (and the audio) finite?"
                    )
                bar.update(len(ids))
        finally:
            bar.close()
            os.close(fd)
    scores = read_scores(partial, expected)
    fsync_path(partial)
    os.replace(partial, out)
    fsync_path(out.parent)
    return scores
