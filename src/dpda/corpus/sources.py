"""Bona fide speech: real human recordings shipped in Debian packages.

Each source knows its package, licence, language and how to list its recordings with speaker
and, where the package has one, transcript. Only original recordings are listed (codec2's
codec outputs and ALSA's noise test are left out). Every source is assigned wholly to one side
of the corpus (train/dev or eval), so that eval speakers and recording set-ups are unseen.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SHARE = Path("/usr/share")


@dataclass(frozen=True)
class Recording:
    """One audio file of a source; ``text`` is its transcript when the package has one."""

    path: Path
    source: str
    speaker: str
    language: str
    text: str | None = None


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    licence: str
    description: str
    side: str  # "train" (train and dev) or "eval"
    list_recordings: Callable[[Path], list[Recording]]


def _asterisk(share: Path) -> list[Recording]:
    folder = share / "asterisk/sounds/en_US_f_Allison"
    if not folder.is_dir():
        folder = share / "asterisk/sounds/en"
    return [
        Recording(path, "asterisk", "allison", "en")
        for path in sorted(folder.rglob("*.wav"))
        if "silence" not in path.parts
    ]


_DIALOG = re.compile(
    r'dialogId\("([^"]+)",\s*"([^"]*)",\s*"((?:[^"\\]|\\.)*)"\)(?:\s*dialogStr\("((?:[^"\\]|\\.)*)"\))?'
)


def _fillets(language: str) -> Callable[[Path], list[Recording]]:
    """Fish Fillets NG voice acting: ``sound/<level>/<lang>/<dialog id>.ogg``; the dialog scripts
    give the character (its font: ``font_big``, ``font_small``, ...) and the line's text."""

    def recordings(share: Path) -> list[Recording]:
        root = share / "games/fillets-ng"
        found = []
        for folder in sorted((root / "sound").glob(f"*/{language}")):
            level = folder.parent.name
            script = root / "script" / level / f"dialogs_{language}.lua"
            lines: dict[str, tuple[str, str]] = {}
            if script.is_file():
                for dialog, font, english, translated in _DIALOG.findall(script.read_text(errors="replace")):
                    lines[dialog] = (font.removeprefix("font_") or "narrator", translated or english)
            for path in sorted(folder.glob("*.ogg")):
                character, text = lines.get(path.stem, ("", ""))
                if text.strip():  # the rest are grunts and sound effects
                    found.append(
                        Recording(path, f"fillets_{language}", f"fillets_{language}_{character}", language, text)
                    )
        return found

    return recordings


#: codec2's original (uncoded) recordings, one speaker each; the rest of the folder is coded speech.
CODEC2_ORIGINALS = (
    "hts1a",
    "hts2a",
    "mmt1",
    "morig",
    "forig",
    "big_dog",
    "cross",
    "ve9qrp",
    "vk5qi",
    "david4",
    "vk2tpm_004",
)


def script_texts(share: Path, language: str) -> list[str]:
    """Every dialog line of Fish Fillets NG in ``language`` (``en`` or ``nl``): the sentences the
    synthesisers speak, so that spoofed and bona fide speech share their texts."""
    texts = []
    for script in sorted((share / "games/fillets-ng/script").glob(f"*/dialogs_{language}.lua")):
        for _, _, english, translated in _DIALOG.findall(script.read_text(errors="replace")):
            text = (translated if language != "en" else english) or english
            texts.append(text.replace('\\"', '"'))
    return texts


def _codec2(share: Path) -> list[Recording]:
    folder = share / "codec2/wav"
    return [
        Recording(folder / f"{name}.wav", "codec2", f"codec2_{name}", "en")
        for name in CODEC2_ORIGINALS
        if (folder / f"{name}.wav").is_file()
    ]


def _pocketsphinx(share: Path) -> list[Recording]:
    folder = share / "pocketsphinx/test/data"
    texts = {}
    transcription = folder / "librivox/transcription"
    if transcription.is_file():
        for line in transcription.read_text().splitlines():
            match = re.fullmatch(r"<s>\s*(.*?)\s*</s>\s*\((\S+)\)", line.strip())
            if match:
                texts[match.group(2)] = match.group(1)
    found = [
        Recording(path, "pocketsphinx", "pocketsphinx_librivox", "en", texts.get(path.stem))
        for path in sorted((folder / "librivox").glob("*.wav"))
    ]
    found += [
        Recording(path, "pocketsphinx", "pocketsphinx_cards", "en") for path in sorted((folder / "cards").glob("*.wav"))
    ]
    return found


def _alsa(share: Path) -> list[Recording]:
    return [
        Recording(path, "alsa", "alsa_prompts", "en")
        for path in sorted((share / "sounds/alsa").glob("*.wav"))
        if path.stem != "Noise"
    ]


SOURCES = (
    Source(
        "asterisk",
        "asterisk-core-sounds-en-wav",
        "CC-BY-SA-3.0",
        "Asterisk IVR prompts read by Allison Smith (studio, 8 kHz)",
        "train",
        _asterisk,
    ),
    Source(
        "fillets_nl",
        "fillets-ng-data-nl",
        "GPL-2+",
        "Fish Fillets NG Dutch voice acting (several actors, 22.05 kHz)",
        "train",
        _fillets("nl"),
    ),
    Source(
        "fillets_en",
        "fillets-ng-data",
        "GPL-2+",
        "Fish Fillets NG English voice acting (22.05 kHz)",
        "eval",
        _fillets("en"),
    ),
    Source(
        "codec2",
        "codec2-examples",
        "LGPL-2.1",
        "codec2's original speech samples (several speakers, 8 kHz)",
        "eval",
        _codec2,
    ),
    Source(
        "pocketsphinx",
        "pocketsphinx-testdata",
        "BSD-2-Clause (LibriVox excerpts: public domain)",
        "PocketSphinx test recordings: LibriVox read speech and command words (16 kHz)",
        "eval",
        _pocketsphinx,
    ),
    Source("alsa", "alsa-utils", "GPL-2+", "ALSA speaker-test channel prompts (48 kHz)", "eval", _alsa),
)
