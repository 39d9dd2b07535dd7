"""The SLS back-end against XLSR-AASIST, XLSR-Conformer-TCM and XLSR-Mamba: forward+backward.

``backends`` (the default): each back-end alone at its published defaults on XLS-R 300M-width
features of a 64,600-sample crop (201 frames x 1024): what AASIST, Conformer-TCM and Mamba read
is one hidden state, ``(B, 201, 1024)``; what SLS reads is all 24 layers, ``(B, 24, 201, 1024)``.
The default batch is 10, one joint dual-path forward of 5 utterances per path (the paper's).
``detectors``: the whole detector on ``(B, 64600)`` audio with a random XLS-R 300M front-end
(``{"preset": "xlsr_300m"}``), so the cost of handing every layer over shows too.

Each model runs in a fresh process (``measure.run_worker``), train mode, weighted cross-entropy
+ backward, median of ``--repeats`` after one warm-up; the peak is memory above the process'
state before the first call (resident set on a CPU, allocated bytes on a GPU).

    python benchmarks/sls_backend.py                                   # CPU, 2 threads, batch 10
    python benchmarks/sls_backend.py --part detectors --batch 1 --models xlsr_aasist xlsr_sls
    python benchmarks/sls_backend.py --part detectors --device cuda --batch 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_worker, time_and_memory

MODELS = ("xlsr_aasist", "xlsr_conformer_tcm", "xlsr_mamba", "xlsr_sls")
SSL_DIM, LAYERS, FRAMES, SAMPLES = 1024, 24, 201, 64600  # XLS-R 300M, the published 4 s crop


def worker(args: argparse.Namespace) -> dict:
    """One model's parameters, time and peak memory, as a JSON-able dict."""
    from dpda.dualpath import WeightedCrossEntropy
    from dpda.dualpath.loss import logits_of
    from dpda.models import build
    from dpda.models.registry import SSL_BACKENDS, SSL_FRONTENDS, _load

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.part == "backends":
        model = _load(SSL_BACKENDS[args.model])(ssl_dim=SSL_DIM)
        shape = (args.batch, LAYERS, FRAMES, SSL_DIM) if args.model in SSL_FRONTENDS else (args.batch, FRAMES, SSL_DIM)
    else:
        model = build({"name": args.model, "ssl": {"preset": "xlsr_300m"}})
        shape = (args.batch, SAMPLES)
    model = model.to(device).train()
    x = 0.1 * torch.randn(shape, device=device)
    labels = torch.arange(args.batch, device=device) % 2
    loss = WeightedCrossEntropy()  # the paper's [0.1, 0.9]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        numerator, denominator = loss(logits_of(model(x)), labels)
        (numerator / denominator).backward()

    result = time_and_memory(step, args.repeats, device)
    return {
        "model": args.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "input": list(shape),
        "input_mb": x.numel() * 4 / 2**20,
        **result,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("backends", "detectors"), default="backends")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    what = "back-ends on XLS-R 300M-width features" if args.part == "backends" else "detectors, random XLS-R 300M"
    print(
        f"# {what}; {args.device}, {args.threads} threads, batch {args.batch}, 201 frames (64,600 samples), "
        f"train mode, fwd+bwd median of {args.repeats}"
    )
    print("| model | parameters (trainable) | input | s fwd+bwd | peak MB |")
    print("|---|---|---|---|---|")
    common = ["--part", args.part, "--device", args.device, "--threads", str(args.threads)]
    common += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
    for name in args.models:
        result = run_worker(__file__, ["--worker", "--model", name, *common])
        shape = " x ".join(map(str, result["input"]))
        print(
            f"| {name} | {result['parameters']:,d} ({result['trainable']:,d}) | {shape} "
            f"({result['input_mb']:.0f} MB) | {result['median_s']:.3f} | {result['peak_mb']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
