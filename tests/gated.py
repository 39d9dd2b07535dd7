"""A tiny detector that a test can hold at a known step, to kill a real run at a known point."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from models import TinyDetector


class GatedDetector(TinyDetector):
    """``TinyDetector`` (same weights) whose training forward number ``after`` (one a step in
    ``joint`` mode) waits while the file ``gate`` exists, after touching ``gate.reached``: with the
    gate there, the run stops having done ``after - 1`` steps; without it, it runs as usual."""

    def __init__(self, gate: str, after: int = 1) -> None:
        super().__init__()
        self.gate, self.after, self.calls = Path(gate), after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.after and self.gate.exists():
                self.gate.with_suffix(".reached").touch()
                while self.gate.exists():
                    time.sleep(0.01)
        return super().forward(x)
