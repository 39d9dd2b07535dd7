"""Time per step and peak memory of the dual-path modes against the ordinary augmented step.

Variants, all on the same 2B utterances (B per path), Adam, AASIST-L:
  concat         the ordinary data-augmented step: one loss over 2B, one backward (baseline)
  split          dpda, a forward and a backward per path, PCGrad
  joint          dpda, one forward over [orig; aug], two backward passes, PCGrad (paper-exact)
  joint_batched  as joint, but both path gradients from one vmapped backward (is_grads_batched)
  paper          the paper code's path rebuilt from its description: two backward passes, both
                 gradient sets flattened to full vectors with masks, projected, unflattened

Targets: split <= 1.05x concat time and <= 1.10x peak memory; joint <= 1.8x concat time.
Prints one line per variant; exits non-zero when a target is missed.

    python benchmarks/step.py                    # CPU, fp32
    python benchmarks/step.py --device cuda --precision bf16
    python benchmarks/step.py --model "{name: xlsr_conformer_tcm, ssl: {preset: xlsr_300m}}" \
        --per-path 5 --seconds 4.175 --variants concat split joint      # the paper's real size
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_worker, time_and_memory

from dpda.align import combine_, gram_from_products, make_aligner, pairwise_products
from dpda.dualpath import DualPathStep
from dpda.models import build

VARIANTS = ["concat", "split", "joint", "joint_batched", "paper"]
CLASS_WEIGHTS = (0.1, 0.9)


def make_step(variant: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: str):
    if variant in ("concat", "split", "joint"):
        engine = DualPathStep(
            model, optimizer, "mean" if variant == "concat" else "pcgrad", mode=variant, precision=precision
        )
        return lambda x, x_aug, y: engine(x, x_aug, y)
    params = [p for p in model.parameters() if p.requires_grad]
    weight = torch.tensor(CLASS_WEIGHTS, device=params[0].device)
    autocast = torch.autocast(params[0].device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def path_losses(x, x_aug, y):
        with autocast:
            logits = model(torch.cat([x, x_aug]))[1].float()
        return (
            F.cross_entropy(logits[: len(y)], y, weight=weight),
            F.cross_entropy(logits[len(y) :], y, weight=weight),
        )

    if variant == "joint_batched":
        aligner = make_aligner("pcgrad")

        def batched_step(x, x_aug, y):
            losses = torch.stack(path_losses(x, x_aug, y))
            eye = torch.eye(2, device=losses.device)
            grads = torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True)
            g_o, g_a = [g[0] for g in grads], [g[1] for g in grads]
            w_o, w_a = aligner.weights(gram_from_products(pairwise_products(g_o, g_a))).tolist()[0]
            for p, g in zip(params, combine_(list(g_o), g_a, w_o, w_a)):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return batched_step

    def paper_step(x, x_aug, y):
        flats, masks = [], []
        for loss in path_losses(x, x_aug, y):
            optimizer.zero_grad(set_to_none=True)
            loss.backward(retain_graph=True)
            flats.append(
                torch.cat([(p.grad.clone() if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
            )
            masks.append(
                torch.cat(
                    [(torch.ones_like(p) if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
                )
            )
        combined = paper_pcgrad(flats, masks)
        offset = 0
        for p in params:
            p.grad = combined[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        optimizer.step()

    return paper_step


def paper_pcgrad(flats: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """PCGrad on full flat vectors with has-gradient masks, as the paper code organises it."""
    shared = torch.stack(masks).prod(0).bool()
    projected = copy.deepcopy(flats)
    for g_i in projected:
        for g_j in flats:
            inner = torch.dot(g_i, g_j)
            if inner < 0:
                g_i -= inner * g_j / g_j.norm() ** 2
    merged = torch.zeros_like(flats[0])
    merged[shared] = torch.stack([g[shared] for g in projected]).mean(dim=0)
    merged[~shared] = torch.stack([g[~shared] for g in projected]).sum(dim=0)
    return merged


def worker(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build(yaml.safe_load(args.model)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6, weight_decay=1e-4)
    x = 0.1 * torch.randn(args.per_path, int(args.seconds * 16000), device=device)
    x_aug = x + 0.01 * torch.randn_like(x)
    y = torch.arange(args.per_path, device=device) % 2
    step = make_step(args.worker, model, optimizer, args.precision)
    result = time_and_memory(lambda: step(x, x_aug, y), args.repeats, device)
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--per-path", type=int, default=4, help="utterances per path (B)")
    parser.add_argument("--seconds", type=float, default=2.0, help="utterance length")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--model", default="{name: aasist_l}", help="the model config, in YAML")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    common = [
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--per-path",
        str(args.per_path),
        "--seconds",
        str(args.seconds),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--model",
        args.model,
    ]
    variants = ["concat", *(v for v in args.variants if v != "concat")]
    model = yaml.safe_load(args.model)
    trainable = sum(p.numel() for p in build(model).parameters() if p.requires_grad)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(
        f"# {device_name}, {args.precision}, {args.per_path} utterances per path x {args.seconds} s, "
        f"{model['name']} ({trainable:,} trainable parameters), median of {args.repeats}"
    )
    results = {v: run_worker(__file__, [*common, "--worker", v]) for v in variants}
    base = results["concat"]
    targets = {"split": (1.05, 1.10), "joint": (1.8, None)}
    failed = False
    for variant, r in results.items():
        time_ratio, memory_ratio = r["median_s"] / base["median_s"], r["peak_mb"] / base["peak_mb"]
        verdict = ""
        if variant in targets:
            max_time, max_memory = targets[variant]
            ok = time_ratio <= max_time and (max_memory is None or memory_ratio <= max_memory)
            failed |= not ok
            verdict = (
                ("PASS" if ok else "FAIL")
                + f" (target time <= {max_time}x"
                + (f", memory <= {max_memory}x)" if max_memory else ")")
            )
        print(
            f"{variant:14s} {r['median_s']:8.3f} s/step  {time_ratio:5.2f}x time  "
            f"{r['peak_mb']:8.1f} MiB peak  {memory_ratio:5.2f}x memory  {verdict}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
