"""Peak memory of the n-best average against the size of one weight set.

Variants, each in a fresh process, on the same n checkpoints of one model (random weights, each
a little perturbed):
  dpda      ``dpda.checkpoint.average_weights``: the files read tensor by tensor
  load_all  every checkpoint loaded whole, then averaged (what a script does with a list of
            state dicts)

Target (issue 15): the average holds at most two weight sets, whatever n. Peak memory is the
resident set above the state before the call: anonymous memory plus the pages of the files that
the memory map touched (the kernel may drop those, but they count here).

    python benchmarks/average.py                                   # XLSR-Conformer-TCM, xlsr_300m, n=5
    python benchmarks/average.py --model "{name: aasist_l}" --n 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from measure import current_rss_mb, peak_rss_mb, run_worker

from dpda.checkpoint import average_weights, load_weights, save_weights
from dpda.models import build

VARIANTS = ["dpda", "load_all"]


def worker(variant: str, paths: list[Path]) -> None:
    base, start = current_rss_mb(), time.perf_counter()
    if variant == "dpda":
        average = average_weights(paths)
    else:
        loaded = [load_weights(path)[0] for path in paths]
        average = {key: torch.stack([state[key].double() for state in loaded]).mean(0).float() for key in loaded[0]}
    seconds = time.perf_counter() - start
    size = sum(t.nbytes for t in average.values()) / 2**20
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb() - base, "weights_mb": size}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="{name: xlsr_conformer_tcm, ssl: {preset: xlsr_300m}}", help="YAML")
    parser.add_argument("--n", type=int, default=5, help="checkpoints averaged")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.paths)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        state = build(yaml.safe_load(args.model)).state_dict()
        paths = []
        for index in range(args.n):
            path = Path(folder) / f"epoch-{index:03d}.safetensors"
            perturbed = {k: v + 1e-3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
            save_weights(path, perturbed, {"epoch": index})
            paths.append(path)
        del state, perturbed
        results = {v: run_worker(__file__, ["--worker", v, *map(str, paths)]) for v in VARIANTS}
    weights = results["dpda"]["weights_mb"]
    print(f"# {yaml.safe_load(args.model)['name']}, {args.n} checkpoints of {weights:.0f} MiB each")
    for variant, r in results.items():
        sets = r["peak_mb"] / weights
        print(f"{variant:9s} {r['seconds']:7.2f} s  {r['peak_mb']:8.0f} MiB peak  {sets:5.2f} weight sets")
    return 0 if results["dpda"]["peak_mb"] <= 2 * weights else 1


if __name__ == "__main__":
    sys.exit(main())
