"""Aligner edge cases, low-precision inputs, state round trips, torchjd methods and errors."""

from __future__ import annotations

import pytest
import torch
from torchjd import aggregation

from dpda.align import ALIGNERS, make_aligner

ALL = sorted(ALIGNERS)
PAPER = ["pcgrad", "gradvac", "cagrad"]


def random_pair(cosine: float, ratio: float = 1.0, size: int = 64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(size, generator=generator, dtype=torch.float64)
    u /= u.norm()
    v = torch.randn(size, generator=generator, dtype=torch.float64)
    v -= (v @ u) * u
    v /= v.norm()
    return u.float(), (ratio * (cosine * u + (1 - cosine**2) ** 0.5 * v)).float()


@pytest.mark.parametrize("name", ALL)
def test_zero_gradient_on_one_path_is_finite(name):
    g, _ = random_pair(0.0)
    for pair in ([g, torch.zeros_like(g)], [torch.zeros_like(g), g]):
        result = make_aligner(name).align(pair)
        assert torch.isfinite(result).all()
        # the result lies along the only non-zero gradient
        assert abs(torch.nn.functional.cosine_similarity(result, g, dim=0)) > 1 - 1e-5 or result.norm() == 0


@pytest.mark.parametrize("name", ALL)
def test_identical_and_opposite_gradients_are_finite(name):
    g, _ = random_pair(0.0)
    for pair in ([g, g.clone()], [g, -g], [g, -3 * g]):
        assert torch.isfinite(make_aligner(name).align(pair)).all(), pair


@pytest.mark.parametrize("name, factor", [("pcgrad", 1.0), ("gradvac", 1.0), ("cagrad", 1.5 / 1.25)])
def test_paper_aligners_on_identical_gradients(name, factor):
    """PCGrad and GradVac return the gradient; CAGrad returns (1 + c) / (1 + c^2) times it."""
    g, _ = random_pair(0.0)
    torch.testing.assert_close(make_aligner(name).align([g, g.clone()]), factor * g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_opposite_gradients_cancel(name):
    g, _ = random_pair(0.0)
    for k in (1.0, 3.0, 0.25):
        result = make_aligner(name).align([g, -k * g])
        assert result.norm() <= 1e-5 * g.norm() * max(k, 1)


def test_pcgrad_result_does_not_conflict_with_either_path():
    for seed, cosine in enumerate((-0.9, -0.5, -0.1)):
        g_o, g_a = random_pair(cosine, ratio=3.0, seed=seed)
        result = make_aligner("pcgrad").align([g_o, g_a])
        assert result @ g_o >= -1e-6 and result @ g_a >= -1e-6


def test_no_conflict_pcgrad_and_gradvac_reduce_to_mean():
    g_o, g_a = random_pair(0.4, ratio=2.0)
    mean = (g_o + g_a) / 2
    torch.testing.assert_close(make_aligner("pcgrad").align([g_o, g_a]), mean)
    torch.testing.assert_close(make_aligner("gradvac").align([g_o, g_a]), mean)  # target starts at 0
    torch.testing.assert_close(make_aligner("mean").align([g_o, g_a]), mean)
    torch.testing.assert_close(make_aligner("sum").align([g_o, g_a]), g_o + g_a)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", PAPER)
def test_low_precision_inputs_use_a_float32_gram(name, dtype):
    # 70000 elements of size 1: the squared norm (70000) overflows float16 (max 65504)
    g_o = torch.ones(70000)
    g_a = -0.5 * torch.ones(70000)
    g_a[::2] = 1.0
    expected = make_aligner(name).align([g_o, g_a])
    result = make_aligner(name).align([g_o.to(dtype), g_a.to(dtype)])
    assert result.dtype == dtype
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result.float(), expected, rtol=2e-2, atol=2e-2)


def test_align_leaves_inputs_unchanged():
    g_o, g_a = random_pair(-0.5)
    copies = g_o.clone(), g_a.clone()
    make_aligner("pcgrad").align([g_o, g_a])
    assert torch.equal(g_o, copies[0]) and torch.equal(g_a, copies[1])


def test_gradvac_state_round_trip_continues_identically():
    pairs = [random_pair(c, ratio=r, seed=i) for i, (c, r) in enumerate([(0.8, 1), (0.6, 2), (-0.3, 1), (0.1, 5)])]
    uninterrupted = make_aligner("gradvac")
    expected = [uninterrupted.align(list(p)) for p in pairs]
    first = make_aligner("gradvac")
    for p in pairs[:2]:
        first.align(list(p))
    resumed = make_aligner("gradvac")
    resumed.load_state_dict(first.state_dict())
    for p, e in zip(pairs[2:], expected[2:]):
        assert torch.equal(resumed.align(list(p)), e)


def test_gradvac_per_layer_groups_keep_separate_targets():
    aligner = make_aligner("gradvac", grouping="layer")
    assert aligner.grouping == "layer"
    gram = torch.tensor([[[1.0, 0.8], [0.8, 1.0]], [[1.0, -0.5], [-0.5, 1.0]]], dtype=torch.float64)
    aligner.weights(gram)
    target = aligner.state_dict()["rho_target"]
    assert target.shape == (2, 2, 2)
    assert target[0, 0, 1] == pytest.approx(0.4) and target[1, 0, 1] == 0.0
    with pytest.raises(ValueError, match="groups"):
        aligner.weights(gram[:1])


def test_state_errors_are_clear():
    with pytest.raises(KeyError, match="stateless"):
        make_aligner("pcgrad").load_state_dict({"rho_target": torch.zeros(1, 2, 2)})
    with pytest.raises(KeyError, match="rho_target"):
        make_aligner("gradvac").load_state_dict({"rho": torch.zeros(1, 2, 2)})
    with pytest.raises(ValueError, match="shape"):
        make_aligner("gradvac").load_state_dict({"rho_target": torch.zeros(2, 2)})


def test_unknown_aligner_lists_valid_names():
    with pytest.raises(ValueError) as error:
        make_aligner("pcgard")
    for name in ("pcgrad", "gradvac", "cagrad", "mean", "upgrad", "nash_mtl"):
        assert name in str(error.value)


def test_invalid_options_are_clear_errors():
    with pytest.raises(ValueError, match="cagrad"):
        make_aligner("cagrad", alpha=0.5)
    with pytest.raises(ValueError, match="beta"):
        make_aligner("gradvac", beta=2.0)
    with pytest.raises(ValueError, match="shape"):
        make_aligner("pcgrad").weights(torch.eye(2))


@pytest.mark.parametrize(
    "name, aggregator",
    [
        ("mgda", lambda: aggregation.MGDA()),
        ("upgrad", lambda: aggregation.UPGrad()),
        ("dualproj", lambda: aggregation.DualProj()),
        ("imtl_g", lambda: aggregation.IMTLG()),
        ("aligned_mtl", lambda: aggregation.AlignedMTL()),
        ("fairgrad", lambda: aggregation.FairGrad(alpha=1.0)),
        ("config", lambda: aggregation.ConFIG()),
        ("nash_mtl", lambda: aggregation.NashMTL(n_tasks=2, max_norm=0.0)),
    ],
)
def test_torchjd_methods_equal_torchjd_on_the_full_jacobian(name, aggregator):
    """dpda hands torchjd only the Gram matrix (or a 2x2 root of it); the result must equal
    torchjd's own aggregation of the full two-row Jacobian."""
    for seed, (cosine, ratio) in enumerate([(-0.7, 2.0), (0.3, 0.5), (-0.05, 8.0)]):
        g_o, g_a = (g.double() for g in random_pair(cosine, ratio, size=500, seed=seed))
        expected = aggregator()(torch.stack([g_o, g_a]))
        result = make_aligner(name).align([g_o, g_a])
        torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-7 * float(expected.norm()))


def test_every_aligner_has_a_summary_for_the_command_line():
    from dpda.align import SUMMARIES

    assert set(SUMMARIES) == set(ALIGNERS)
