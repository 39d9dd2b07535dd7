"""Tiny real runs for tests: one-second FLAC utterances in ASVspoof 2019 protocols, and the
config of a small experiment on them with the tests' ``TinyDetector``."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

TESTS = Path(__file__).resolve().parent
RATE = 16000


def write_split(root: Path, split: str, count: int, seed: int) -> Path:
    """``count`` one-second utterances: bona fide = a harmonic tone in noise, spoof = noise only."""
    rng = np.random.default_rng(seed)
    lines = []
    (root / "flac").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        bonafide = index % 2 == 0
        t = np.arange(RATE) / RATE
        audio = rng.normal(0, 0.05, RATE)
        if bonafide:
            audio += 0.2 * np.sin(2 * np.pi * rng.uniform(100, 200) * t)
        utt = f"{split.upper()}_{index:04d}"
        sf.write(str(root / "flac" / f"{utt}.flac"), audio.astype(np.float32), RATE)
        lines.append(f"SPK{index % 3} {utt} - {'-' if bonafide else 'A01'} {'bonafide' if bonafide else 'spoof'}\n")
    protocol = root / f"{split}.txt"
    protocol.write_text("".join(lines))
    return protocol


def write_corpus(root: Path) -> Path:
    """Train (24), dev (8) and eval (10) splits of one-second utterances under ``root``."""
    for split, count, seed in (("train", 24, 0), ("dev", 8, 1), ("eval", 10, 2)):
        write_split(root, split, count, seed)
    return root


def experiment(corpus: Path, out: Path, **train: object) -> dict:
    dataset = {"kind": "asvspoof2019", "root": str(corpus)}
    return {
        "name": "tiny",
        "seed": 3,
        "output_dir": str(out),
        "data": {
            "train": {**dataset, "protocol": str(corpus / "train.txt")},
            "dev": {**dataset, "protocol": str(corpus / "dev.txt")},
            "crop_length": 8000,
            "workers": 0,
        },
        "model": {"name": "custom", "class": "models:TinyDetector"},
        "augment": {
            "chain": None,
            "inline": {"sample_rate": RATE, "stages": [{"name": "gain", "p": 0.5, "gain_db": [-6.0, 6.0]}]},
        },
        "dualpath": {"aligner": "gradvac"},
        "optim": {"lr": 0.01},
        "train": {"batch_size": 4, "epochs": 3, "n_best": 2, "patience": None, **train},
        "logging": {"progress": False},
        "eval": {"sets": [{**dataset, "protocol": str(corpus / "eval.txt"), "name": "heldout"}]},
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
    }


def train_lfcc(corpus: Path, out: Path) -> Path:
    """A really trained LFCC-LCNN run on ``corpus`` (one epoch, dev-calibrated, eval set scored):
    the registry model the deployment tests package, score and serve."""
    from dpda.config import load_config
    from dpda.train import train

    config = experiment(corpus, out, epochs=1)
    config["model"] = {"name": "lfcc_lcnn"}
    train(load_config(write_config(out / "c.yaml", config)))
    return out / "tiny"


@contextmanager
def served(app: Any, timeout: float = 30.0) -> Iterator[str]:
    """The base URL of ``app`` served by uvicorn in a thread, on a socket bound before it starts."""
    import uvicorn

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listening.close()
