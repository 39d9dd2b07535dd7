"""The corpus plan: every utterance decided from the seed before any audio is made.

Drawing everything up front (which recordings and segments, texts, voices, speaking rates,
channels, ids) makes a build deterministic and resumable: rendering an item depends on the
item alone, so an interrupted build re-renders only what is missing and gets the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from dpda.corpus.generators import GENERATORS, Generator, draw_params
from dpda.corpus.signal import segment_at_pauses
from dpda.corpus.sources import SOURCES, Recording, Source, script_texts

SPLITS = ("train", "dev", "eval")
SPLIT_LETTERS = {"train": "T", "dev": "D", "eval": "E"}
MIN_SECONDS, MAX_SECONDS = 1.0, 6.0
#: (bona fide utterances, utterances per attack) of each split; eval holds attacks A05-A08 only.
SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "tiny": {"train": (8, 3), "dev": (4, 2), "eval": (6, 2)},
    "small": {"train": (80, 30), "dev": (40, 15), "eval": (40, 30)},
    "default": {"train": (300, 90), "dev": (150, 45), "eval": (100, 90)},
}
#: Share of each class, per split, that goes through an 8 kHz channel (at least; more when a
#: class has more native 8 kHz audio), and the share of those that also get G.711.
NARROWBAND_SHARE = 0.25
TELEPHONE_SHARE = 1 / 3
DEV_SHARE = 1 / 3
TEXT_WORDS = (3, 20)


@dataclass(frozen=True)
class Segment:
    path: str
    start: int  # samples at the file's own rate
    end: int
    rate: int


@dataclass
class Item:
    """One utterance to render; ``seed`` drives whatever randomness its generator has."""

    utt_id: str
    split: str
    label: str  # "bonafide" or "spoof"
    attack: str  # attack id, "-" for bona fide
    speaker: str
    source: str  # bona fide source or generator name
    language: str
    channel: str = "wideband"
    text: str | None = None
    voice: str | None = None
    segment: Segment | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def narrowband_native(self) -> bool:
        return self.segment is not None and self.segment.rate <= 8000


def item_from_dict(data: dict[str, Any]) -> Item:
    segment = data.get("segment")
    return Item(**{**data, "segment": Segment(**segment) if segment else None})


def item_to_dict(item: Item) -> dict[str, Any]:
    return asdict(item)


def _split_recordings(sources: Sequence[Source], share: Path, rng: np.random.Generator) -> dict[str, list[Recording]]:
    """Train-side recordings shuffled and dealt to train and dev; eval-side ones to eval."""
    split: dict[str, list[Recording]] = {name: [] for name in SPLITS}
    for source in sources:
        recordings = source.list_recordings(share)
        order = rng.permutation(len(recordings))
        if source.side == "eval":
            split["eval"] += [recordings[i] for i in order]
        else:
            cut = round(len(order) * DEV_SHARE)
            split["dev"] += [recordings[i] for i in order[:cut]]
            split["train"] += [recordings[i] for i in order[cut:]]
    return split


def _segments(
    recordings: list[Recording], needed: int, rng: np.random.Generator
) -> Iterator[tuple[Recording, Segment]]:
    """Up to ``needed`` 1-6 s segments cut at pauses, from recordings taken in random order
    (only as many files are read as the count needs)."""
    produced = 0
    for index in rng.permutation(len(recordings)):
        recording = recordings[index]
        audio, rate = sf.read(str(recording.path), dtype="float64", always_2d=True)
        for start, end in segment_at_pauses(audio.mean(axis=1), rate, MIN_SECONDS, MAX_SECONDS):
            yield recording, Segment(str(recording.path), start, end, rate)
            produced += 1
            if produced == needed:
                return


def _texts(share: Path, language: str) -> list[str]:
    low, high = TEXT_WORDS
    return [t for t in script_texts(share, language) if low <= len(t.split()) <= high]


def make_plan(
    size: str, seed: int, share: Path, sources: Sequence[Source] = SOURCES, generators: Sequence[Generator] = GENERATORS
) -> list[Item]:
    """Every item of a corpus of ``size`` (a key of ``SIZES``) drawn with ``seed``."""
    if size not in SIZES:
        raise ValueError(f"unknown corpus size {size!r}; valid: {', '.join(SIZES)}")
    rng = np.random.default_rng(seed)
    recordings = _split_recordings(sources, share, rng)
    texts = {language: _texts(share, language) for language in ("en", "nl")}
    items: list[Item] = []
    for split in SPLITS:
        side = "eval" if split == "eval" else "train"
        bonafide_count, per_attack = SIZES[size][split]
        attacks = [g for g in generators if g.side == side]
        vocoders = [g for g in attacks if g.kind == "vocoder"]
        pool = list(_segments(recordings[split], bonafide_count + per_attack * len(vocoders), rng))
        if not pool:
            raise ValueError(f"{split}: no bona fide recordings found (are the source packages installed?)")
        split_items = [
            Item("", split, "bonafide", "-", r.speaker, r.source, r.language, text=r.text, segment=s)
            for r, s in pool[:bonafide_count]
        ]
        for generator in attacks:
            for _ in range(per_attack):
                if generator.kind == "vocoder":  # resynthesise a bona fide segment of this split
                    recording, segment = pool[int(rng.integers(len(pool)))]
                    split_items.append(
                        Item(
                            "",
                            split,
                            "spoof",
                            generator.attack,
                            recording.speaker,
                            generator.name,
                            recording.language,
                            text=recording.text,
                            segment=segment,
                            params=draw_params(generator, rng),
                        )
                    )
                else:
                    voice, language = generator.voices[int(rng.integers(len(generator.voices)))]
                    text = texts[language][int(rng.integers(len(texts[language])))]
                    split_items.append(
                        Item(
                            "",
                            split,
                            "spoof",
                            generator.attack,
                            f"{generator.name}_{voice}",
                            generator.name,
                            language,
                            text=text,
                            voice=voice,
                            params=draw_params(generator, rng),
                        )
                    )
        _assign_channels(split_items, rng)
        for number, index in enumerate(rng.permutation(len(split_items)), start=1):
            split_items[index].utt_id = f"DPDA_{SPLIT_LETTERS[split]}_{number:05d}"
        items += sorted(split_items, key=lambda item: item.utt_id)
    return items


def _assign_channels(items: list[Item], rng: np.random.Generator) -> None:
    """The same share of 8 kHz and telephone audio in both classes of a split: native 8 kHz
    recordings (and their resyntheses) count, and wideband items are band-limited at random
    until each class reaches the larger of the two native shares (at least ``NARROWBAND_SHARE``)."""
    classes = [[item for item in items if item.label == label] for label in ("bonafide", "spoof")]
    share = max(
        [NARROWBAND_SHARE] + [sum(i.narrowband_native for i in group) / len(group) for group in classes if group]
    )
    for group in classes:
        wideband = [item for item in group if not item.narrowband_native]
        extra = max(0, round(share * len(group)) - (len(group) - len(wideband)))
        for index in rng.permutation(len(wideband))[:extra]:
            wideband[index].channel = "narrowband"
        for item in group:
            if item.narrowband_native:
                item.channel = "narrowband"
        narrow = [item for item in group if item.channel == "narrowband"]
        for index in rng.permutation(len(narrow))[: round(TELEPHONE_SHARE * len(narrow))]:
            narrow[index].channel = "telephone"
