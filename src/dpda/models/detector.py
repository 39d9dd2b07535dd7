"""An SSL detector: a self-supervised front-end (XLS-R, WavLM, HuBERT) followed by a back-end."""

from __future__ import annotations

from torch import Tensor, nn


class SSLDetector(nn.Module):
    """``backend(frontend(x))``: (B, T) audio -> (B, frames, dim) features -> (embedding, logits).

    The two parts keep their own parameter names under ``ssl.`` and ``backend.``, so a front-end
    can be frozen or given its own learning rate by prefix, and converted checkpoints map key by
    key.
    """

    def __init__(self, frontend: nn.Module, backend: nn.Module) -> None:
        super().__init__()
        self.ssl = frontend
        self.backend = backend

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.backend(self.ssl(x))
