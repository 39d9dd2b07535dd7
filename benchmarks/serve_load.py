"""``dpda serve`` under load from this machine, against ``dpda score`` on the same files.

For each model (LFCC-LCNN and AASIST-L: trained for a few steps on the built-in corpus, then
``dpda package``d), the service runs as ``dpda serve`` in its own process; 1, 4 and 16 clients
(threads, one HTTP connection each) each send ``--requests`` requests of 4 s audio. Reported:
requests/s, p50 and p99 latency, the service's time per request at one client against ``dpda
score``'s per file in one process (the overhead as a ratio), and the service's resident memory
after 10 requests, after 1,000 and every 250 over ``--soak`` more (growth that goes on would be a
leak; growth that levels off is the allocator's arenas filling).

Clients and service share the machine's cores, so the figures are of both together.

    python benchmarks/serve_load.py --out /tmp/serve_load
    python benchmarks/serve_load.py --out /tmp/serve_load --models lfcc_lcnn --requests 50   # quicker
    python benchmarks/serve_load.py --out /tmp/serve_load --models aasist_l --requests 50 --soak 3000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = (1, 4, 16)


def dpda(*args: str) -> list[str]:
    return [sys.executable, "-m", "dpda", *args]


def package(model: str, corpus: Path, out: Path) -> Path:
    """A briefly trained ``model`` on the built-in corpus, packaged (with its dev calibration)."""
    folder = out / "packages" / model
    if folder.exists():
        return folder
    settings = {
        "name": model,
        "output_dir": str(out / "runs"),
        "model": {"name": model},
        "data.train": {"kind": "builtin", "protocol": str(corpus / "protocols/train.txt")},
        "data.dev": {"kind": "builtin", "protocol": str(corpus / "protocols/dev.txt")},
        "data.crop_length": 64000,
        "data.workers": 0,
        "train.batch_size": 4,
        "train.epochs": 1,
        "train.max_steps_per_epoch": 2,
        "logging.progress": False,
    }
    overrides = [item for key, value in settings.items() for item in ("--set", f"{key}={json.dumps(value)}")]
    subprocess.run(dpda("train", "configs/default.yaml", *overrides), cwd=ROOT, check=True, capture_output=True)
    subprocess.run(dpda("package", str(out / "runs" / model), str(folder)), cwd=ROOT, check=True)
    return folder


def clips(out: Path, count: int) -> list[Path]:
    """``count`` 4 s WAV files of noise with a tone (what the model hears matters little here)."""
    folder = out / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"clip{index:02d}.wav"
        if not path.exists():
            t = np.arange(64000) / 16000
            sf.write(str(path), rng.normal(0, 0.05, 64000) + 0.1 * np.sin(2 * np.pi * (110 + index) * t), 16000)
        paths.append(path)
    return paths


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024


def load(base: str, files: list[Path], clients: int, requests: int) -> dict:
    """``clients`` threads each sending ``requests`` requests; latencies and throughput."""
    payloads = [path.read_bytes() for path in files]

    def client(index: int) -> list[float]:
        latencies = []
        with httpx.Client(base_url=base, timeout=120) as http:
            for number in range(requests):
                data = payloads[(index + number) % len(payloads)]
                start = time.perf_counter()
                response = http.post("/v1/score", files={"file": ("clip.wav", data, "audio/wav")})
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"request failed: {response.status_code} {response.text[:300]}")
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(t for part in pool.map(client, range(clients)) for t in part)
    seconds = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def score_baseline(folder: Path, files: list[Path]) -> float:
    """Seconds per file of ``dpda score`` over ``files`` in one process (model load excluded)."""
    script = (
        "import sys, time, torch\n"
        "from dpda.evaluate.evaluation import load_detector, score_files\n"
        "detector = load_detector(sys.argv[1], torch.device('cpu'))\n"
        "files = sys.argv[2:]\n"
        "list(score_files(detector, files[:2], torch.device('cpu')))\n"
        "start = time.perf_counter()\n"
        "for _ in range(3):\n"
        "    records = list(score_files(detector, files, torch.device('cpu')))\n"
        "print((time.perf_counter() - start) / (3 * len(files)))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(folder), *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(completed.stdout.strip().splitlines()[-1])


def serve(folder: Path, requests: int, soak: int, files: list[Path], threads: int) -> dict:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    server = subprocess.Popen(
        dpda("serve", str(folder), "--port", str(port), "--device", "cpu"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        load(base, files, 1, 10)
        after_10 = rss_mb(server.pid)
        runs = [load(base, files, clients, requests) for clients in CLIENTS]
        served = 10 + sum(run["requests"] for run in runs)
        if served < 1000:
            served += load(base, files, 4, -(-(1000 - served) // 4))["requests"]
        after_1000 = rss_mb(server.pid)
        curve = [(served, after_1000)]
        while served < curve[0][0] + soak:
            served += load(base, files, 4, 63)["requests"]
            curve.append((served, rss_mb(server.pid)))
            print(f"  RSS {curve[-1][1]:.0f} MiB after {served} requests", flush=True)
        after = curve[-1][1]
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "loads": runs,
        "rss_after_10_mb": after_10,
        "rss_after_1000_mb": after_1000,
        "rss_after_mb": after,
        "rss_curve_mb": curve,
        "requests_served": served,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="working folder (corpus, runs, packages)")
    parser.add_argument("--models", nargs="+", default=["lfcc_lcnn", "aasist_l"])
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each process")
    parser.add_argument("--soak", type=int, default=1000, help="requests after the first 1,000, RSS every 250")
    args = parser.parse_args()
    args.out = args.out.resolve()
    corpus = args.out / "corpus"
    if not (corpus / "corpus.json").exists():
        subprocess.run(dpda("corpus", "build", "--out", str(corpus), "--size", "tiny", "--quiet"), check=True)
    files = clips(args.out, 20)
    figures = {}
    for model in args.models:
        folder = package(model, corpus, args.out)
        per_file = score_baseline(folder, files)
        result = serve(folder, args.requests, args.soak, files, args.threads)
        one = result["loads"][0]
        result["dpda_score_ms_per_file"] = 1000 * per_file
        result["overhead_at_one_client"] = (1 / one["requests_per_s"]) / per_file
        result["rss_growth_first_1000"] = result["rss_after_1000_mb"] / result["rss_after_10_mb"]
        result["rss_growth_over_soak"] = result["rss_after_mb"] / result["rss_after_1000_mb"]
        figures[model] = result
        print(f"# {model}: dpda score {1000 * per_file:.1f} ms/file", flush=True)
        for run in result["loads"]:
            print(
                f"  {run['clients']:2d} clients: {run['requests_per_s']:6.1f} req/s, p50 {run['p50_ms']:7.1f} ms, "
                f"p99 {run['p99_ms']:7.1f} ms",
                flush=True,
            )
        print(
            f"  overhead at one client {result['overhead_at_one_client']:.2f}x; "
            f"RSS {result['rss_after_10_mb']:.0f} MiB after 10, {result['rss_after_1000_mb']:.0f} after 1,000, "
            f"{result['rss_after_mb']:.0f} after {result['requests_served']}",
            flush=True,
        )
    (args.out / "serve_load.json").write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
