"""The ASVspoof 2021 baselines RawNet2 and LFCC-LCNN: shapes, sizes, gradients, the LFCC and sinc
front-ends against independent numpy/scipy computations, and a toy task that LFCC-LCNN learns."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from scipy import signal

from dpda.models.lcnn import LFCCLCNN
from dpda.models.rawnet2 import RawNet2

SR = 16000
LENGTH = SR // 2  # 0.5 s: enough for three GRU steps in RawNet2 and three BLSTM steps in LFCC-LCNN


def _rawnet2(**options) -> RawNet2:
    torch.manual_seed(0)
    return RawNet2(**options)


def _lcnn(**options) -> LFCCLCNN:
    torch.manual_seed(0)
    return LFCCLCNN(**options)


MODELS = {"rawnet2": _rawnet2, "rawnet2-preact": lambda: _rawnet2(pre_activation=True), "lfcc-lcnn": _lcnn}


def _audio(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, length, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["rawnet2", "lfcc-lcnn"])
def test_shapes_and_lengths(name):
    model = MODELS[name]().eval()
    width = 1024 if name == "rawnet2" else 96
    with torch.no_grad():
        for length in (model.min_samples, LENGTH, LENGTH + 4321):
            embedding, logits = model(_audio(3, length))
            assert embedding.shape == (3, width) and logits.shape == (3, 2)
            assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match=f"T >= {model.min_samples}"):
        model(_audio(1, model.min_samples - 1))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(_audio(1, LENGTH)[0])


def test_minimum_lengths():
    assert RawNet2().min_samples == 1024 + 3**7  # sinc taps, then seven max-pools of 3 leave one step
    assert LFCCLCNN().min_samples == 2400  # 16 frames of 160 samples, centred


def test_lcnn_logits_are_the_baseline_score():
    """Index 1 = bona fide: softmax[:, 1] = sigmoid(score), the baseline's bona fide probability."""
    model = _lcnn().eval()
    with torch.no_grad():
        embedding, logits = model(_audio(2, LENGTH))
        score = model.output(embedding)[:, 0]
    assert torch.equal(logits[:, 0], torch.zeros(2)) and torch.equal(logits[:, 1], score)
    assert torch.allclose(logits.softmax(dim=1)[:, 1], torch.sigmoid(score))


def test_parameter_counts():
    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    # The 2021 baseline yaml: 17,621,410 in the baseline, less its never-applied bn1 (848).
    assert count(RawNet2()) == 17_620_562
    assert count(RawNet2(pre_activation=True)) == 17_621_410
    # The published 25.43M (AASIST paper's RawNet2 row) is the 128/512-channel configuration.
    assert count(RawNet2(sinc_filters=128, channels=(128, 512), pre_activation=True)) == 25_433_602
    # The baseline LFCC-LCNN: convolutions 157,504, two BLSTMs 112,128, output 97.
    assert count(LFCCLCNN()) == 269_729
    assert count(LFCCLCNN(n_fft=512, max_freq=1.0)) == 269_729


@pytest.mark.parametrize(
    "cls, good, bad, hint",
    [
        (RawNet2, {"gru_hidden": 64, "channels": [8, 16], "sinc_filters": 8}, "gru_hiden", "gru_hidden"),
        (LFCCLCNN, {"n_fft": 512, "max_freq": 1.0, "dropout": 0.0}, "nfft", "n_fft"),
    ],
)
def test_from_config(cls, good, bad, hint):
    assert isinstance(cls.from_config(good), cls)
    with pytest.raises(ValueError, match=rf"unknown key '{bad}' \(did you mean '{hint}'\?\); allowed: .*{hint}"):
        cls.from_config({**good, bad: 1})
    with pytest.raises(ValueError, match="allowed: "):
        cls.from_config({"zzz": 1})


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_reach_every_trainable_parameter(name):
    model = MODELS[name]().train()
    _, logits = model(_audio(4, LENGTH))
    F.cross_entropy(logits, torch.tensor([1, 0, 1, 0])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_sinc_filters_are_fixed():
    model = _rawnet2()
    filters = model.sinc.filters
    assert not filters.requires_grad and all(p is not filters for p in model.parameters())
    assert not any(key.startswith("sinc") for key in model.state_dict())


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("train", [True, False])
def test_silent_input_is_finite(name, train):
    model = MODELS[name]().train(train)
    x = torch.zeros(2, LENGTH, requires_grad=True)
    embedding, logits = model(x)
    assert torch.isfinite(embedding).all() and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([1, 0])).backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["rawnet2", "lfcc-lcnn"])
def test_eval_is_deterministic_and_per_utterance(name):
    model = MODELS[name]().eval()
    x = _audio(3, LENGTH)
    with torch.no_grad():
        first, second, alone = model(x)[1], model(x)[1], model(x[1:2])[1]
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[1:2], rtol=1e-4, atol=1e-5)


def _numpy_lfcc(
    x: np.ndarray, *, frame_length=320, hop=160, n_fft=1024, n_filters=20, n_coefficients=20, max_freq=0.5, energy=True
) -> np.ndarray:
    """LFCC with deltas, framed by hand in float64: centred zero-padded frames, a periodic Hamming
    window centred in the FFT, |rfft|^2, triangles by interpolation, log10, scipy's DCT-II."""
    eps = np.finfo(np.float32).eps
    x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    padded = np.pad(x, n_fft // 2)
    window = np.zeros(n_fft)
    start = (n_fft - frame_length) // 2
    window[start : start + frame_length] = np.hamming(frame_length + 1)[:-1]
    frames = np.stack([padded[t * hop : t * hop + n_fft] for t in range(1 + len(x) // hop)]) * window
    n_bins = int(max_freq * (n_fft // 2 + 1))
    power = np.abs(np.fft.rfft(frames, axis=1))[:, :n_bins] ** 2
    freqs = np.linspace(0, max_freq * SR / 2, n_bins)
    corners = np.linspace(0, max_freq * SR / 2, n_filters + 2)
    bank = np.stack([np.interp(freqs, corners[j : j + 3], [0.0, 1.0, 0.0]) for j in range(n_filters)], axis=1)
    cepstra = scipy.fft.dct(np.log10(power @ bank + eps), type=2, norm="ortho", axis=1)[:, :n_coefficients]
    if energy:
        cepstra[:, 0] = np.log10(power.sum(axis=1) / n_fft + eps)

    def delta(c):
        edged = np.pad(c, ((1, 1), (0, 0)), mode="edge")
        return edged[2:] - edged[:-2]

    return np.hstack([cepstra, delta(cepstra), delta(delta(cepstra))])


@pytest.mark.parametrize("options", [{}, {"n_fft": 512, "max_freq": 1.0, "energy": False, "n_coefficients": 12}])
def test_lfcc_matches_numpy(options):
    lfcc = LFCCLCNN(**options).lfcc
    x = _audio(2, 8037)
    ours = lfcc(x).numpy()
    assert ours.shape == (2, 1 + 8037 // 160, 3 * options.get("n_coefficients", 20))
    for row in range(2):
        reference = _numpy_lfcc(x[row].double().numpy(), **options)
        np.testing.assert_allclose(ours[row], reference, rtol=0, atol=1e-4)


def test_lfcc_of_silence_is_the_floor():
    features = LFCCLCNN().lfcc(torch.zeros(1, 4000))
    assert torch.allclose(features[0, :, 0], torch.tensor(np.log10(np.finfo(np.float32).eps), dtype=torch.float32))
    assert torch.isfinite(features).all()


def test_sinc_filters_match_numpy():
    """Mel-spaced band edges from 0 Hz to Nyquist; band i = difference of two windowed ideal low-passes."""
    filters = _rawnet2().sinc.filters[:, 0].double().numpy()
    taps = 1025
    edges = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 21) / 2595) - 1)
    t = np.arange(taps) - (taps - 1) / 2

    def low_pass(cutoff):
        return 2 * cutoff / SR * np.sinc(2 * cutoff * t / SR)

    reference = np.stack([(low_pass(edges[i + 1]) - low_pass(edges[i])) * np.hamming(taps) for i in range(20)])
    np.testing.assert_allclose(filters, reference, rtol=0, atol=1e-7)
    response = np.abs(np.fft.rfft(reference, 16000, axis=1))  # 1 Hz bins
    centres = ((edges[:-1] + edges[1:]) / 2).astype(int)
    assert (response[np.arange(20), centres] > 0.9).all()


def test_rawnet2_loads_baseline_checkpoint_names():
    for pre_activation in (False, True):
        source = _rawnet2(pre_activation=True)
        baseline = {}
        for key, value in source.state_dict().items():
            key = re.sub(r"^blocks\.(\d+)\.fms\.", r"fc_attention\1.0.", key)
            key = re.sub(r"^blocks\.(\d+)\.", r"block\1.0.", key)
            baseline["module." + key] = value + 1.0 if value.is_floating_point() else value
        target = RawNet2(pre_activation=pre_activation)
        target.load_baseline_state_dict(baseline)
        for key, value in target.state_dict().items():
            name = re.sub(r"^blocks\.(\d+)\.fms\.", r"fc_attention\1.0.", key)
            name = re.sub(r"^blocks\.(\d+)\.", r"block\1.0.", name)
            assert torch.equal(value, baseline["module." + name])


def test_lcnn_loads_baseline_checkpoint_names():
    source = _lcnn()
    baseline = {
        "input_mean": torch.zeros(1),
        "input_std": torch.ones(1),
        "output_mean": torch.zeros(1),
        "output_std": torch.ones(1),
        "m_frontend.0.lfcc_fb": torch.ones(256, 20),
        "m_frontend.0.l_dct.weight": torch.eye(20),
    }
    for key, value in source.state_dict().items():
        key = re.sub(r"^transform\.", "m_transform.0.", key)
        key = re.sub(r"^blstm\.(\d+)\.", r"m_before_pooling.0.\1.l_blstm.", key)
        key = re.sub(r"^output\.", "m_output_act.0.", key)
        baseline[key] = value + 1.0 if value.is_floating_point() else value
    target = LFCCLCNN()
    target.load_baseline_state_dict(baseline)
    assert torch.equal(target.output.weight, source.output.weight + 1.0)
    assert torch.equal(target.blstm[1].weight_hh_l0_reverse, source.blstm[1].weight_hh_l0_reverse + 1.0)
    assert torch.equal(target.transform[5].running_var, source.transform[5].running_var + 1.0)


def _toy_batch(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bona fide = noise below 1.5 kHz, spoof = noise above 2.5 kHz (both inside LFCC's 0-4 kHz), 1 s."""
    noise = np.random.default_rng(seed).standard_normal((size, SR))
    low = signal.sosfilt(signal.butter(8, 1500, "low", fs=SR, output="sos"), noise[: size // 2])
    high = signal.sosfilt(signal.butter(8, 2500, "high", fs=SR, output="sos"), noise[size // 2 :])
    labels = torch.tensor([1] * (size // 2) + [0] * (size - size // 2))
    return torch.tensor(0.1 * np.concatenate([low, high]), dtype=torch.float32), labels


def test_lcnn_learns_a_toy_task():
    """A few SGD steps lower the training loss (held-out loss in eval mode is not asserted: after so
    few steps the BatchNorm running statistics still lean on their initial values)."""
    model = _lcnn().train()
    x, labels = _toy_batch(8, seed=1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x)[1], labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses
