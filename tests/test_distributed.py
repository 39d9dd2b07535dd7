"""Two gloo processes under torchrun x B utterances == one process x 2B, for a model without
BatchNorm: both gradient sets are summed over ranks before alignment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import CONFIGS, train
from safetensors.torch import load_file

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(TESTS / "distributed_worker.py"),
        str(out),
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out


@pytest.mark.parametrize("mode, aligner", CONFIGS)
def test_two_ranks_equal_one_process_with_the_doubled_batch(two_rank_results, mode, aligner):
    single = train(mode, aligner, rank=0, world=1)
    ranks = [load_file(two_rank_results / f"{mode}_{aligner}_rank{r}.safetensors") for r in (0, 1)]
    for name, expected in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"ranks differ in {name}"
        torch.testing.assert_close(ranks[0][name], expected, rtol=0, atol=1e-6, msg=name)
