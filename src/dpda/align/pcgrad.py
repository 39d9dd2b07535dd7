"""PCGrad (Yu et al., NeurIPS 2020) for two paths, as the DPDA paper's code applies it."""

from __future__ import annotations

import torch
from torch import Tensor

from dpda.align.base import Aligner, as_gram_batch


class PCGrad(Aligner):
    """Project each gradient onto the normal plane of the other when they conflict, then average.

    With ``d = g_o.g_a < 0`` the projected gradients are ``g_o - d/|g_a|^2 g_a`` and
    ``g_a - d/|g_o|^2 g_o``; their mean (the paper code's ``reduction="mean"``) is
    ``w_o g_o + w_a g_a`` with ``w_o = (1 - d/|g_o|^2) / 2`` and ``w_a = (1 - d/|g_a|^2) / 2``.
    For two objectives the projection order does not matter, so the paper code's random
    shuffling has no effect and this is deterministic.

    Edge cases: without conflict (``d >= 0``, which includes a zero gradient on either path and
    identical gradients) the result is the mean; exactly opposite gradients project to zero,
    so the result is the zero vector. ``grouping="layer"`` projects each module's gradients
    separately.
    """

    name = "pcgrad"

    def weights(self, gram: Tensor) -> Tensor:
        gram = as_gram_batch(gram)
        oo, oa, aa = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
        conflict = oa < 0  # implies both norms are positive
        w_orig = torch.where(conflict, 0.5 * (1 - oa / torch.where(conflict, oo, 1.0)), 0.5)
        w_aug = torch.where(conflict, 0.5 * (1 - oa / torch.where(conflict, aa, 1.0)), 0.5)
        return torch.stack((w_orig, w_aug), dim=1)
