"""Parameter counts and forward+backward time of every detector at 4 s of audio.

Raw-audio models with their paper configurations; SSL detectors with a tiny random front-end
(``{"tiny": "wav2vec2"}``: 2 layers, width 32) and the paper's back-end defaults on its
features, so the figure is the back-end's cost plus a negligible front-end. The real XLS-R 300M
belongs on a GPU: ``--ssl-source PATH`` replaces the tiny front-end with a local folder.

    python benchmarks/models.py                  # CPU, 2 threads, batch 1
    python benchmarks/models.py --device cuda --ssl-source /models/xls-r-300m
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from dpda.models import MODEL_NAMES, build


def measure(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    y = torch.arange(len(x), device=x.device) % 2
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        sync()
        start = time.perf_counter()
        F.cross_entropy(model(x)[1], y).backward()
        sync()
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ssl-source", help="a local transformers folder for the SSL detectors")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = 0.1 * torch.randn(args.batch, int(args.seconds * 16000), device=args.device)
    ssl = {"source": args.ssl_source} if args.ssl_source else {"tiny": "wav2vec2"}
    print(
        f"# {args.device}, {args.threads} threads, batch {args.batch} x {args.seconds} s, train mode, "
        f"median of {args.repeats}; SSL front-end: {args.ssl_source or 'tiny random wav2vec2'}"
    )
    for name in args.models:
        config = {"name": name, **({"ssl": ssl} if name.startswith("xlsr_") else {})}
        model = build(config).to(args.device).train()
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        seconds = measure(model, x, args.repeats)
        print(f"{name:20s} {total:>12,d} parameters ({trainable:,d} trainable)  {seconds:8.3f} s fwd+bwd")
    return 0


if __name__ == "__main__":
    sys.exit(main())
