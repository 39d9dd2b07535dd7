"""Augmentation in the loader workers: each item is an utterance's crop and its augmented copy.

The paper code runs RawBoost on the whole decoded utterance in its loader workers and only then
repeat-pads or crops both copies; noise, peak limiting and SNR then refer to the whole
utterance, and a short utterance's augmented copy repeats with it. ``order`` selects that
(``augment_then_crop``) or augmenting the crop (``crop_then_augment``, what the batched
on-device path does). Every draw is keyed by (seed, epoch, utterance), so the result depends
neither on the worker that loads an item nor on a resume.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dpda.augment.base import Augmentation
from dpda.augment.chain import expand_rows
from dpda.data.dataset import AudioDataset, collate
from dpda.names import AUGMENT_ORDERS, AugmentOrder

#: (original, augmented, label, drawn parameters, utterance id)
PairedItem = tuple[np.ndarray, np.ndarray, int, dict[str, Tensor], str]
#: (original (B, T), augmented (B, T), labels (B,), parameters with batch first, utterance ids)
PairedBatch = tuple[Tensor, Tensor, Tensor, dict[str, Tensor], list[str]]


class PairedDataset(Dataset):
    """``audio``'s utterances with their augmented copies, made by ``augmentation`` on the CPU."""

    def __init__(self, audio: AudioDataset, augmentation: Augmentation, order: AugmentOrder, seed: int) -> None:
        if order not in AUGMENT_ORDERS:
            raise ValueError(f"unknown augmentation order {order!r}; valid: {', '.join(AUGMENT_ORDERS)}")
        self.audio = audio
        self.augmentation = augmentation.cpu()
        self.order = order
        self.seed = seed

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, key: int | tuple[int, int]) -> PairedItem:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.audio.records[index]
        whole = self.audio.decode(index)
        generator = torch.Generator().manual_seed(_key_seed(self.seed, epoch, index))
        if self.order == "augment_then_crop":
            augmented, params = self._augment(whole, generator)
            original, augmented = self.audio.fit(whole, epoch, index), self.audio.fit(augmented, epoch, index)
        else:
            original = self.audio.fit(whole, epoch, index)
            augmented, params = self._augment(original, generator)
        return original, augmented, record.label, params, record.utt_id

    def _augment(self, audio: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, dict[str, Tensor]]:
        with torch.no_grad():
            result = self.augmentation.augment(torch.from_numpy(audio)[None], generator)
        return result.audio[0].numpy(), result.params


def collate_pairs(items: list[PairedItem]) -> PairedBatch:
    """Stack originals and copies as ``collate`` does; a parameter some utterances lack (a stage
    that did not run on them) gets the chain's fill (NaN, -1 or False) in their rows."""
    original, labels, ids = collate([(o, label, utt) for o, _, label, _, utt in items])
    augmented, _, _ = collate([(a, label, utt) for _, a, label, _, utt in items])
    return original, augmented, labels, _stack_params([params for _, _, _, params, _ in items]), ids


def _stack_params(rows: list[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    keys = list(dict.fromkeys(key for row in rows for key in row))
    stacked = {}
    for key in keys:
        present = [i for i, row in enumerate(rows) if key in row]
        values = torch.cat([rows[i][key] for i in present])
        stacked[key] = expand_rows(values, torch.tensor(present), len(rows))
    return stacked


def _key_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the augmentation of one utterance in one epoch (never that of its crop)."""
    return int(np.random.SeedSequence([seed, epoch, index, 1]).generate_state(1, np.uint64)[0] >> np.uint64(1))
