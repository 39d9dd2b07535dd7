"""``dpda corpus build``: plan, render in parallel, write protocols, check shortcuts, seal.

The folder is complete exactly when ``corpus.json`` exists: it is written last, atomically.
Until then ``plan.json`` (written first) fixes every utterance, each FLAC appears by an atomic
rename, and a re-run renders only the files that are missing, so an interrupted build is never
mistaken for a complete one and finishes with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from dpda import __version__
from dpda.atomic import atomic_path, remove_orphans, write_text_atomic
from dpda.corpus.generators import GENERATORS
from dpda.corpus.packages import apt_version, ensure_packages, pip_version
from dpda.corpus.plan import (
    SIZES,
    SPLITS,
    Item,
    item_from_dict,
    item_to_dict,
    make_plan,
)
from dpda.corpus.render import render
from dpda.corpus.shortcut import MIN_EER, features, shortcut_check
from dpda.corpus.signal import SAMPLE_RATE
from dpda.corpus.sources import SHARE, SOURCES
from dpda.errors import DpdaError

FORMAT = 1
AUDIO_TEMPLATE = "flac/{utt_id}.flac"


class CorpusError(DpdaError, RuntimeError):
    """A corpus folder that cannot be built into as asked (another seed or size, foreign files)."""


def _render_file(item: Item, folder: Path) -> str:
    audio = render(item)
    with atomic_path(folder / AUDIO_TEMPLATE.format(utt_id=item.utt_id), fsync=False) as temporary:
        sf.write(str(temporary), audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return item.utt_id


def _settings(size: str, seed: int) -> dict[str, Any]:
    return {"format": FORMAT, "size": size, "seed": seed}


def _load_plan(folder: Path, settings: dict[str, Any], share: Path) -> list[Item]:
    """The folder's plan when it was started with the same settings, else a new one."""
    path = folder / "plan.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings") != settings:
            raise CorpusError(
                f"{folder} holds an unfinished build with {stored.get('settings')}, not {settings}: "
                "re-run with those settings to finish it, or choose another --out"
            )
        return [item_from_dict(entry) for entry in stored["items"]]
    items = make_plan(settings["size"], settings["seed"], share)
    write_text_atomic(path, json.dumps({"settings": settings, "items": [item_to_dict(i) for i in items]}, indent=1))
    return items


def _render_missing(items: list[Item], folder: Path, workers: int, progress: bool) -> None:
    (folder / "flac").mkdir(exist_ok=True)
    remove_orphans(folder)  # a killed renderer's temporaries (another live build's stay)
    todo = [i for i in items if not (folder / AUDIO_TEMPLATE.format(utt_id=i.utt_id)).exists()]
    if not todo:
        return
    bar = tqdm(total=len(todo), desc="rendering utterances", unit="utt", disable=not progress)
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_render_file, item, folder) for item in todo]
        try:
            for future in as_completed(futures):
                future.result()
                bar.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            bar.close()


def _protocol_lines(items: list[Item], split: str) -> str:
    return "".join(f"{i.speaker} {i.utt_id} - {i.attack} {i.label}\n" for i in items if i.split == split)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _describe(items: list[Item], durations: dict[str, float]) -> dict[str, Any]:
    """Counts per split, attack and channel, and total durations."""
    splits = {}
    for split in SPLITS:
        chosen = [i for i in items if i.split == split]
        splits[split] = {
            "utterances": len(chosen),
            "bonafide": sum(i.label == "bonafide" for i in chosen),
            "spoof": sum(i.label == "spoof" for i in chosen),
            "attacks": dict(sorted(Counter(i.attack for i in chosen if i.label == "spoof").items())),
            "channels": {
                label: dict(sorted(Counter(i.channel for i in chosen if i.label == label).items()))
                for label in ("bonafide", "spoof")
            },
            "speakers": len({i.speaker for i in chosen}),
            "seconds": round(sum(durations[i.utt_id] for i in chosen), 2),
        }
    return splits


def _provenance(items: list[Item]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    used = Counter(i.source for i in items if i.label == "bonafide")
    sources = [
        {
            "name": s.name,
            "package": s.package,
            "version": apt_version(s.package),
            "licence": s.licence,
            "description": s.description,
            "side": s.side,
            "bonafide_utterances": used[s.name],
        }
        for s in SOURCES
    ]
    generators = []
    for g in GENERATORS:
        versions = {p: apt_version(p) for p in g.apt} | {p: pip_version(p) for p in g.pip}
        generators.append(
            {
                "attack": g.attack,
                "system": g.name,
                "family": g.family,
                "splits": ["eval"] if g.side == "eval" else ["train", "dev"],
                "voices": [v for v, _ in g.voices],
                "versions": versions,
            }
        )
    return sources, generators


def build_corpus(
    out: str | Path,
    *,
    size: str = "default",
    seed: int = 0,
    workers: int | None = None,
    install: bool = True,
    progress: bool = True,
    share: Path = SHARE,
) -> dict[str, Any]:
    """Build (or finish, or find complete) the built-in corpus in ``out``; returns ``corpus.json``."""
    if size not in SIZES:
        raise CorpusError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    folder = Path(out)
    settings = _settings(size, seed)
    manifest_path = folder / "corpus.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if {key: manifest.get(key) for key in settings} != settings:
            raise CorpusError(
                f"{folder} already holds a complete corpus with "
                f"{ {key: manifest.get(key) for key in settings} }; choose another --out"
            )
        if progress:
            print(summary(manifest) + f"\nalready complete: {folder}")
        return manifest
    if folder.exists() and any(folder.iterdir()) and not (folder / "plan.json").exists():
        raise CorpusError(f"{folder} is not empty and holds no corpus build; choose an empty or new folder")
    ensure_packages(install)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    items = _load_plan(folder, settings, share)
    _render_missing(items, folder, workers or os.cpu_count() or 1, progress)

    protocols = folder / "protocols"
    protocols.mkdir(exist_ok=True)
    for split in SPLITS:
        write_text_atomic(protocols / f"{split}.txt", _protocol_lines(items, split))
    durations, feature_rows, files = {}, {}, {}
    for item in tqdm(items, desc="checking", unit="utt", disable=not progress):
        path = folder / AUDIO_TEMPLATE.format(utt_id=item.utt_id)
        audio, _ = sf.read(str(path), dtype="int16")
        durations[item.utt_id] = len(audio) / SAMPLE_RATE
        feature_rows[item.utt_id] = features(audio)
        files[path.relative_to(folder).as_posix()] = _sha256(path)
    for split in SPLITS:
        files[f"protocols/{split}.txt"] = _sha256(protocols / f"{split}.txt")

    def split_features(split: str) -> tuple[np.ndarray, np.ndarray]:
        chosen = [i for i in items if i.split == split]
        return (
            np.stack([feature_rows[i.utt_id] for i in chosen]),
            np.array([int(i.label == "bonafide") for i in chosen]),
        )

    shortcut = shortcut_check(split_features("train"), [(s, *split_features(s)) for s in ("dev", "eval")])
    eer_eval = shortcut["eer_eval"]
    assert isinstance(eer_eval, float)  # shortcut_check rounds every EER to a float
    shortcut["passed"] = eer_eval >= MIN_EER
    sources, generators = _provenance(items)
    manifest = {
        **settings,
        "name": "dpda built-in speech deepfake corpus",
        "dpda_version": __version__,
        "layout": {
            "protocols": "protocols/{train,dev,eval}.txt (ASVspoof 2019 CM format: speaker, utterance id, "
            "-, attack id or -, bonafide/spoof)",
            "audio": AUDIO_TEMPLATE + " (16 kHz mono, 16-bit FLAC)",
            "plan": "plan.json",
        },
        "splits": _describe(items, durations),
        "sources": sources,
        "generators": generators,
        "shortcut_check": shortcut,
        "files": dict(sorted(files.items())),
    }
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1))
    manifest_summary = summary(manifest)
    if progress:
        print(manifest_summary + f"\nbuilt in {time.monotonic() - started:.0f} s: {folder}")
    return manifest


def summary(manifest: dict[str, Any]) -> str:
    """A few lines on a built corpus: counts, hours, attacks and the shortcut check."""
    lines = [f"dpda built-in corpus (size {manifest['size']}, seed {manifest['seed']})"]
    for split, info in manifest["splits"].items():
        attacks = " ".join(f"{a}:{n}" for a, n in info["attacks"].items())
        lines.append(
            f"  {split:5s} {info['utterances']:5d} utts ({info['bonafide']} bona fide, {info['spoof']} "
            f"spoof: {attacks}), {info['seconds'] / 60:.1f} min, {info['speakers']} speakers"
        )
    check = manifest["shortcut_check"]
    verdict = "near chance, ok" if check["passed"] else "TOO LOW: the classes differ in trivial statistics"
    lines.append(
        f"  shortcut check (logistic regression on {', '.join(check['features'])}, fitted on train): "
        f"EER on eval {check['eer_eval']:.1%} ({verdict}; needs >= {MIN_EER:.0%}), on dev "
        f"{check['eer_dev']:.1%} (attacks seen in training)"
    )
    return "\n".join(lines)
