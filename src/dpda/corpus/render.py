"""Rendering one planned item into its 16 kHz, 16-bit utterance."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from dpda.corpus.generators import SYNTHESISE
from dpda.corpus.plan import MAX_SECONDS, Item
from dpda.corpus.signal import finish


def render(item: Item) -> np.ndarray:
    """The item's audio (int16 at 16 kHz) after the common signal path; errors name the item."""
    try:
        if item.segment is not None:
            segment = item.segment
            audio, rate = sf.read(segment.path, start=segment.start, stop=segment.end, dtype="float64", always_2d=True)
            audio = audio.mean(axis=1)
            if item.label == "spoof":
                audio, rate = SYNTHESISE[item.source](audio, rate, item.params)
        else:
            audio, rate = SYNTHESISE[item.source](item.text, item.voice, item.params)
        return finish(audio, rate, item.channel, MAX_SECONDS)
    except Exception as error:
        raise RuntimeError(f"{item.utt_id} ({item.source}, {item.attack}): {error}") from error
