"""Scoring time per 4 s utterance: ONNX Runtime and TorchScript exports against PyTorch eager.

Each detector (a package, run folder or checkpoint; ``benchmarks/serve_load.py`` leaves packages of
LFCC-LCNN and AASIST-L in OUT/packages) is exported with ``dpda.deploy.export`` to both formats, then
the same batch-1 4 s utterance is scored by each runtime in one process, on ``--threads`` threads,
median of ``--repeats`` after two warm-ups; the largest score difference is printed too.

    python benchmarks/export_speed.py /tmp/serve_load/packages/lfcc_lcnn /tmp/serve_load/packages/aasist_l
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import time_and_memory


def median_ms(run: Callable[[], object], repeats: int) -> float:
    return 1000 * time_and_memory(run, repeats, torch.device("cpu"), warmup=2)["median_s"]


def compare(source: Path, audio: np.ndarray, threads: int, repeats: int) -> str:
    """One detector's line: the three runtimes' times and their largest score difference."""
    import onnxruntime

    from dpda.deploy.export import export_detector
    from dpda.dualpath.loss import logits_of
    from dpda.evaluate.evaluation import load_detector
    from dpda.evaluate.scoring import scores_from_logits

    detector = load_detector(source, torch.device("cpu"))
    tensor = torch.from_numpy(audio)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        onnx = export_detector(detector, Path(folder) / "model.onnx", "onnx")
        script = export_detector(detector, Path(folder) / "scripted.pt", "torchscript")
        session = onnxruntime.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        scripted = torch.jit.load(str(script))
        kind = detector.config.eval.score
        runners = {
            "eager": lambda: float(scores_from_logits(logits_of(detector.model(tensor)), kind)[0]),
            "onnx": lambda: float(session.run(None, {"audio": audio})[1][0]),
            "torchscript": lambda: float(scripted(tensor)[1][0]),
        }
        scores = {name: run() for name, run in runners.items()}
        times = {name: median_ms(run, repeats) for name, run in runners.items()}
    difference = max(abs(scores[other] - scores["eager"]) for other in ("onnx", "torchscript"))
    return (
        f"{detector.config.model.get('name')}: eager {times['eager']:.1f} ms, ONNX Runtime {times['onnx']:.1f} ms "
        f"({times['eager'] / times['onnx']:.2f}x eager's speed), TorchScript {times['torchscript']:.1f} ms "
        f"({times['eager'] / times['torchscript']:.2f}x); largest score difference {difference:.1e}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", type=Path, help="packages, run folders or checkpoints")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    audio = np.random.default_rng(0).normal(0, 0.1, (1, 64000)).astype(np.float32)
    print(f"# batch 1 x 4 s, {args.threads} threads, median of {args.repeats}")
    for source in args.sources:
        print(compare(source, audio, args.threads, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
