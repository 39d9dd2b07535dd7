"""The entry the paper code gives its SSL back-ends: project, normalise, SELU, then a sequence model."""

from __future__ import annotations

from torch import Tensor, nn

from dpda.models.options import FromConfig


class ProjectedBackEnd(FromConfig, nn.Module):
    """SSL features ``(B, frames, ssl_dim)`` projected to ``emb_size`` (``LL``), normalised by a
    one-channel BatchNorm over all frames and channels (``first_bn``), SELU, then
    ``sequence_model`` (kept under the paper code's name ``conformer``, so that released
    checkpoints map by name), which returns ``(embedding, logits)``."""

    def __init__(self, ssl_dim: int, emb_size: int, sequence_model: nn.Module) -> None:
        super().__init__()
        self.ssl_dim = ssl_dim
        self.emb_size = emb_size
        self.LL = nn.Linear(ssl_dim, emb_size)
        self.first_bn = nn.BatchNorm2d(num_features=1)
        self.selu = nn.SELU()
        self.conformer = sequence_model

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        if features.dim() != 3 or features.shape[2] != self.ssl_dim or features.shape[1] == 0:
            raise ValueError(
                f"expected features of shape (batch, frames >= 1, {self.ssl_dim}), got {tuple(features.shape)}"
            )
        x = self.first_bn(self.LL(features).unsqueeze(1)).squeeze(1)
        return self.conformer(self.selu(x))
