"""Loss landscapes around trained weights, for the original and the augmented path side by side.

The surface is ``L(theta + a * d1 + b * d2)`` for ``a, b`` on a ``points x points`` grid in
``[-span, span]`` (after Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"; the
paper's Figure 3 shows it smooth for original inputs and rugged for augmented ones). Every grid
point is evaluated on the original inputs and on the augmented inputs with the same weights.

Conventions of this module:

* Only trainable parameters (``requires_grad``) move; frozen ones and buffers stay as they are.
  The model is evaluated in eval mode (BatchNorm running statistics, no dropout) and without
  autograd; every module's training flag and every parameter are restored exactly afterwards,
  also when the evaluation fails part-way.
* The loss of a path is ``sum numerators / sum denominators`` of a :class:`PathLoss` over the
  batches (default :class:`WeightedCrossEntropy`, the training loss), accumulated in float64.
* ``directions="filter"``: two Gaussian directions drawn with a ``torch.Generator`` seeded with
  ``seed`` (on the CPU in float32, so the same seed gives the same directions on any device).
  Each parameter with more than one dimension is filter-normalised: every slice along dim 0 of
  the direction (an output filter, or a row of a linear weight) is rescaled to the norm of the
  same slice of the weight. One-dimensional parameters (biases, norm scales and shifts) get a
  zero direction, the usual choice in Li et al.: rescaling them would move them by their whole
  size, which says little about the shape of the surface.
* ``directions="gradients"``: ``d1`` is the gradient of the original-path loss and ``d2`` that of
  the augmented-path loss at ``theta`` (one autograd pass per path on the given inputs, in eval
  mode, so the gradients are those of the plotted surface). Each is rescaled so that its norm
  over all trainable parameters equals the norm of ``theta`` over the same parameters; one unit
  of ``a`` or ``b`` is then as long a step as in the filter mode, globally (span 1 moves the
  weights by ``|theta|``). ``-d1`` and ``-d2`` are the two paths' steepest-descent directions; the
  two axes are not orthogonal when the gradients are correlated (``Landscape.cosine`` holds the
  cosine between them, negative when the paths conflict).
* The grid has an odd number of points so that ``theta`` itself (``a = b = 0``) lies on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from dpda.config import ExperimentConfig

from dpda.atomic import atomic_path
from dpda.dualpath.loss import PathLoss, WeightedCrossEntropy, logits_of
from dpda.errors import DpdaError
from dpda.names import DIRECTIONS

__all__ = [
    "DIRECTIONS",
    "Landscape",
    "LandscapeError",
    "filter_normalized_directions",
    "gradient_directions",
    "loss_landscape",
    "plot_landscape",
    "surface_sharpness",
]

#: The kinds of direction pairs ``loss_landscape`` can span.
_AXIS_NAMES = {
    "filter": ("random direction 1 (filter-normalised)", "random direction 2 (filter-normalised)"),
    "gradients": ("original-path gradient", "augmented-path gradient"),
}

Directions = dict[str, Tensor]


class LandscapeError(DpdaError, ValueError):
    """A landscape that cannot be taken as asked: a bad grid, directions or span, a model with
    nothing to perturb, or a gradient or loss that gives no direction."""


@dataclass
class Landscape:
    """A loss surface on a grid: ``loss_original[i, j]`` is the loss at ``alphas[i]``, ``betas[j]``.

    ``cosine`` is the cosine between the two directions (over all trainable parameters).
    """

    alphas: np.ndarray
    betas: np.ndarray
    loss_original: np.ndarray
    loss_augmented: np.ndarray
    directions: str
    span: float
    cosine: float = field(default=math.nan)

    def __post_init__(self) -> None:
        self.alphas = np.asarray(self.alphas, dtype=np.float64)
        self.betas = np.asarray(self.betas, dtype=np.float64)
        self.loss_original = np.asarray(self.loss_original, dtype=np.float64)
        self.loss_augmented = np.asarray(self.loss_augmented, dtype=np.float64)
        self.directions = str(self.directions)
        self.span = float(self.span)
        self.cosine = float(self.cosine)
        shape = (self.alphas.size, self.betas.size)
        if self.alphas.ndim != 1 or self.betas.ndim != 1:
            raise ValueError("alphas and betas must be one-dimensional")
        for name in ("loss_original", "loss_augmented"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {getattr(self, name).shape}")

    @property
    def centre(self) -> tuple[int, int]:
        """Grid indices of ``theta`` (``a = b = 0``)."""
        return self.alphas.size // 2, self.betas.size // 2

    def centre_loss(self) -> dict[str, float]:
        """The loss of each path at ``theta``."""
        i, j = self.centre
        return {"original": float(self.loss_original[i, j]), "augmented": float(self.loss_augmented[i, j])}

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` file (no pickle) atomically: a temporary file beside it, then a rename."""
        with atomic_path(path, fsync=False) as temporary, temporary.open("wb") as handle:
            # a file object: np.savez appends no ".npz"
            np.savez(
                handle,
                alphas=self.alphas,
                betas=self.betas,
                loss_original=self.loss_original,
                loss_augmented=self.loss_augmented,
                directions=np.array(self.directions),
                span=np.array(self.span),
                cosine=np.array(self.cosine),
            )

    @classmethod
    def load(cls, path: str | Path) -> Landscape:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                alphas=data["alphas"],
                betas=data["betas"],
                loss_original=data["loss_original"],
                loss_augmented=data["loss_augmented"],
                directions=str(data["directions"]),
                span=float(data["span"]),
                cosine=float(data["cosine"]) if "cosine" in data.files else math.nan,
            )


# -- directions -------------------------------------------------------------------------------------
def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise LandscapeError("the model has no trainable parameters (requires_grad) to perturb")
    return named


def filter_normalized_directions(model: nn.Module, seed: int = 0) -> tuple[Directions, Directions]:
    """Two random Gaussian directions over the trainable parameters, filter-normalised.

    For a parameter with ``dim > 1``, slice ``k`` along dim 0 of each direction has the norm of
    slice ``k`` of the parameter (a zero slice of the parameter gives a zero slice); 1-D parameters
    get zeros. Draws come from ``torch.Generator().manual_seed(seed)`` on the CPU in float32, the
    first direction for every parameter (in ``named_parameters`` order), then the second.
    """
    named = _trainable(model)
    generator = torch.Generator().manual_seed(seed)
    pair: list[Directions] = []
    for _ in range(2):
        direction: Directions = {}
        for name, p in named:
            if p.dim() <= 1:
                direction[name] = torch.zeros_like(p)
                continue
            draw = torch.randn(p.shape, generator=generator, dtype=torch.float32).double()
            d_norm = draw.flatten(1).norm(dim=1)
            w_norm = p.detach().flatten(1).double().norm(dim=1).cpu()
            scale = torch.where(d_norm > 0, w_norm / d_norm.clamp_min(1e-300), torch.zeros_like(d_norm))
            draw *= scale.view(-1, *([1] * (p.dim() - 1)))
            direction[name] = draw.to(p.device, p.dtype)
        pair.append(direction)
    return pair[0], pair[1]


def gradient_directions(
    model: nn.Module,
    original: Tensor,
    augmented: Tensor,
    labels: Tensor,
    *,
    loss: PathLoss | None = None,
    batch_size: int = 16,
) -> tuple[Directions, Directions]:
    """The gradients of the original-path and the augmented-path loss at the current weights, in
    eval mode, each rescaled to the norm of the trainable parameters (see the module docstring).

    Raises ``ValueError`` when a path's gradient is zero or not finite (no direction to follow).
    The parameters' ``.grad`` are left untouched.
    """
    original, augmented, labels = _check_inputs(original, augmented, labels, batch_size)
    loss = WeightedCrossEntropy() if loss is None else loss
    named = _trainable(model)
    params = [p for _, p in named]
    theta_norm = _norm([p.detach() for p in params])
    device = params[0].device
    flags = _training_flags(model)
    model.eval()
    try:
        pair = []
        for path, inputs in (("original", original), ("augmented", augmented)):
            grads = _path_gradient(model, params, inputs.to(device), labels.to(device), loss, batch_size)
            g_norm = _norm(grads)
            if not math.isfinite(g_norm) or g_norm == 0:
                raise LandscapeError(f"the {path}-path gradient has norm {g_norm}; it gives no direction")
            factor = theta_norm / g_norm
            pair.append({name: g.mul_(factor) for (name, _), g in zip(named, grads)})
    finally:
        _restore_flags(flags)
    return pair[0], pair[1]


def _path_gradient(
    model: nn.Module, params: list[nn.Parameter], inputs: Tensor, labels: Tensor, loss: PathLoss, batch_size: int
) -> list[Tensor]:
    grads = [torch.zeros_like(p) for p in params]
    denominator = 0.0
    with torch.enable_grad():
        for start in range(0, len(labels), batch_size):
            numerator, den = loss(
                logits_of(model(inputs[start : start + batch_size])), labels[start : start + batch_size]
            )
            denominator += float(den)
            if not numerator.requires_grad:
                continue
            pieces = torch.autograd.grad(numerator, params, allow_unused=True)
            for total, piece in zip(grads, pieces):
                if piece is not None:
                    total.add_(piece)
    if denominator == 0:
        raise LandscapeError("the loss denominators sum to zero on these labels")
    for g in grads:
        g.div_(denominator)
    return grads


def _norm(tensors: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def _cosine(d1: Directions, d2: Directions) -> float:
    dot = sum(float((d1[name].double() * d2[name].double()).sum()) for name in d1)
    n1, n2 = _norm(list(d1.values())), _norm(list(d2.values()))
    return dot / (n1 * n2) if n1 > 0 and n2 > 0 else math.nan


# -- the surface ------------------------------------------------------------------------------------
def loss_landscape(
    model: nn.Module,
    original: Tensor,
    augmented: Tensor,
    labels: Tensor,
    *,
    directions: str = "filter",
    span: float = 1.0,
    points: int = 21,
    loss: PathLoss | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: Callable[[int, int], object] | None = None,
) -> Landscape:
    """The two paths' loss on a ``points x points`` grid around the model's weights.

    ``original`` and ``augmented`` are input batches (e.g. ``(N, T)`` audio) with one label each
    in ``labels`` (``(N,)``); they are moved to the model's device once and fed ``batch_size`` at a
    time. ``points`` must be odd (>= 3) so that the centre is on the grid; ``seed`` only matters
    for ``directions="filter"``. ``progress(done, total)`` is called after every grid point.
    The model comes back with bitwise the same parameters and the same training flags.
    """
    if directions not in DIRECTIONS:
        raise LandscapeError(f"unknown directions {directions!r}; valid: {', '.join(DIRECTIONS)}")
    if not (isinstance(span, (int, float, np.number)) and math.isfinite(span) and span > 0):
        raise LandscapeError(f"span must be a finite number > 0, got {span!r}")
    if not isinstance(points, (int, np.integer)) or points < 3 or points % 2 == 0:
        raise LandscapeError(f"points must be an odd integer >= 3 (the centre on the grid), got {points!r}")
    original, augmented, labels = _check_inputs(original, augmented, labels, batch_size)
    loss = WeightedCrossEntropy() if loss is None else loss

    if directions == "filter":
        d1, d2 = filter_normalized_directions(model, seed)
    else:
        d1, d2 = gradient_directions(model, original, augmented, labels, loss=loss, batch_size=batch_size)
    cosine = _cosine(d1, d2)

    named = _trainable(model)
    device = named[0][1].device
    original, augmented, labels = original.to(device), augmented.to(device), labels.to(device)
    points, span = int(points), float(span)
    half = points // 2
    grid = span * (np.arange(points) - half) / half  # exactly 0 in the middle
    surfaces = np.full((2, points, points), np.nan)

    flags = _training_flags(model)
    saved = [p.detach().clone() for _, p in named]
    model.eval()
    try:
        with torch.no_grad():
            for i, a in enumerate(grid):
                for j, b in enumerate(grid):
                    for (name, p), theta in zip(named, saved):
                        p.copy_(theta)
                        if a != 0:
                            p.add_(d1[name], alpha=float(a))
                        if b != 0:
                            p.add_(d2[name], alpha=float(b))
                    surfaces[0, i, j] = _path_loss(model, original, labels, loss, batch_size)
                    surfaces[1, i, j] = _path_loss(model, augmented, labels, loss, batch_size)
                    if progress is not None:
                        progress(i * points + j + 1, points * points)
    finally:
        with torch.no_grad():
            for (_, p), theta in zip(named, saved):
                p.copy_(theta)
        _restore_flags(flags)
    return Landscape(
        alphas=grid,
        betas=grid.copy(),
        loss_original=surfaces[0],
        loss_augmented=surfaces[1],
        directions=directions,
        span=float(span),
        cosine=cosine,
    )


def _path_loss(model: nn.Module, inputs: Tensor, labels: Tensor, loss: PathLoss, batch_size: int) -> float:
    numerator = torch.zeros((), dtype=torch.float64, device=labels.device)
    denominator = torch.zeros((), dtype=torch.float64, device=labels.device)
    for start in range(0, len(labels), batch_size):
        num, den = loss(logits_of(model(inputs[start : start + batch_size])), labels[start : start + batch_size])
        numerator += num.detach().double()
        denominator += torch.as_tensor(den).detach().double().to(labels.device)
    num_value, den_value = float(numerator), float(denominator)
    if den_value == 0:
        return math.nan if num_value == 0 else math.copysign(math.inf, num_value)
    return num_value / den_value


def _check_inputs(
    original: Tensor, augmented: Tensor, labels: Tensor, batch_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if labels.dim() != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    for name, inputs in (("original", original), ("augmented", augmented)):
        if inputs.dim() == 0 or inputs.shape[0] != len(labels):
            raise ValueError(
                f"{name} inputs must have {len(labels)} rows to match labels, got shape {tuple(inputs.shape)}"
            )
    return original, augmented, labels.long()


def _training_flags(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(module, module.training) for module in model.modules()]


def _restore_flags(flags: list[tuple[nn.Module, bool]]) -> None:
    for module, training in flags:
        module.training = training


# -- summaries --------------------------------------------------------------------------------------
def surface_sharpness(landscape: Landscape) -> dict[str, float]:
    """Mean loss increase over the ring of radius ``span / 2`` around the centre, per path.

    The ring is the set of grid points whose distance ``sqrt(a^2 + b^2)`` from the centre lies
    within half a grid step of ``span / 2`` (exact losses, no interpolation); the value of a path
    is the mean loss over those points minus the loss at the centre (non-finite losses count as
    ``inf``). A larger number is a sharper, more rugged neighbourhood. The dict holds
    ``"original"``, ``"augmented"``, ``"radius"`` and ``"ring_points"`` (how many points).
    """
    a, b = np.meshgrid(landscape.alphas, landscape.betas, indexing="ij")
    radius = landscape.span / 2
    step = (landscape.alphas[-1] - landscape.alphas[0]) / max(landscape.alphas.size - 1, 1)
    ring = np.abs(np.hypot(a, b) - radius) <= step / 2 * (1 + 1e-9)
    ring[landscape.centre] = False
    if not ring.any():
        raise LandscapeError("the grid has no points on the ring of radius span / 2")
    result: dict[str, float] = {}
    i, j = landscape.centre
    for path, surface in (("original", landscape.loss_original), ("augmented", landscape.loss_augmented)):
        values = np.where(np.isfinite(surface[ring]), surface[ring], np.inf)
        result[path] = float(values.mean() - surface[i, j])
    result["radius"] = float(radius)
    result["ring_points"] = float(ring.sum())
    return result


def plot_landscape(landscape: Landscape, path_png: str | Path, title: str | None = None) -> None:
    """Two filled contour panels (original | augmented) with one colour scale, the centre marked.

    Colour levels are log-spaced between the smallest and the largest finite loss of both panels:
    a cross-entropy surface spans orders of magnitude away from the minimum, and over a narrow
    range log spacing is nearly linear anyway. Non-finite losses are left blank. The PNG is drawn
    with Agg (no pyplot, so no global backend change and no figure left open) and written to a
    temporary file beside the target, then renamed onto it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    path_png = Path(path_png)
    surfaces = (landscape.loss_original, landscape.loss_augmented)
    finite = np.concatenate([s[np.isfinite(s)] for s in surfaces])
    positive = finite[finite > 0]
    levels = None
    if positive.size:
        low, high = float(positive.min()), float(positive.max())
        if high <= low * (1 + 1e-9):
            low, high = low / 1.001, high * 1.001
        levels = np.geomspace(low, high, 25)

    figure = Figure(figsize=(11, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    try:
        axes = figure.subplots(1, 2, sharex=True, sharey=True)
        x_label, y_label = _AXIS_NAMES.get(landscape.directions, ("direction 1", "direction 2"))
        filled = None
        for ax, surface, name in zip(axes, surfaces, ("original inputs", "augmented inputs")):
            # Rows of the array are alphas (x), so matplotlib's (y, x) layout needs the transpose.
            z = np.ma.masked_invalid(surface.T)
            if levels is not None:
                filled = ax.contourf(
                    landscape.alphas,
                    landscape.betas,
                    z,
                    levels=levels,
                    norm=LogNorm(levels[0], levels[-1]),
                    cmap="viridis",
                    extend="both",
                )
                ax.contour(
                    landscape.alphas, landscape.betas, z, levels=levels[::3], colors="k", linewidths=0.4, alpha=0.5
                )
            else:
                ax.text(0.5, 0.5, "no finite positive loss", ha="center", va="center", transform=ax.transAxes)
            i, j = landscape.centre
            ax.plot(0.0, 0.0, marker="*", color="red", markersize=11, markeredgecolor="white")
            ax.set_title(f"{name}: loss at centre {surface[i, j]:.4g}")
            ax.set_xlabel(f"α · {x_label}")
            ax.set_aspect("equal")
            ax.locator_params(nbins=5)
        axes[0].set_ylabel(f"β · {y_label}")
        if filled is not None and levels is not None:
            colorbar = figure.colorbar(
                filled, ax=list(axes), label="loss (log-spaced levels)", ticks=levels[::4], format="%.3g"
            )
            colorbar.minorticks_off()
        if title:
            figure.suptitle(title)
        with atomic_path(path_png, fsync=False) as temporary:
            figure.savefig(temporary, format="png", dpi=120)
    finally:
        figure.clear()


def checkpoint_landscape(
    model: nn.Module,
    config: ExperimentConfig,
    device: torch.device,
    *,
    directions: str = "filter",
    points: int = 21,
    span: float = 1.0,
    utterances: int = 64,
    seed: int = 0,
) -> Landscape:
    """``loss_landscape`` of a trained detector on ``utterances`` dev utterances of its config
    (drawn with ``seed``, cropped as in training) and their augmented versions, with a progress bar."""
    from tqdm import tqdm

    from dpda.data import AudioDataset
    from dpda.data.dataset import collate
    from dpda.data.sets import DataError, dataset_root, read_dataset
    from dpda.train.build import make_chain

    if config.data.dev is None:
        raise DataError("the config has no dev set; give one with --set data.dev={kind: ..., protocol: ...}")
    records = read_dataset(config.data.dev, "dev", config.data.validate, progress=False)
    chosen = sorted(torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))[:utterances].tolist())
    dataset = AudioDataset(
        [records[i] for i in chosen],
        dataset_root(config.data.dev),
        length=config.data.crop_length,
        sample_rate=config.data.sample_rate,
    )
    original, labels, _ = collate([dataset[i] for i in range(len(dataset))])
    original = original.to(device)
    augmented = make_chain(config).to(device).augment(original, torch.Generator(device).manual_seed(seed)).audio
    with tqdm(total=points**2, desc="loss landscape", unit="point") as bar:
        return loss_landscape(
            model,
            original,
            augmented,
            labels.to(device),
            directions=directions,
            span=span,
            points=points,
            seed=seed,
            batch_size=config.eval.batch_size,
            progress=lambda done, total: bar.update(1),
        )
