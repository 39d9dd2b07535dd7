"""The aligner interface: a 2x2 Gram matrix (plus the aligner's own state) in, two weights out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from dpda.align.gram import combine_, gram_from_products, pairwise_products

Grouping = Literal["model", "layer"]


class Aligner(ABC):
    """Maps the Gram matrix of the two path gradients to the weights ``(w_orig, w_aug)``.

    The combined gradient is ``w_orig * g_orig + w_aug * g_aug``. For two objectives every
    method dpda ships has this form, so the engine hands an aligner only Gram matrices:
    ``(n_groups, 2, 2)`` float64, one per parameter group (``grouping = "model"``: one group;
    ``"layer"``: one per module that owns parameters). Row/column 0 is the original path.

    >>> import torch
    >>> from dpda.align import make_aligner
    >>> g_orig, g_aug = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    >>> make_aligner("pcgrad").align([g_orig, g_aug])
    tensor([0.2500, 0.7500])
    """

    #: The name ``make_aligner`` knows this aligner by.
    name: str = ""

    def __init__(self, grouping: Grouping = "model") -> None:
        if grouping not in ("model", "layer"):
            raise ValueError(f"{self.name}: grouping must be 'model' or 'layer', got {grouping!r}")
        self.grouping: Grouping = grouping

    @abstractmethod
    def weights(self, gram: Tensor) -> Tensor:
        """Weights ``(n_groups, 2)`` float64 for Gram matrices ``(n_groups, 2, 2)`` float64.

        Stateful aligners update their state here, once per optimizer step.
        """

    def align(self, grads: Sequence[Tensor]) -> Tensor:
        """Combine two flat gradients into one (a convenience form; the engine uses ``weights``).

        The inputs are left unchanged; the result has their dtype.
        """
        if len(grads) != 2:
            raise ValueError(f"align expects two gradients [g_orig, g_aug], got {len(grads)}")
        g_orig, g_aug = grads
        gram = gram_from_products(pairwise_products([g_orig], [g_aug]))
        w_orig, w_aug = self.weights(gram)[0].tolist()
        (combined,) = combine_([g_orig.clone()], [g_aug], w_orig, w_aug)
        assert combined is not None
        return combined

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors that restore the aligner exactly (empty for stateless aligners)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if state:
            raise KeyError(f"aligner {self.name!r} is stateless but the saved state has keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grouping={self.grouping!r})"


def as_gram_batch(gram: Tensor) -> Tensor:
    """Check the shape ``(n_groups, 2, 2)`` and return the Gram matrices in float64."""
    if gram.dim() != 3 or gram.shape[1:] != (2, 2):
        raise ValueError(f"expected Gram matrices of shape (n_groups, 2, 2), got {tuple(gram.shape)}")
    return gram.detach().to(dtype=torch.float64, device="cpu")


class MeanAligner(Aligner):
    """Plain DPDA: the average of the two path gradients (the paper's no-alignment baseline)."""

    name = "mean"

    def weights(self, gram: Tensor) -> Tensor:
        return torch.full((as_gram_batch(gram).shape[0], 2), 0.5, dtype=torch.float64)


class SumAligner(Aligner):
    """The sum of the two path gradients (twice ``mean``; the scale of the summed losses)."""

    name = "sum"

    def weights(self, gram: Tensor) -> Tensor:
        return torch.ones((as_gram_batch(gram).shape[0], 2), dtype=torch.float64)
