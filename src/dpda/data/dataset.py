"""Datasets and loaders: seeded order, exact mid-epoch resume, distributed ranks, worker processes.

The sampler yields ``(index, epoch)`` keys, so every random crop is drawn from a generator seeded
by ``(seed, epoch, index)``: the same utterance gets the same crop whichever worker loads it and
whether or not the run was resumed. The loader counts the batches it has handed out (not those
its workers prefetched), which is the position a checkpoint must store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from dpda.data.audio import PAPER_LENGTH, SAMPLE_RATE, CropPolicy, check_policy, fit_length, load_audio, repeat_pad
from dpda.data.records import Utterance

Batch = tuple[Tensor, Tensor, list[str]]


class AudioDataset(Dataset):
    """Utterances of a protocol as (audio (T,) float32, label, utterance id)."""

    def __init__(
        self,
        records: Sequence[Utterance],
        root: str | Path,
        *,
        length: int | None = PAPER_LENGTH,
        crop: CropPolicy = "head",
        sample_rate: int = SAMPLE_RATE,
        seed: int = 0,
    ) -> None:
        check_policy(length, crop)
        missing = [r.utt_id for r in records if r.path is None]
        if missing:
            raise ValueError(f"{len(missing)} record(s) name no audio file, e.g. {missing[0]!r}")
        self.records = list(records)
        self.root = Path(root)
        self.length = length
        self.crop = crop
        self.sample_rate = sample_rate
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, int, str]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[index]
        head = None if self.crop == "random" else self.length  # only the head is kept: read no more
        return self.fit(self.decode(index, head), epoch, index), record.label, record.utt_id

    def decode(self, index: int, max_samples: int | None = None) -> np.ndarray:
        """Utterance ``index`` as decoded (mono, at the sample rate): whole, or its first ``max_samples``."""
        path = self.records[index].path
        assert path is not None  # __init__ refuses records without one
        return load_audio(self.root / path, self.sample_rate, max_samples)

    def fit(self, audio: np.ndarray, epoch: int, index: int) -> np.ndarray:
        """``audio`` cropped or padded by the policy; the crop is keyed by (seed, epoch, index), so
        an utterance and its augmented copy of the same length get the same window."""
        return fit_length(audio, self.length, self.crop, np.random.default_rng([self.seed, epoch, index]))


class ResumableSampler(Sampler[tuple[int, int]]):
    """A seeded permutation per epoch, split across ranks, that can start mid-epoch.

    Like ``DistributedSampler``, indices are wrapped around so every rank gets the same number
    (``drop_last=False``) or the tail is dropped (``drop_last=True``).
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        distributed = dist.is_available() and dist.is_initialized()
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside [0, {self.world_size})")
        self.size, self.shuffle, self.seed, self.drop_last = size, shuffle, seed, drop_last
        self.epoch = 0
        self.start = 0  # samples of this rank's share to skip (resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def per_rank(self) -> int:
        return self.size // self.world_size if self.drop_last else -(-self.size // self.world_size)

    def __len__(self) -> int:
        return self.per_rank() - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank() * self.world_size
        order = (order * (-(-total // self.size)))[:total]
        for index in order[self.rank :: self.world_size][self.start :]:
            yield index, self.epoch


class ResumableLoader:
    """A DataLoader over a ``ResumableSampler`` whose position can be saved and restored.

    Batches are ``collate_fn``'s (by default ``collate``'s); the utterance ids must be last."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not isinstance(dataset, Sized):
            raise TypeError(f"the sampler draws indices below len(dataset); {type(dataset).__name__} has no len()")
        self.sampler = ResumableSampler(
            len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
        )
        self.batch_size = batch_size
        self.drop_last = drop_last
        # The loader's own generator (worker seeds) keeps it from drawing from the global RNG
        # at each epoch, which would make a resumed run's dropout masks differ.
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_fn or collate,
            drop_last=drop_last,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=num_workers > 0,
        )
        self.consumed = 0  # samples of this epoch handed out, resumed ones included

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.consumed = 0

    def __len__(self) -> int:
        remaining = len(self.sampler)
        return remaining // self.batch_size if self.drop_last else -(-remaining // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        self.consumed = self.sampler.start
        for batch in self.loader:
            self.consumed += len(batch[-1])
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.sampler.epoch,
            "position": self.consumed,
            "seed": self.sampler.seed,
            "world_size": self.sampler.world_size,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        missing = {"epoch", "position", "seed", "world_size"} - set(state)
        if missing:
            raise KeyError(f"loader state is missing {sorted(missing)}")
        if state["seed"] != self.sampler.seed or state["world_size"] != self.sampler.world_size:
            raise ValueError(
                f"the saved loader order (seed {state['seed']}, {state['world_size']} rank(s)) does not match "
                f"this loader (seed {self.sampler.seed}, {self.sampler.world_size} rank(s)); resume needs both equal"
            )
        if not 0 <= state["position"] <= self.sampler.per_rank():
            raise ValueError(
                f"saved position {state['position']} is outside this epoch's {self.sampler.per_rank()} samples"
            )
        self.sampler.epoch, self.sampler.start = int(state["epoch"]), int(state["position"])
        self.consumed = self.sampler.start


def collate(items: list[tuple[np.ndarray, int, str]]) -> Batch:
    """Stack to (B, T); utterances of unequal length (the ``full`` policy) are repeat-padded to the
    longest in the batch, so a batch size of 1 scores every utterance at exactly its own length."""
    longest = max(len(audio) for audio, _, _ in items)
    audio = np.stack([a if len(a) == longest else repeat_pad(a, longest) for a, _, _ in items])
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.long)
    return torch.from_numpy(audio), labels, [utt_id for _, _, utt_id in items]
