"""Time and memory of ``dpda fuse`` on 611,829 trials (the size of ASVspoof 2021 DF eval), 3 systems.

Dev and eval both have 611,829 trials (10 % bona fide, two attacks; each system catches one attack
better than the other), so the fit is at its largest. Each variant runs in a fresh process
(``measure.run_worker``), median of 3 after one warm-up, peak RSS above the process' state before
the first call:

- ``read``: the six score files through ``read_systems`` (``read_scores`` + the trial checks), the
  baseline the others are set against;
- ``keys``: the two keys through ``read_dataset`` (``read_protocol``, no audio check);
- ``fit``: ``fit_fusion`` on the dev matrix in memory;
- ``apply``: the fusion applied to the eval matrix and the score file written;
- ``fuse``: the whole command's work (``dpda.evaluate.fusion.fuse``): both keys and six score files
  read and checked, the fit, the metrics, the score file and its JSON.

    python benchmarks/fusion_time.py --out /tmp/fusion_bench
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from measure import run_worker, time_and_memory

from dpda.atomic import write_text_atomic
from dpda.config import DataSet
from dpda.data.sets import read_dataset
from dpda.evaluate.fusion import fit_fusion, fuse, labelled, read_systems
from dpda.evaluate.scoring import read_scores

N_TRIALS = 611_829
SYSTEMS = 3


def make_files(folder: Path) -> None:
    """Keys (ASVspoof 2019 form) and score files of dev and eval, once."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, seed in (("dev", 0), ("eval", 1)):
        if (folder / f"sys{SYSTEMS - 1}_{part}.txt").exists():
            continue
        rng = np.random.default_rng(seed)
        n_bonafide = N_TRIALS // 10
        labels = np.r_[np.ones(n_bonafide, int), np.zeros(N_TRIALS - n_bonafide, int)]
        attack = rng.integers(0, 2, N_TRIALS)  # A01 or A02 for the spoofs
        ids = [f"{part.upper()}_{i:07d}" for i in rng.permutation(N_TRIALS)]
        key = "".join(
            f"LA_0001 {utt} - {'-' if y else f'A0{a + 1}'} {'bonafide' if y else 'spoof'}\n"
            for utt, y, a in zip(ids, labels, attack)
        )
        (folder / f"{part}_key.txt").write_text(key)
        for system in range(SYSTEMS):
            catches = attack == system % 2
            mean = np.where(labels == 1, 1.5, np.where(catches, -2.5, 0.5))
            scores = rng.normal(mean, 1.0 + 0.3 * system) * (system + 1)
            (folder / f"sys{system}_{part}.txt").write_text(
                "".join(f"{utt} {value:.6f}\n" for utt, value in zip(ids, scores))
            )


def files(folder: Path, part: str) -> list[Path]:
    return [folder / f"sys{system}_{part}.txt" for system in range(SYSTEMS)]


def worker(variant: str, folder: Path) -> dict:
    """One variant's timing; only what it needs is loaded before ``time_and_memory`` starts."""
    cpu = torch.device("cpu")
    dev_key = DataSet("asvspoof2019", str(folder / "dev_key.txt"))
    out = folder / "fused_eval.txt"
    if variant == "read":
        return time_and_memory(lambda: [read_systems(files(folder, p), p) for p in ("dev", "eval")], 3, cpu)
    if variant == "keys":
        keys = (dev_key, DataSet("asvspoof2019", str(folder / "eval_key.txt")))
        return time_and_memory(lambda: [read_dataset(k, "key", check="off", progress=False) for k in keys], 3, cpu)
    if variant == "fuse":
        eval_key = DataSet("asvspoof2019", str(folder / "eval_key.txt"))
        result = time_and_memory(
            lambda: fuse(
                files(folder, "eval"), dev_key, out, dev_scores=files(folder, "dev"), eval_key=eval_key, overwrite=True
            ),
            3,
            cpu,
        )
        summary = json.loads(out.with_suffix(".json").read_text())
        assert len(read_scores(out)) == N_TRIALS
        return {**result, "dev": summary["dev"], "eval": summary["eval"]}
    records = read_dataset(dev_key, "dev key", check="off", progress=False)
    dev, labels = labelled(read_systems(files(folder, "dev"), "dev"), records, "dev", dev_key.protocol)
    if variant == "fit":
        result = time_and_memory(lambda: fit_fusion(dev.scores, labels), 3, cpu)
        fusion = fit_fusion(dev.scores, labels)
        return {**result, "iterations": fusion.iterations, "weights": fusion.weights, "offset": fusion.offset}
    fusion = fit_fusion(dev.scores, labels)
    evaluation = read_systems(files(folder, "eval"), "eval")

    def apply() -> None:
        fused = fusion.apply(evaluation.scores)
        write_text_atomic(out, "".join(f"{u} {v:.6f}\n" for u, v in zip(evaluation.ids, fused.tolist())))

    return time_and_memory(apply, 3, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the generated keys and score files")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.out)))
        return
    make_files(args.out)
    results = {
        v: run_worker(__file__, ["--out", str(args.out), "--worker", v])
        for v in ("read", "keys", "fit", "apply", "fuse")
    }
    base = results["read"]["median_s"]
    print(f"{N_TRIALS:,} dev and {N_TRIALS:,} eval trials, {SYSTEMS} systems; median of 3, peak RSS above start")
    for variant, result in results.items():
        print(
            f"{variant:<6} {result['median_s']:7.3f} s ({result['median_s'] / base:5.2f}x reading the 6 score files)"
            f"  {result['peak_mb']:7.1f} MiB"
        )
    print(f"fit: {results['fit']['iterations']} L-BFGS iterations, weights {results['fit']['weights']}")
    for part in ("dev", "eval"):
        summary = results["fuse"][part]
        systems = ", ".join(f"{s['eer']:.2%} / {s['cllr']:.3f}" for s in summary["systems"])
        fused = summary["fusion"]
        print(f"{part}: EER / Cllr of the systems {systems}; fused {fused['eer']:.2%} / {fused['cllr']:.3f}")


if __name__ == "__main__":
    main()
