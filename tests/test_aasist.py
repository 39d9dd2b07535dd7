"""AASIST, AASIST-L and the SSL (XLSR-AASIST) back-end against the published weights and layouts."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from dpda.models.aasist import AASIST, AASIST_CONFIG, AASIST_L_CONFIG, SincConv, XLSRAASISTBackEnd


def _layout_digest(state: dict[str, torch.Tensor]) -> str:
    """A fingerprint of a state dict's key names and shapes (not of its values)."""
    lines = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in sorted(state.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


# Fingerprints of the published layouts, taken from clovaai/aasist's models/weights/AASIST.pth
# and AASIST-L.pth and from the state dict of the paper's nets/aasist.py Model minus
# ``ssl_model.*`` (245 entries).
AASIST_LAYOUT = "89a856c1dcca15085b3153e2d65cc79b8ef4471f1de9d047c32f59eb69a08487"
AASIST_L_LAYOUT = "050d9e638a1cc18da8d6b25df409e6c11a66dd710cb56c203ed833c2e84e2896"
XLSR_BACKEND_LAYOUT = "df926141efad44a5ae39ff2e03ce5f1016514d46612a7a5faea64cfac0a0d044"


def _n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def checkpoint(reference_dir):
    return torch.load(reference_dir / "aasist" / "AASIST.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def published(checkpoint):
    model = AASIST(**AASIST_CONFIG)
    model.load_state_dict(checkpoint, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------
# AASIST: published weights and outputs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["", "_short"])
def test_reproduces_reference_outputs(published, reference_dir, suffix):
    reference = np.load(reference_dir / "aasist" / "AASIST_reference.npz")
    with torch.no_grad():
        embedding, logits = published(torch.from_numpy(reference[f"x{suffix}"]))
    assert embedding.shape == reference[f"embedding{suffix}"].shape
    np.testing.assert_allclose(embedding.numpy(), reference[f"embedding{suffix}"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(logits.numpy(), reference[f"logits{suffix}"], rtol=0, atol=1e-4)


def test_checkpoint_layout_and_config(checkpoint, reference_dir):
    assert _layout_digest(checkpoint) == AASIST_LAYOUT
    assert _layout_digest(AASIST(**AASIST_CONFIG).state_dict()) == AASIST_LAYOUT
    published_config = json.loads((reference_dir / "aasist" / "AASIST.json").read_text())
    assert {k: v for k, v in published_config.items() if k != "architecture"} == AASIST_CONFIG
    AASIST.from_config(published_config).load_state_dict(checkpoint, strict=True)


def test_parameter_count_and_frozen_bn1():
    model = AASIST(**AASIST_CONFIG)
    assert _n_parameters(model) == 297_866  # clovaai: 297K
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"encoder.{i}.0.bn1.{kind}" for i in range(1, 6) for kind in ("weight", "bias")}


def test_sinc_front_end_is_fixed_and_outside_the_state_dict():
    sinc = SincConv(70, 128)
    assert sinc.kernel_size == 129 and sinc.band_pass.shape == (70, 1, 129)
    assert not list(sinc.parameters()) and not sinc.state_dict()
    assert torch.equal(sinc.band_pass, sinc.band_pass.flip(-1))  # symmetric (linear phase)
    # each filter passes its own mel band: the band centre's gain beats the neighbours'
    freqs = torch.fft.rfftfreq(4096, d=1 / 16000)
    gain = torch.fft.rfft(sinc.band_pass[:, 0].double(), n=4096).abs()
    peaks = freqs[gain.argmax(dim=1)]
    assert torch.all(peaks[1:] >= peaks[:-1])


# ------------------------------------------------------------------------------------------
# AASIST-L
# ------------------------------------------------------------------------------------------
def test_aasist_l_layout_and_size():
    model = AASIST(**AASIST_L_CONFIG)
    assert _n_parameters(model) == 85_306  # clovaai's README: 85,306
    state = model.state_dict()
    assert _layout_digest(state) == AASIST_L_LAYOUT
    assert state.keys() == AASIST(**AASIST_CONFIG).state_dict().keys()  # same names as AASIST
    assert state["pos_S"].shape == (1, 23, 24)
    assert state["encoder.2.0.conv_downsample.weight"].shape == (24, 32, 1, 3)
    assert state["HtrgGAT_layer_ST11.proj_type1.weight"].shape == (24, 24)
    assert state["out_layer.weight"].shape == (2, 160)


def test_aasist_l_round_trip_and_short_input():
    torch.manual_seed(0)
    model = AASIST(**AASIST_L_CONFIG).eval()
    copy = AASIST(**AASIST_L_CONFIG).eval()
    copy.load_state_dict(model.state_dict(), strict=True)
    x = 0.1 * torch.randn(2, 16000)
    with torch.no_grad():
        embedding, logits = model(x)
        again = copy(x)
    assert embedding.shape == (2, 160) and logits.shape == (2, 2)
    assert torch.equal(embedding, again[0]) and torch.equal(logits, again[1])


def test_aasist_l_trains():
    torch.manual_seed(0)
    model = AASIST(**AASIST_L_CONFIG).train()
    _, logits = model(0.1 * torch.randn(2, 12000))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name


# ------------------------------------------------------------------------------------------
# Input length and configuration
# ------------------------------------------------------------------------------------------
def test_variable_length():
    torch.manual_seed(0)
    model = AASIST(**AASIST_L_CONFIG).eval()
    assert model.min_samples == 128 + 3**7
    with torch.no_grad():
        for length in (model.min_samples, 20_000, 40_001):
            embedding, logits = model(0.1 * torch.randn(1, length))
            assert embedding.shape == (1, 160) and logits.shape == (1, 2)
            assert torch.isfinite(logits).all()
        with pytest.raises(ValueError, match="at least 2315 samples"):
            model(torch.zeros(1, model.min_samples - 1))
        with pytest.raises(ValueError, match=r"\(B, T\)"):
            model(torch.zeros(1, 1, 20_000))


def test_unknown_config_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match="nb_filts") as error:
        AASIST.from_config({**AASIST_CONFIG, "nb_filts": 3})
    for key in AASIST_CONFIG:
        assert key in str(error.value)
    with pytest.raises(ValueError, match="RawNet2"):
        AASIST.from_config({**AASIST_CONFIG, "architecture": "RawNet2"})
    assert _n_parameters(AASIST.from_config(AASIST_L_CONFIG)) == 85_306


def test_inconsistent_widths_are_rejected():
    with pytest.raises(ValueError, match="do not chain"):
        AASIST(filts=[70, [1, 32], [16, 32], [32, 64], [64, 64]])
    with pytest.raises(ValueError, match="4 entries"):
        AASIST(pool_ratios=[0.5, 0.5])


# ------------------------------------------------------------------------------------------
# SSL back-end
# ------------------------------------------------------------------------------------------
def test_xlsr_backend_layout():
    model = XLSRAASISTBackEnd()
    state = model.state_dict()
    assert _layout_digest(state) == XLSR_BACKEND_LAYOUT
    assert state["LL.weight"].shape == (128, 1024)
    assert state["pos_S"].shape == (1, 42, 64)
    assert state["attention.0.weight"].shape == (128, 64, 1, 1)
    assert _n_parameters(model) == 447_242


@pytest.mark.parametrize("ssl_dim", [1024, 32])
def test_xlsr_backend_shapes_and_gradients(ssl_dim):
    torch.manual_seed(0)
    model = XLSRAASISTBackEnd(ssl_dim=ssl_dim).train()
    features = torch.randn(3, 50, ssl_dim, requires_grad=True)
    embedding, logits = model(features)
    assert embedding.shape == (3, 160) and logits.shape == (3, 2)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 7, ssl_dim))[1].shape == (2, 2)  # 7 frames: 2 time nodes


def test_encoder_must_read_one_channel():
    with pytest.raises(ValueError, match="one input channel"):
        AASIST(filts=[70, [2, 32], [32, 32], [32, 64], [64, 64]])
    with pytest.raises(ValueError, match="one input channel"):
        XLSRAASISTBackEnd(filts=[128, [2, 32], [32, 32], [32, 64], [64, 64]])
