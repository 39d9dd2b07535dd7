"""The dual-path step against gradients computed independently with plain autograd."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from models import LoudOnlyBranch, TinyDetector, batch

from dpda.align import make_aligner
from dpda.dualpath import DualPathStep, LossScaler, WeightedCrossEntropy

WEIGHTS = torch.tensor([0.1, 0.9])


def path_gradients(model, x_orig, x_aug, labels, joint=True):
    """Each path's mean weighted-CE gradient as one flat vector, by plain autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    if joint:
        logits = model(torch.cat([x_orig, x_aug]))
        pieces = logits[: len(labels)], logits[len(labels) :]
    else:
        pieces = model(x_orig), model(x_aug)
    flats = []
    for piece in pieces:
        loss = F.cross_entropy(piece, labels, weight=WEIGHTS)
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flats.append(
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        )
    return flats


def sgd_step_with(model, flat_update, lr):
    expected = copy.deepcopy(model)
    offset = 0
    with torch.no_grad():
        for p in (p for p in expected.parameters() if p.requires_grad):
            p -= lr * flat_update[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
    return expected


def assert_same_parameters(a, b, atol=1e-6):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=atol, msg=f"parameter {name}")


@pytest.mark.parametrize("aligner", ["mean", "pcgrad", "gradvac", "cagrad", "upgrad"])
@pytest.mark.parametrize("mode", ["joint", "split"])
def test_step_applies_the_aligned_path_gradients(aligner, mode):
    model = TinyDetector(batch_norm=mode == "joint")
    x, x_aug, labels = batch()
    g_o, g_a = path_gradients(model, x, x_aug, labels, joint=mode == "joint")
    expected = sgd_step_with(model, make_aligner(aligner).align([g_o, g_a]), lr=0.1)
    engine = DualPathStep(model, torch.optim.SGD(model.parameters(), lr=0.1), aligner, mode=mode)
    stats = engine(x, x_aug, labels)
    assert_same_parameters(model, expected)
    assert not stats.skipped
    assert stats.inner == pytest.approx(float(g_o @ g_a), rel=1e-5, abs=1e-12)
    assert stats.norm_orig == pytest.approx(float(g_o.norm()), rel=1e-5)
    assert stats.norm_aug == pytest.approx(float(g_a.norm()), rel=1e-5)
    assert stats.cosine == pytest.approx(float(F.cosine_similarity(g_o, g_a, dim=0)), rel=1e-4, abs=1e-6)
    assert stats.conflict == bool(g_o @ g_a < 0)
    assert stats.result_norm == pytest.approx(float(make_aligner(aligner).align([g_o, g_a]).norm()), rel=1e-4)


def test_losses_are_the_weighted_cross_entropy_of_each_path():
    model = TinyDetector()
    x, x_aug, labels = batch()
    with torch.no_grad():
        expected = [F.cross_entropy(model(v), labels, weight=WEIGHTS).item() for v in (x, x_aug)]
    stats = DualPathStep(model, torch.optim.SGD(model.parameters(), lr=0.0))(x, x_aug, labels)
    assert stats.loss_orig == pytest.approx(expected[0], rel=1e-6)
    assert stats.loss_aug == pytest.approx(expected[1], rel=1e-6)


def test_concat_is_the_ordinary_step_and_equals_joint_mean():
    """One loss over 2B utterances; with the same labels on both paths its gradient is the mean
    of the two path gradients, so concat and joint+mean must agree (BatchNorm included)."""
    models = [TinyDetector(batch_norm=True) for _ in range(3)]
    x, x_aug, labels = batch()
    logits = models[2](torch.cat([x, x_aug]))
    F.cross_entropy(logits, torch.cat([labels, labels]), weight=WEIGHTS).backward()
    torch.optim.SGD(models[2].parameters(), lr=0.1).step()
    concat = DualPathStep(models[0], torch.optim.SGD(models[0].parameters(), lr=0.1), mode="concat")
    stats = concat(x, x_aug, labels)
    DualPathStep(models[1], torch.optim.SGD(models[1].parameters(), lr=0.1), "mean", mode="joint")(x, x_aug, labels)
    assert_same_parameters(models[0], models[2])
    assert_same_parameters(models[0], models[1])
    assert stats.cosine is None and stats.result_norm is not None


def test_split_equals_joint_without_batch_norm():
    models = [TinyDetector() for _ in range(2)]
    x, x_aug, labels = batch()
    for model, mode in zip(models, ("joint", "split")):
        DualPathStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "pcgrad", mode=mode)(x, x_aug, labels)
    assert_same_parameters(models[0], models[1], atol=1e-7)


@pytest.mark.parametrize("mode", ["joint", "split", "concat"])
@pytest.mark.parametrize("aligner", ["pcgrad", "gradvac"])
def test_accumulation_equals_the_larger_batch(mode, aligner):
    """K micro-batches with uneven label counts == one step on the K-times larger batch."""
    models = [TinyDetector() for _ in range(2)]
    x, x_aug, labels = batch(size=12)
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1])  # 4 / 0 / 1 bona fide per micro-batch
    engines = [DualPathStep(m, torch.optim.Adam(m.parameters(), lr=1e-2), aligner, mode=mode) for m in models]
    for _ in range(3):
        whole = engines[0](x, x_aug, labels)
        for part in range(3):
            rows = slice(4 * part, 4 * part + 4)
            engines[1].accumulate(x[rows], x_aug[rows], labels[rows])
        accumulated = engines[1].step()
        assert accumulated.loss_orig == pytest.approx(whole.loss_orig, rel=1e-6)
        assert accumulated.loss_aug == pytest.approx(whole.loss_aug, rel=1e-6)
    assert_same_parameters(models[0], models[1], atol=1e-6)


def test_gradient_clipping_after_alignment():
    model = TinyDetector()
    x, x_aug, labels = batch()
    g_o, g_a = path_gradients(model, x, x_aug, labels)
    aligned = make_aligner("pcgrad").align([g_o, g_a])
    max_norm = 0.5 * float(aligned.norm())
    expected = sgd_step_with(model, aligned * max_norm / (float(aligned.norm()) + 1e-6), lr=0.1)
    engine = DualPathStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "pcgrad", max_grad_norm=max_norm)
    stats = engine(x, x_aug, labels)
    assert_same_parameters(model, expected)
    assert stats.result_norm == pytest.approx(max_norm, rel=1e-5)
    assert stats.clip_coef == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("mode", ["joint", "split"])
def test_parameters_without_gradient_on_one_path(mode):
    """A parameter only the (loud) augmented path reaches, a frozen one and an unused one."""
    model = LoudOnlyBranch()
    x, x_aug, labels = batch()
    x, x_aug = x.clamp(-0.9, 0.9), 3 * x_aug
    if mode == "joint":  # the concatenated batch is loud, so both paths reach the branch
        g_o, g_a = path_gradients(model, x, x_aug, labels, joint=True)
    else:
        g_o, g_a = path_gradients(model, x, x_aug, labels, joint=False)
        # the module's own parameters come first: loud_gain is elements 0 and 1
        assert g_o[:2].abs().sum() == 0 and g_a[:2].abs().sum() > 0
    expected = sgd_step_with(model, make_aligner("pcgrad").align([g_o, g_a]), lr=0.1)
    DualPathStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "pcgrad", mode=mode)(x, x_aug, labels)
    assert_same_parameters(model, expected)
    assert torch.equal(model.frozen, torch.ones(2)) and torch.equal(model.unused, torch.zeros(3))


@pytest.mark.parametrize("aligner", ["pcgrad", "cagrad", "gradvac"])
def test_layer_grouping_aligns_each_module_separately(aligner):
    model = TinyDetector()
    x, x_aug, labels = batch()
    g_o, g_a = path_gradients(model, x, x_aug, labels)
    reference = make_aligner(aligner)  # one flat aligner per module: same state evolution
    expected_update, offset = [], 0
    for module in (model.conv, model.hidden, model.head):  # weight and bias of a module together
        size = sum(p.numel() for p in module.parameters())
        piece = slice(offset, offset + size)
        expected_update.append(make_aligner(aligner).align([g_o[piece], g_a[piece]]))
        offset += size
    expected = sgd_step_with(model, torch.cat(expected_update), lr=0.1)
    grouped = make_aligner(aligner, grouping="layer")
    DualPathStep(model, torch.optim.SGD(model.parameters(), lr=0.1), grouped)(x, x_aug, labels)
    assert_same_parameters(model, expected)
    assert reference.grouping == "model" and grouped.grouping == "layer"
    if aligner == "gradvac":
        assert grouped.state_dict()["rho_target"].shape == (3, 2, 2)


def test_non_finite_gradient_skips_the_step():
    model = TinyDetector()
    before = copy.deepcopy(model)
    x, x_aug, labels = batch()
    x_aug[2, 10] = float("nan")
    engine = DualPathStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "pcgrad")
    stats = engine(x, x_aug, labels)
    assert stats.skipped and engine.skipped_steps == 1
    assert_same_parameters(model, before, atol=0)
    assert all(p.grad is None for p in model.parameters())
    stats = engine(*batch())  # the next finite step goes through
    assert not stats.skipped and engine.skipped_steps == 1 and engine.steps == 2


@pytest.mark.parametrize("mode", ["joint", "concat"])
def test_undefined_loss_skips_the_step(mode):
    """Class weight 0 for the only class in the batch: the weighted mean loss is 0/0."""
    model = TinyDetector()
    before = copy.deepcopy(model)
    x, x_aug, _ = batch()
    engine = DualPathStep(
        model, torch.optim.SGD(model.parameters(), lr=0.1), "pcgrad", mode=mode, loss=WeightedCrossEntropy([1.0, 0.0])
    )
    stats = engine(x, x_aug, torch.ones(len(x), dtype=torch.long))
    assert stats.skipped and math.isnan(stats.loss_orig)
    assert_same_parameters(model, before, atol=0)


def test_bf16_autocast_step_is_close_to_fp32():
    models = [TinyDetector() for _ in range(2)]
    x, x_aug, labels = batch()
    for model, precision in zip(models, ("fp32", "bf16")):
        stats = DualPathStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "pcgrad", precision=precision)(
            x, x_aug, labels
        )
        assert not stats.skipped and math.isfinite(stats.cosine)
    assert_same_parameters(models[0], models[1], atol=2e-2)


def test_fp16_gradients_are_unscaled_and_overflow_backs_off():
    models = [TinyDetector() for _ in range(2)]
    x, x_aug, labels = batch()
    DualPathStep(models[0], torch.optim.SGD(models[0].parameters(), lr=0.1), "pcgrad")(x, x_aug, labels)
    scaler = LossScaler(scale=2.0**70)  # overflows fp16 activations' gradients
    engine = DualPathStep(
        models[1], torch.optim.SGD(models[1].parameters(), lr=0.1), "pcgrad", precision="fp16", loss_scaler=scaler
    )
    before = copy.deepcopy(models[1])
    stats = engine(x, x_aug, labels)
    assert stats.skipped and scaler.scale == 2.0**69
    assert_same_parameters(models[1], before, atol=0)
    scaler.scale = 2.0**10
    stats = engine(x, x_aug, labels)
    assert not stats.skipped and stats.loss_scale == 2.0**10
    assert_same_parameters(models[0], models[1], atol=1e-2)


def test_engine_state_round_trip():
    x, x_aug, labels = batch()
    model = TinyDetector()
    engine = DualPathStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "gradvac", precision="fp16")
    engine(x, x_aug, labels)
    state = engine.state_dict()
    assert set(state) == {"aligner.rho_target", "loss_scaler.scale", "loss_scaler.good_steps", "steps", "skipped_steps"}
    other = DualPathStep(TinyDetector(), torch.optim.SGD(model.parameters(), lr=0.1), "gradvac", precision="fp16")
    other.load_state_dict(state)
    assert other.state_dict().keys() == state.keys()
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    fp32 = DualPathStep(TinyDetector(), torch.optim.SGD(model.parameters(), lr=0.1), "gradvac")
    with pytest.raises(KeyError, match="fp16"):
        fp32.load_state_dict(state)


def test_bad_input_is_a_clear_error():
    model = TinyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, x_aug, labels = batch()
    engine = DualPathStep(model, optimizer)
    with pytest.raises(ValueError, match="same shape"):
        engine.accumulate(x, x_aug[:, :-1], labels)
    with pytest.raises(ValueError, match="labels"):
        engine.accumulate(x, x_aug, labels[:-1])
    with pytest.raises(ValueError, match="integer"):
        engine.accumulate(x, x_aug, labels.float())
    with pytest.raises(RuntimeError, match="before accumulate"):
        engine.step()
    with pytest.raises(ValueError, match="valid modes"):
        DualPathStep(model, optimizer, mode="both")
    with pytest.raises(ValueError, match="precision"):
        DualPathStep(model, optimizer, precision="fp8")
    with pytest.raises(ValueError, match="class weights"):
        WeightedCrossEntropy([0.5])
