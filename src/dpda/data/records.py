"""Utterance records: what a protocol says about one trial, independent of its audio."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

BONAFIDE = 1
SPOOF = 0


@dataclass(frozen=True)
class Utterance:
    """One trial of a protocol.

    ``path`` is relative to the dataset root (``None`` when the protocol does not name the file;
    the dataset then looks the id up by the corpus' naming rule). ``label`` is 1 for bona fide and
    0 for spoof. ``attack`` is the attack/system id (``None`` for bona fide or when unknown).
    ``extra`` keeps the further columns of the format (codec, transmission, vocoder, ...).
    """

    utt_id: str
    path: str | None
    label: int
    attack: str | None = None
    speaker: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in (BONAFIDE, SPOOF):
            raise ValueError(f"utterance {self.utt_id!r}: label must be 1 (bona fide) or 0 (spoof), got {self.label!r}")
