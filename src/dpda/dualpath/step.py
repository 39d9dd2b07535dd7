"""One dual-path training step: two path losses, two gradient sets, aligned, one optimizer step.

The gradient sets are never flattened: path gradients are moved out of ``p.grad`` into two
lists of tensors (reference swaps, no copies), the aligner sees only the 2x2 Gram matrix, and
``w_o g_o + w_a g_a`` is written in place into the original-path tensors, which then become
``p.grad``. The loss normalisation (see ``loss.py``), the fp16 loss scale and gradient clipping
are folded into the two weights, so none of them costs a pass over the model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TypedDict

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from dpda.align import (
    Aligner,
    combine_,
    gram_from_products,
    make_aligner,
    pairwise_products,
)
from dpda.checkpoint import describe_non_finite
from dpda.dualpath.layers import LayerGrouping, LayerStats, layer_groups
from dpda.dualpath.loss import PathLoss, WeightedCrossEntropy, logits_of
from dpda.dualpath.scaler import LossScaler
from dpda.dualpath.sync import all_reduce_sum_, broadcast_module_, is_distributed
from dpda.errors import DpdaError
from dpda.names import MODES, PRECISIONS, Mode, Precision

ORIG, AUG = 0, 1


class DivergedError(DpdaError, RuntimeError):
    """A step was skipped and the model's own weights or buffers are not finite: no later step can
    succeed, so training stops here rather than skip every step that is left."""


class PathLosses(TypedDict):
    """The two mean path losses of a step, as ``StepStats`` takes them."""

    loss_orig: float
    loss_aug: float


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step did. Gradient statistics are of the normalised (mean-loss) path
    gradients over the whole model; they are ``None`` in ``concat`` mode, which has no per-path
    gradients, and in a skipped step. ``layers``: the same per group of parameters, where the
    engine was given a ``layer_grouping`` (not a column of the step log: see :meth:`names`)."""

    loss_orig: float
    loss_aug: float
    skipped: bool
    cosine: float | None = None
    inner: float | None = None
    norm_orig: float | None = None
    norm_aug: float | None = None
    conflict: bool | None = None
    weight_orig: float | None = None
    weight_aug: float | None = None
    result_norm: float | None = None
    clip_coef: float | None = None
    loss_scale: float | None = None
    layers: LayerStats | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, float | bool | None]:
        """The whole-model statistics, the step columns of a training log."""
        return {name: getattr(self, name) for name in self.names()}

    @staticmethod
    def names() -> list[str]:
        """The keys of :meth:`as_dict`, in order."""
        return [item.name for item in fields(StepStats) if item.name != "layers"]


class DualPathStep:
    """Dual-path training: ``accumulate`` micro-batches, then ``step`` once (or call it).

    ``mode``:
      - ``joint`` (the paper's): one forward over ``[x_orig; x_aug]`` (BatchNorm sees both),
        two backward passes through the shared graph;
      - ``split``: a forward and a backward per path (BatchNorm statistics per path; running
        statistics are updated twice per step) -- the cost of one ordinary step over 2B;
      - ``concat``: the ordinary augmented-data step, one loss over all 2B utterances and one
        backward; no per-path gradients, the aligner is not used.

    Under torch.distributed (do not wrap the model in DDP) both gradient sets are summed over
    ranks before alignment, so every rank computes the same update; parameters are broadcast
    from rank 0 at construction. Accumulated micro-batches give exactly the gradient of the whole
    batch for models without BatchNorm; with BatchNorm each micro-batch is normalised by its own
    statistics (and updates the running ones once per micro-batch), so they do not.

    ``zero_missing_grads``: every parameter the optimizer holds that has no gradient at step
    time gets a zero one, as the paper code's aligners hand the optimizer; Adam's weight decay
    then moves frozen and unused parameters (e.g. Conformer-TCM's positional table).

    ``layer_grouping`` (``layer``, ``module`` or ``top``; see :mod:`dpda.dualpath.layers`): the
    step statistics also carry each group's products, from the per-tensor products the aligner
    needs anyway (one index sum and one transfer more a step).

    >>> import torch
    >>> from torch import nn
    >>> from dpda.dualpath import DualPathStep
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(160, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> engine = DualPathStep(model, torch.optim.Adam(model.parameters(), lr=1e-3), "pcgrad")
    >>> x = torch.randn(4, 160)
    >>> stats = engine(x, x + 0.1 * torch.randn(4, 160), torch.tensor([1, 0, 0, 1]))
    >>> stats.skipped, isinstance(stats.cosine, float), engine.steps
    (False, True, 1)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        aligner: Aligner | str = "mean",
        *,
        loss: PathLoss | None = None,
        mode: Mode = "joint",
        precision: Precision = "fp32",
        max_grad_norm: float | None = None,
        loss_scaler: LossScaler | None = None,
        process_group: dist.ProcessGroup | None = None,
        bucket_mb: float = 25.0,
        zero_missing_grads: bool = False,
        layer_grouping: LayerGrouping = "none",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm}")
        self.model = model
        self.optimizer = optimizer
        self.aligner = make_aligner(aligner) if isinstance(aligner, str) else aligner
        self.loss = loss if loss is not None else WeightedCrossEntropy()
        self.mode = mode
        self.precision = precision
        self.max_grad_norm = max_grad_norm
        self.loss_scaler = (loss_scaler or LossScaler()) if precision == "fp16" else None
        self.process_group = process_group
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.zero_missing_grads = zero_missing_grads
        self.distributed = is_distributed(process_group)
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no parameter that requires a gradient")
        self.params = [p for _, p in named]
        self.group_members = _group_members([name for name, _ in named], self.aligner.grouping)
        self.group_index = torch.empty(len(self.params), dtype=torch.long)
        for group, members in enumerate(self.group_members):
            self.group_index[members] = group
        self.layer_names: list[str] = []
        self.layer_index: Tensor | None = None
        if layer_grouping != "none":
            self.layer_names, self.layer_index = layer_groups([name for name, _ in named], layer_grouping)
        self.steps = 0
        self.skipped_steps = 0
        self._reset_accumulation()
        if self.distributed:
            broadcast_module_(model, process_group)

    # ----------------------------------------------------------------------------------------
    def __call__(self, x_orig: Tensor, x_aug: Tensor, labels: Tensor) -> StepStats:
        """One micro-batch and the optimizer step (no accumulation)."""
        self.accumulate(x_orig, x_aug, labels)
        return self.step()

    def accumulate(self, x_orig: Tensor, x_aug: Tensor, labels: Tensor) -> None:
        """Forward and backward one micro-batch, adding to both path gradient sets."""
        if x_orig.shape != x_aug.shape:
            raise ValueError(
                f"x_orig and x_aug must have the same shape, got {tuple(x_orig.shape)} and {tuple(x_aug.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be class indices (an integer tensor), got {labels.dtype}")
        if labels.shape != x_orig.shape[:1]:
            raise ValueError(
                f"labels must have shape ({x_orig.shape[0]},) to match the batch, got {tuple(labels.shape)}"
            )
        if self._micro_batches == 0:
            self._snapshot_buffers()
        batch = x_orig.shape[0]
        if self.mode == "split":
            terms = []
            for path, x in ((ORIG, x_orig), (AUG, x_aug)):  # one graph alive at a time
                numerator, denominator = self._forward_loss(x, labels)
                self._backward(numerator, path)
                terms.append((numerator, denominator))
        else:
            with self._autocast():
                logits = logits_of(self.model(torch.cat([x_orig, x_aug])))
                terms = [self.loss(logits[:batch], labels), self.loss(logits[batch:], labels)]
            if self.mode == "concat":
                self._backward(terms[0][0] + terms[1][0], ORIG)
            else:
                self._backward(terms[0][0], ORIG, retain_graph=True)
                self._backward(terms[1][0], AUG)
        self._totals += torch.stack([t.detach().double() for pair in terms for t in pair])
        self._micro_batches += 1

    def step(self) -> StepStats:
        """Synchronise, align, combine, clip and apply the accumulated gradients."""
        if self._micro_batches == 0:
            raise RuntimeError("step() called before accumulate(): there are no gradients to apply")
        if self.distributed:
            self._synchronise()
        num_o, den_o, num_a, den_a = self._totals.tolist()
        scale = self.loss_scaler.scale if self.loss_scaler else 1.0
        # a zero denominator (e.g. class weight 0 for the only class present) makes the loss
        # undefined: its normaliser is inf, so the step is skipped as non-finite
        losses: PathLosses = {"loss_orig": _ratio(num_o, den_o), "loss_aug": _ratio(num_a, den_a)}
        if self.mode == "concat":
            stats = self._apply_concat(_ratio(1.0, scale * (den_o + den_a)), losses)
        else:
            stats = self._apply_aligned(
                torch.tensor([_ratio(1.0, scale * den_o), _ratio(1.0, scale * den_a)], dtype=torch.float64), losses
            )
        if self.loss_scaler is not None:
            self.loss_scaler.update(stats.skipped)
        self.steps += 1
        self.skipped_steps += stats.skipped
        self._reset_accumulation()
        return stats

    # ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Flat tensors (safetensors-ready): aligner state, loss scale, step counters."""
        state = {f"aligner.{k}": v for k, v in self.aligner.state_dict().items()}
        if self.loss_scaler is not None:
            state.update({f"loss_scaler.{k}": v for k, v in self.loss_scaler.state_dict().items()})
        state["steps"] = torch.tensor(self.steps, dtype=torch.int64)
        state["skipped_steps"] = torch.tensor(self.skipped_steps, dtype=torch.int64)
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        missing = {"steps", "skipped_steps"} - set(state)
        if missing:
            raise KeyError(f"dual-path engine state is missing {sorted(missing)}")
        self.aligner.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("aligner.")})
        scaler_state = {k[12:]: v for k, v in state.items() if k.startswith("loss_scaler.")}
        if self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(scaler_state)
        elif scaler_state:
            raise KeyError("the saved state has a loss scale but this engine does not run in fp16")
        self.steps = int(state["steps"])
        self.skipped_steps = int(state["skipped_steps"])

    # ----------------------------------------------------------------------------------------
    def _forward_loss(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        with self._autocast():
            return self.loss(logits_of(self.model(x)), labels)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        device = self.params[0].device.type
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device, dtype=dtype)

    def _backward(self, numerator: Tensor, path: int, retain_graph: bool = False) -> None:
        """Back-propagate into path ``path``'s set: its tensors are lent to ``p.grad`` meanwhile,
        so autograd accumulates in place and the first micro-batch's gradients are not copied."""
        grads = self._grads[path]
        for p, g in zip(self.params, grads):
            p.grad = g
        if self.loss_scaler is not None:
            numerator = numerator * self.loss_scaler.scale
        numerator.backward(retain_graph=retain_graph)
        for i, p in enumerate(self.params):
            grads[i] = p.grad
            p.grad = None

    def _synchronise(self) -> None:
        paths = (ORIG,) if self.mode == "concat" else (ORIG, AUG)
        for path in paths:  # every rank needs the same tensor layout, so absent gradients become zeros
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(self._grads[path], self.params)]
            self._grads[path][:] = grads
            all_reduce_sum_(grads, self.process_group, self.bucket_bytes)
        dist.all_reduce(self._totals, group=self.process_group)

    def _apply_aligned(self, normaliser: Tensor, losses: PathLosses) -> StepStats:
        products = pairwise_products(self._grads[ORIG], self._grads[AUG])
        group_index = None if len(self.group_members) == 1 else self.group_index
        gram = gram_from_products(products, group_index).cpu() * torch.outer(normaliser, normaliser)
        weights = self.aligner.weights(gram) if torch.isfinite(gram).all() else None
        if weights is None or not torch.isfinite(weights).all():
            return self._skip(losses)
        whole = gram.sum(dim=0)
        norms = whole.diagonal().clamp_min(0).sqrt()
        inner = float(whole[0, 1])
        result_norm = math.sqrt(max(float(torch.einsum("gi,gij,gj->", weights, gram, weights)), 0.0))
        clip_coef = self._clip_coefficient(result_norm)
        effective = weights * normaliser * clip_coef
        for group, members in enumerate(self.group_members):
            combined = combine_(
                [self._grads[ORIG][i] for i in members],
                [self._grads[AUG][i] for i in members],
                float(effective[group, 0]),
                float(effective[group, 1]),
            )
            for i, g in zip(members, combined):
                self.params[i].grad = g
        self._optimizer_step()
        layers = None if self.layer_index is None else LayerStats.of(products, self.layer_index, self.layer_names)
        denominator = float(norms[0] * norms[1])
        return StepStats(
            **losses,
            skipped=False,
            cosine=inner / denominator if denominator > 0 else 0.0,
            inner=inner,
            norm_orig=float(norms[0]),
            norm_aug=float(norms[1]),
            conflict=inner < 0,
            weight_orig=float(weights[:, 0].mean()),
            weight_aug=float(weights[:, 1].mean()),
            result_norm=result_norm * clip_coef,
            clip_coef=clip_coef,
            loss_scale=self._scale(),
            layers=layers,
        )

    def _apply_concat(self, normaliser: float, losses: PathLosses) -> StepStats:
        grads = [g for g in self._grads[ORIG] if g is not None]
        norms = torch._foreach_norm(grads) if grads else [torch.zeros(())]
        norm = float(torch.linalg.vector_norm(torch.stack(norms).double())) * normaliser
        if not math.isfinite(norm):
            return self._skip(losses)
        clip_coef = self._clip_coefficient(norm)
        torch._foreach_mul_(grads, normaliser * clip_coef)
        for p, g in zip(self.params, self._grads[ORIG]):
            p.grad = g
        self._optimizer_step()
        return StepStats(
            **losses, skipped=False, result_norm=norm * clip_coef, clip_coef=clip_coef, loss_scale=self._scale()
        )

    def _clip_coefficient(self, norm: float) -> float:
        if self.max_grad_norm is None:
            return 1.0
        return min(1.0, self.max_grad_norm / (norm + 1e-6))

    def _optimizer_step(self) -> None:
        held = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.zero_missing_grads:
            for p in held:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        self.optimizer.step()
        for p in held:
            p.grad = None
        self._refuse_diverged(with_parameters=False)

    def _snapshot_buffers(self) -> None:
        """Copy every buffer before the step's first forward pass: forward passes write buffers
        (BatchNorm's running statistics and ``num_batches_tracked``), and a skipped step must
        leave them as they were. Buffers are small next to the parameters and their gradient
        sets, so copying all of them is cheaper than knowing which ones a model writes, or than a
        forward pass on a copy of the model; parameters need no copy, as only the optimizer
        writes them."""
        self._saved_buffers: list[tuple[Tensor, Tensor]] = [(b, b.detach().clone()) for b in self.model.buffers()]

    def _skip(self, losses: PathLosses) -> StepStats:
        """A non-finite gradient (or weight) never reaches the model: the parameters are not
        stepped and the buffers the step's forward passes wrote get their values back."""
        with torch.no_grad():
            for buffer, saved in self._saved_buffers:
                buffer.copy_(saved)
        self._refuse_diverged(with_parameters=True)
        return StepStats(**losses, skipped=True, loss_scale=self._scale())

    def _refuse_diverged(self, with_parameters: bool) -> None:
        """Raise ``DivergedError`` when the model's buffers, or with ``with_parameters`` its
        parameters too, are not finite. Skipping is for a bad batch or an fp16 overflow; a model
        that is not finite itself came from a step with finite gradients that overflowed (the
        optimizer's moments, or BatchNorm's running variance of huge activations), and every
        later step would be skipped or spread it. Buffers are checked after every step (they are
        small), parameters in skipped steps only; one synchronisation either way."""
        named = [*self.model.named_buffers(), *(self.model.named_parameters() if with_parameters else [])]
        floats = [tensor.detach() for _, tensor in named if tensor.is_floating_point()]
        if not floats or bool(torch.stack([torch.isfinite(tensor).all() for tensor in floats]).all()):
            return
        raise DivergedError(
            f"optimizer step {self.steps + 1}: the training diverged: the model has "
            f"{describe_non_finite(named)}; lower the learning rate or clip the gradient norm (max_grad_norm)"
        )

    def _scale(self) -> float | None:
        return self.loss_scaler.scale if self.loss_scaler is not None else None

    def _reset_accumulation(self) -> None:
        self._grads: list[list[Tensor | None]] = [[None] * len(self.params) for _ in (ORIG, AUG)]
        # num_o, den_o, num_a, den_a, kept on the device so micro-batches do not synchronise
        self._totals = torch.zeros(4, dtype=torch.float64, device=self.params[0].device)
        self._micro_batches = 0
        self._saved_buffers = []  # filled by the next step's first accumulate


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return math.nan if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / denominator


def _group_members(names: list[str], grouping: str) -> list[list[int]]:
    """Tensor indices per parameter group: the whole model, or one group per owning module."""
    if grouping == "model":
        return [list(range(len(names)))]
    modules: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        modules.setdefault(name.rpartition(".")[0], []).append(i)
    return list(modules.values())
