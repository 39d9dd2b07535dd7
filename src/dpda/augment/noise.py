"""Additive noise, music and babble from a MUSAN-style folder, mixed at a drawn SNR."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from dpda.augment.base import Augmentation, Augmented, check_batch
from dpda.augment.clips import AUDIO_EXTENSIONS, ClipBank, segment
from dpda.augment.ops import add_at_snr, check_range, draw_uniform, working_dtype

#: Category -> sub-folder of the MUSAN root. Babble sums several files of ``speech``.
CATEGORY_FOLDERS = {"noise": "noise", "music": "music", "babble": "speech"}
#: ``category`` in the parameters is the index into this tuple.
CATEGORIES = tuple(CATEGORY_FOLDERS)
#: The SNR ranges of the Kaldi VoxCeleb recipe (also used by voxceleb_trainer and WeSpeaker).
DEFAULT_SNR_DB = {"noise": (0.0, 15.0), "music": (5.0, 15.0), "babble": (13.0, 20.0)}


class AdditiveNoise(Augmentation):
    """MUSAN noise, music or babble added at an SNR drawn per utterance.

    ``root`` holds ``noise/``, ``music/`` and ``speech/`` (searched recursively for
    ``extensions``). Each utterance draws a category uniformly among the keys of ``snr_db``
    (a subset of noise, music, babble), then files uniformly from that folder, a random segment of
    each (repeated if short), and an SNR uniformly in the category's range. Babble sums a number of
    speech files drawn in ``babble_speakers`` (inclusive) and sets the SNR of the sum. Files are
    read on the CPU and cached (``ClipBank``); the mixing runs on the batch's device.

    Parameters: ``snr_db``; ``category`` (index into ``CATEGORIES``); ``noise_index`` (B, K)
    indices into the category's sorted file list, -1 past the number of files used;
    ``num_sources`` (1, or the babble speaker count).
    """

    name = "noise"

    def __init__(
        self,
        root: str | Path,
        snr_db: Mapping[str, Sequence[float]] | None = None,
        babble_speakers: Sequence[int] = (3, 7),
        sample_rate: int = 16000,
        extensions: Sequence[str] = AUDIO_EXTENSIONS,
        cache_mb: float | None = 2048,
    ) -> None:
        super().__init__()
        snr_db = DEFAULT_SNR_DB if snr_db is None else snr_db
        if not isinstance(snr_db, Mapping):
            raise ValueError(f"snr_db: expected a mapping category -> [low, high], got {snr_db!r}")
        unknown = sorted(set(snr_db) - set(CATEGORIES))
        if unknown or not snr_db:
            problem = f"unknown categories {unknown}" if unknown else "no category"
            raise ValueError(f"snr_db: {problem}; give [low, high] for some of {', '.join(CATEGORIES)}")
        self.categories = [c for c in CATEGORIES if c in snr_db]
        self.category_codes = torch.tensor([CATEGORIES.index(c) for c in self.categories])
        ranges = [check_range(f"snr_db.{c}", snr_db[c]) for c in self.categories]
        self.snr_low = torch.tensor([lo for lo, _ in ranges])
        self.snr_high = torch.tensor([hi for _, hi in ranges])
        low, high = check_range("babble_speakers", babble_speakers, low=1)
        if int(low) != low or int(high) != high:
            raise ValueError(f"babble_speakers: expected whole numbers, got {babble_speakers!r}")
        self.babble_speakers = (int(low), int(high))
        self.banks = [
            ClipBank(Path(root) / CATEGORY_FOLDERS[c], f"root ({c})", sample_rate, extensions, cache_mb)
            for c in self.categories
        ]

    def param_names(self) -> tuple[str, ...]:
        """All four whatever the categories (``num_sources`` is 1 without babble)."""
        return ("snr_db", "category", "noise_index", "num_sources")

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Augmented:
        check_batch(x, generator)
        batch, length = x.shape
        device = x.device
        which = torch.randint(len(self.categories), (batch,), generator=generator, device=device)
        snr_db = draw_uniform(self.snr_low.to(device)[which], self.snr_high.to(device)[which], batch, generator, device)
        babble = CATEGORIES.index("babble")
        speakers = torch.randint(
            self.babble_speakers[0], self.babble_speakers[1] + 1, (batch,), generator=generator, device=device
        )
        category = self.category_codes.to(device)[which]
        num_sources = torch.where(category == babble, speakers, 1)
        width = self.babble_speakers[1] if "babble" in self.categories else 1
        file_draws = torch.rand(batch, width, generator=generator, device=device, dtype=torch.float64)
        positions = torch.rand(batch, width, generator=generator, device=device, dtype=torch.float64)

        sizes = torch.tensor([len(bank) for bank in self.banks], device=device)[which]
        used = torch.arange(width, device=device) < num_sources[:, None]
        noise_index = torch.where(used, (file_draws * sizes[:, None]).long().clamp(max=sizes[:, None] - 1), -1)
        noise = torch.zeros(batch, length)
        for b, (bank, indices, starts) in enumerate(zip(which.tolist(), noise_index.tolist(), positions.tolist())):
            for index, position in zip(indices, starts):
                if index >= 0:
                    noise[b] += segment(self.banks[bank][index], position, length)

        dtype = working_dtype(x)
        mixed = add_at_snr(x.to(dtype), noise.to(device=device, dtype=dtype), snr_db)
        return Augmented(
            mixed.to(x.dtype),
            {"snr_db": snr_db, "category": category, "noise_index": noise_index, "num_sources": num_sources},
        )
