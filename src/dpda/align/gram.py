"""The 2x2 Gram matrix of the two path gradients, and the weighted combination.

Every aligner in dpda maps the Gram matrix ``G = [[g_o.g_o, g_o.g_a], [g_a.g_o, g_a.g_a]]`` to two
weights, so the gradients are never flattened or copied: the Gram needs three dot products per
parameter tensor and the combination ``w_o * g_o + w_a * g_a`` is one in-place pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: Gradient dtypes whose products are formed in float32 (half precision would overflow or lose
#: the small cosines that decide whether two paths conflict).
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def pairwise_products(grads_orig: Sequence[Tensor | None], grads_aug: Sequence[Tensor | None]) -> Tensor:
    """Per-tensor products ``(g_o.g_o, g_o.g_a, g_a.g_a)`` as an ``(n, 3)`` float64 tensor.

    A missing gradient (``None``: a parameter that one path does not reach) counts as zero.
    The dot products run on the gradients' device in float32 (half-precision tensors are upcast
    one at a time); the per-tensor results are returned in float64 so that sums over hundreds of
    tensors lose nothing.
    """
    if len(grads_orig) != len(grads_aug):
        raise ValueError(f"the two gradient sets differ in length: {len(grads_orig)} vs {len(grads_aug)}")
    rows: list[Tensor] = []
    device = next((g.device for g in (*grads_orig, *grads_aug) if g is not None), None)
    for index, (g_o, g_a) in enumerate(zip(grads_orig, grads_aug)):
        a = _flat32(g_o)
        b = _flat32(g_a)
        present = a if a is not None else b
        if present is None:
            rows.append(torch.zeros(3, dtype=torch.float64, device=device))
            continue
        if a is not None and b is not None and a.shape != b.shape:
            raise ValueError(
                f"gradient {index} has {a.numel()} elements on the original path and {b.numel()} on the augmented path"
            )
        zero = present.new_zeros(())
        oo = torch.dot(a, a) if a is not None else zero
        aa = torch.dot(b, b) if b is not None else zero
        oa = torch.dot(a, b) if a is not None and b is not None else zero
        rows.append(torch.stack((oo, oa, aa)).double())
    if not rows:
        return torch.zeros((0, 3), dtype=torch.float64)
    return torch.stack(rows)


def gram_from_products(products: Tensor, groups: Tensor | None = None) -> Tensor:
    """Sum per-tensor products into one Gram matrix per group: ``(n_groups, 2, 2)`` float64.

    ``groups[i]`` is the group of tensor ``i`` (``None``: one group, the whole model).
    """
    if groups is None:
        summed = products.sum(dim=0, keepdim=True)
    else:
        n_groups = int(groups.max().item()) + 1 if groups.numel() else 1
        summed = torch.zeros((n_groups, 3), dtype=products.dtype, device=products.device)
        summed.index_add_(0, groups.to(products.device), products)
    oo, oa, aa = summed.unbind(dim=1)
    return torch.stack((torch.stack((oo, oa), dim=1), torch.stack((oa, aa), dim=1)), dim=1)


def combine_(
    grads_orig: list[Tensor | None], grads_aug: Sequence[Tensor | None], weight_orig: float, weight_aug: float
) -> list[Tensor | None]:
    """``w_o * g_o + w_a * g_a`` written into the original-path tensors (in place).

    Returns the combined gradient per tensor; where the original path has no gradient the
    augmented tensor is scaled in place instead, and where neither has one the result is ``None``.
    """
    both = [(a, b) for a, b in zip(grads_orig, grads_aug) if a is not None and b is not None]
    if both:
        targets = [a for a, _ in both]
        torch._foreach_mul_(targets, weight_orig)
        torch._foreach_add_(targets, [b for _, b in both], alpha=weight_aug)
    combined: list[Tensor | None] = []
    for g_o, g_a in zip(grads_orig, grads_aug):
        if g_o is not None and g_a is None:
            g_o.mul_(weight_orig)
        elif g_o is None and g_a is not None:
            g_o = g_a.mul_(weight_aug)
        combined.append(g_o)
    return combined


def _flat32(grad: Tensor | None) -> Tensor | None:
    if grad is None:
        return None
    flat = grad.reshape(-1)
    return flat.float() if flat.dtype in _LOW_PRECISION else flat
