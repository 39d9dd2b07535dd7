"""Loss landscapes: the centre, restoration, directions, determinism, files and the figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models import TinyDetector, batch

from dpda.dualpath import WeightedCrossEntropy
from dpda.landscape import (
    Landscape,
    filter_normalized_directions,
    gradient_directions,
    loss_landscape,
    plot_landscape,
    surface_sharpness,
)

WEIGHTS = torch.tensor([0.1, 0.9])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model gains nothing from intra-op threads, and they crawl on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_model() -> TinyDetector:
    """A TinyDetector with BatchNorm whose running statistics have moved, left in train mode."""
    model = TinyDetector(batch_norm=True)
    x, _, _ = batch(size=12, seed=5)
    with torch.no_grad():
        model(x)  # train mode: updates the running statistics
    return model


def direct_loss(model, inputs, labels) -> float:
    model.eval()
    try:
        with torch.no_grad():
            return float(F.cross_entropy(model(inputs).double(), labels, weight=WEIGHTS.double()))
    finally:
        model.train()


def snapshot(model):
    return {name: value.clone() for name, value in model.state_dict().items()}


def assert_bitwise_equal(before, after):
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].dtype == after[name].dtype
        assert torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("directions", ["filter", "gradients"])
def test_centre_is_the_loss_at_theta_and_grid_shape(directions):
    model = trained_model()
    x, x_aug, labels = batch(size=10)
    result = loss_landscape(model, x, x_aug, labels, directions=directions, points=5, span=0.5, batch_size=4)
    assert result.loss_original.shape == result.loss_augmented.shape == (5, 5)
    assert result.loss_original.dtype == np.float64
    np.testing.assert_array_equal(result.alphas, [-0.5, -0.25, 0.0, 0.25, 0.5])
    np.testing.assert_array_equal(result.betas, result.alphas)
    assert result.directions == directions and result.span == 0.5
    i, j = result.centre
    assert result.loss_original[i, j] == pytest.approx(direct_loss(model, x, labels), abs=1e-6)
    assert result.loss_augmented[i, j] == pytest.approx(direct_loss(model, x_aug, labels), abs=1e-6)
    assert np.isfinite(result.loss_original).all() and np.isfinite(result.loss_augmented).all()
    # The surface is not flat: the directions move the loss.
    assert np.ptp(result.loss_original) > 1e-4 and np.ptp(result.loss_augmented) > 1e-4


@pytest.mark.parametrize("directions", ["filter", "gradients"])
def test_parameters_and_modes_restored_bitwise(directions):
    model = trained_model()
    model.norm.eval()  # a mixed-mode model: its flags must come back as they were
    before = snapshot(model)
    x, x_aug, labels = batch()
    loss_landscape(model, x, x_aug, labels, directions=directions, points=3)
    assert_bitwise_equal(before, snapshot(model))
    assert model.training and not model.norm.training and model.conv.training
    assert all(p.grad is None for p in model.parameters())


def test_parameters_restored_when_the_grid_fails():
    class FailingLoss(WeightedCrossEntropy):
        calls = 0

        def __call__(self, logits, labels):
            FailingLoss.calls += 1
            if FailingLoss.calls == 7:
                raise RuntimeError("boom")
            return super().__call__(logits, labels)

    model = trained_model()
    before = snapshot(model)
    x, x_aug, labels = batch()
    with pytest.raises(RuntimeError, match="boom"):
        loss_landscape(model, x, x_aug, labels, points=5, loss=FailingLoss())
    assert FailingLoss.calls == 7
    assert_bitwise_equal(before, snapshot(model))
    assert model.training


def test_filter_normalisation():
    model = trained_model()
    d1, d2 = filter_normalized_directions(model, seed=3)
    names = [name for name, p in model.named_parameters()]
    assert list(d1) == list(d2) == names
    for name, p in model.named_parameters():
        for d in (d1, d2):
            assert d[name].shape == p.shape and d[name].dtype == p.dtype
            if p.dim() <= 1:
                assert torch.count_nonzero(d[name]) == 0, name
            else:
                torch.testing.assert_close(
                    d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5, atol=1e-7
                )
    assert not torch.equal(d1["conv.weight"], d2["conv.weight"])


def test_deterministic_for_a_seed():
    model = trained_model()
    x, x_aug, labels = batch()
    first = loss_landscape(model, x, x_aug, labels, points=5, seed=11)
    again = loss_landscape(model, x, x_aug, labels, points=5, seed=11)
    other = loss_landscape(model, x, x_aug, labels, points=5, seed=12)
    np.testing.assert_array_equal(first.loss_original, again.loss_original)
    np.testing.assert_array_equal(first.loss_augmented, again.loss_augmented)
    assert not np.allclose(first.loss_original, other.loss_original)
    # Same centre whatever the directions.
    assert first.centre_loss() == other.centre_loss()


def test_gradient_directions_follow_autograd():
    model = trained_model()
    x, x_aug, labels = batch(size=10)
    d1, d2 = gradient_directions(model, x, x_aug, labels, batch_size=3)
    params = list(model.parameters())
    model.eval()
    flats = []
    for inputs in (x, x_aug):
        loss = F.cross_entropy(model(inputs), labels, weight=WEIGHTS)
        flats.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    model.train()
    theta_norm = torch.cat([p.detach().reshape(-1) for p in params]).norm()
    for direction, gradient in zip((d1, d2), flats):
        flat = torch.cat([direction[name].reshape(-1) for name, _ in model.named_parameters()])
        assert torch.cosine_similarity(flat, gradient, dim=0) == pytest.approx(1.0, abs=1e-5)
        assert flat.norm() == pytest.approx(float(theta_norm), rel=1e-5)
    landscape = loss_landscape(model, x, x_aug, labels, directions="gradients", points=3)
    expected = float(torch.cosine_similarity(flats[0], flats[1], dim=0))
    assert landscape.cosine == pytest.approx(expected, abs=1e-5)


def test_loss_decreases_along_the_negative_gradient():
    model = trained_model()
    x, x_aug, labels = batch(size=10)
    result = loss_landscape(model, x, x_aug, labels, directions="gradients", span=1e-3, points=3)
    i, j = result.centre
    assert result.loss_original[i - 1, j] < result.loss_original[i, j] < result.loss_original[i + 1, j]
    assert result.loss_augmented[i, j - 1] < result.loss_augmented[i, j] < result.loss_augmented[i, j + 1]


def test_invalid_arguments():
    model = TinyDetector()
    x, x_aug, labels = batch()
    with pytest.raises(ValueError, match="directions"):
        loss_landscape(model, x, x_aug, labels, directions="hessian")
    with pytest.raises(ValueError, match="odd"):
        loss_landscape(model, x, x_aug, labels, points=4)
    with pytest.raises(ValueError, match="span"):
        loss_landscape(model, x, x_aug, labels, span=0.0)
    with pytest.raises(ValueError, match="rows"):
        loss_landscape(model, x[:3], x_aug, labels)


def test_save_load_round_trip(tmp_path):
    model = TinyDetector()
    x, x_aug, labels = batch()
    result = loss_landscape(model, x, x_aug, labels, points=3, span=0.3)
    path = tmp_path / "surface.npz"
    result.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["surface.npz"]  # no temporary left behind
    loaded = Landscape.load(path)
    for name in ("alphas", "betas", "loss_original", "loss_augmented"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(result, name))
    assert loaded.directions == "filter" and loaded.span == 0.3
    assert loaded.cosine == result.cosine


def test_sharpness_ring():
    grid = np.linspace(-1.0, 1.0, 21)
    a, b = np.meshgrid(grid, grid, indexing="ij")
    bowl = Landscape(
        alphas=grid,
        betas=grid,
        loss_original=1 + a**2 + b**2,
        loss_augmented=1 + 4 * (a**2 + b**2),
        directions="filter",
        span=1.0,
    )
    sharpness = surface_sharpness(bowl)
    assert sharpness["radius"] == 0.5 and sharpness["ring_points"] > 8
    assert sharpness["original"] == pytest.approx(0.25, abs=0.03)
    assert sharpness["augmented"] == pytest.approx(4 * sharpness["original"])
    bowl.loss_augmented[0, 0] = math.inf  # outside the ring: no effect
    assert surface_sharpness(bowl)["augmented"] == pytest.approx(4 * sharpness["original"])


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    model = TinyDetector()
    x, x_aug, labels = batch()
    result = loss_landscape(model, x, x_aug, labels, points=5)
    result.loss_augmented[0, 0] = math.nan  # blank, not a failure
    path = tmp_path / "landscape.png"
    plot_landscape(result, path, title="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["landscape.png"]
