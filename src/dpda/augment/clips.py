"""Folders of audio clips (noise, music, speech, impulse responses), decoded once and cached."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from dpda.data.audio import load_audio

AUDIO_EXTENSIONS = (".wav", ".flac")


class ClipBank:
    """The audio files under a folder (recursively, sorted by path), decoded on first use.

    Clips are mono float32 at ``sample_rate`` (``dpda.data.audio.load_audio``) and stay in memory
    on the CPU, least recently used first out once they take more than ``cache_mb`` (``None``:
    keep all; MUSAN at 16 kHz is about 25 GB as float32, a few thousand RIRs far less).
    An index into ``files`` identifies a clip in the augmentation parameters.
    """

    def __init__(
        self,
        folder: str | Path,
        key: str,
        sample_rate: int,
        extensions: Sequence[str] = AUDIO_EXTENSIONS,
        cache_mb: float | None = 2048,
    ) -> None:
        folder = Path(folder)
        suffixes = tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions)
        if not folder.is_dir():
            raise ValueError(f"{key}: folder {folder} does not exist")
        self.files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not self.files:
            raise ValueError(f"{key}: no {', '.join(suffixes)} files under {folder}")
        if cache_mb is not None and cache_mb < 0:
            raise ValueError(f"cache_mb: must be non-negative or None, got {cache_mb}")
        self.sample_rate = sample_rate
        self.cache_bytes = None if cache_mb is None else cache_mb * 2**20
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        clip = self._cache.get(index)
        if clip is not None:
            self._cache.move_to_end(index)
            return clip
        clip = torch.from_numpy(load_audio(self.files[index], self.sample_rate))
        if clip.numel() == 0:
            raise ValueError(f"{self.files[index]}: the file has no samples")
        self._cache[index] = clip
        self._cached_bytes += clip.numel() * clip.element_size()
        while self.cache_bytes is not None and self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= dropped.numel() * dropped.element_size()
        return clip


def segment(clip: Tensor, position: float, length: int) -> Tensor:
    """``length`` samples of ``clip`` from a start at ``position`` in [0, 1) of the possible starts.

    A clip shorter than ``length`` repeats (from a random point of its cycle).
    """
    starts = clip.numel() - length + 1 if clip.numel() >= length else clip.numel()
    start = min(int(position * starts), starts - 1)
    return clip[(start + torch.arange(length)) % clip.numel()]
