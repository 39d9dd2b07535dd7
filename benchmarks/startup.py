"""Start-up time of ``dpda --version`` against a bare interpreter and an ``import torch``, and a
check that it imports none of the heavy libraries (the CLI imports them in the commands).

Each variant is a fresh process, run in turns (one of each per round, so drift hits all alike)
after one warm-up round; the median wall time per variant and the ratios are printed. Exits 1
when ``--version`` or ``--help`` loads a heavy module.

    python benchmarks/startup.py --repeats 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "numpy", "torchjd", "scipy", "soundfile", "matplotlib", "transformers", "safetensors")

#: Runs ``dpda.cli.main(ARGV)`` and prints, last, the heavy modules it left in ``sys.modules``.
_LOADED = """
import json, sys
from dpda.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(name for name in {heavy!r} if name in sys.modules)))
"""


def variants() -> dict[str, list[str]]:
    """The commands timed: the installed ``dpda`` script when there is one (as users start it)."""
    dpda = shutil.which("dpda")
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "dpda --version": [dpda, "--version"] if dpda else [sys.executable, "-m", "dpda", "--version"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }


def loaded_heavy_modules(argv: list[str]) -> list[str]:
    script = _LOADED.format(heavy=HEAVY)
    completed = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def median_seconds(commands: dict[str, list[str]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(repeats + 1):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
            if round_:  # round 0 warms the file cache
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description="start-up time of dpda --version, and what it imports")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (each runs every variant once)")
    args = parser.parse_args()
    commands = variants()
    medians = median_seconds(commands, args.repeats)
    bare, torch = medians["python -c pass"], medians["python -c 'import torch'"]
    print(f"median of {args.repeats} runs each ({' '.join(commands['dpda --version'])})\n")
    print("| command | ms | vs python -c pass | vs import torch |")
    print("|---|---|---|---|")
    for name, seconds in medians.items():
        print(f"| `{name}` | {seconds * 1000:.0f} | {seconds / bare:.2f}x | {seconds / torch:.2f}x |")
    failed = False
    for argv in (["--version"], ["--help"]):
        heavy = loaded_heavy_modules(argv)
        failed |= bool(heavy)
        verdict = f"FAIL: {', '.join(heavy)}" if heavy else "none: PASS"
        print(f"\nheavy modules loaded by dpda {argv[0]} ({', '.join(HEAVY)}): {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
