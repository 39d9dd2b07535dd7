"""Where the two paths conflict: per-group cosines from the engine against the gradients computed
directly, the groups of a real SSL detector, the run's per-layer logs and the report's heat map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread
from models import TinyDetector
from test_logger import scalars
from tiny_runs import experiment, write_config

from dpda.config import load_config
from dpda.dualpath import DualPathStep
from dpda.dualpath.layers import layer_groups
from dpda.models import architecture, build
from dpda.report import write_report
from dpda.train import train
from dpda.train.logger import read_csv


def test_each_path_gradient_cosine_per_layer_equals_the_one_computed_directly():
    torch.manual_seed(4)
    model = TinyDetector(seed=4)
    engine = DualPathStep(model, torch.optim.SGD(model.parameters(), lr=0.0), "pcgrad", layer_grouping="layer")
    x = torch.randn(6, 800)
    x_aug = x.flip(1) + 0.3 * torch.randn(6, 800)  # another input: the paths disagree somewhere
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    expected = {}
    weight = torch.tensor([0.1, 0.9])  # the engine's default loss: the paper's class-weighted cross-entropy
    grads = [
        torch.autograd.grad(F.cross_entropy(model(inp), labels, weight=weight), list(model.parameters()))
        for inp in (x, x_aug)
    ]
    for name in ("conv", "hidden", "head"):
        members = [i for i, (n, _) in enumerate(model.named_parameters()) if n.startswith(name + ".")]
        g_o, g_a = (torch.cat([g[i].flatten() for i in members]).double() for g in grads)
        expected[name] = float(g_o @ g_a / (g_o.norm() * g_a.norm()))
    stats = engine(x, x_aug, labels)
    assert stats.layers is not None and stats.layers.names == ("conv", "hidden", "head")
    assert stats.layers.cosines == pytest.approx(expected, abs=1e-6)
    whole = sum(stats.layers.inner) / math.sqrt(sum(n * n for n in stats.layers.norm_orig))
    whole /= math.sqrt(sum(n * n for n in stats.layers.norm_aug))
    assert whole == pytest.approx(stats.cosine, abs=1e-9)  # the groups partition the model
    assert "layers" not in stats.as_dict()  # not a column of steps.csv


def test_the_groups_of_an_ssl_detector_are_its_transformer_cnn_and_back_end_layers():
    config = load_config(None, ["model.name=xlsr_aasist"])
    model = build(architecture({**config.model, "ssl": {"tiny": "wav2vec2"}}))
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    groups, index = layer_groups(names, "layer")
    assert index.shape == (len(names),) and int(index.max()) == len(groups) - 1
    transformer = [g for g in groups if g.startswith("ssl.") and ".encoder.layers." in g]
    cnn = [g for g in groups if ".feature_extractor.conv_layers." in g]
    assert len(transformer) == model.ssl.model.config.num_hidden_layers and transformer[0].endswith("layers.0")
    assert len(cnn) == len(model.ssl.model.config.conv_dim)
    back_end = [g for g in groups if not g.startswith("ssl.")]
    assert back_end[0] == "backend"  # its own parameters (pos_S, master1, master2)
    for expected in ("backend.GAT_layer_S", "backend.HtrgGAT_layer_ST22", "backend.pool_hT2", "backend.LL"):
        assert expected in back_end, expected
    assert [g for g in back_end if g.startswith("backend.encoder.")] == [f"backend.encoder.{i}" for i in range(6)]
    assert "ssl.model.feature_projection" in groups and "ssl.model.encoder.pos_conv_embed" in groups
    assert layer_groups(names, "top")[0] == ["ssl", "backend"]
    assert len(layer_groups(names, "module")[0]) > len(groups)
    compiled = layer_groups([f"_orig_mod.{name}" for name in names], "layer")[0]
    assert compiled == groups  # torch.compile's wrapper does not rename the groups
    with pytest.raises(ValueError, match="layer grouping 'none'"):
        layer_groups(names, "none")


def test_a_run_logs_per_layer_cosines_and_rates_and_the_report_draws_them(corpus, tmp_path):
    settings = experiment(corpus, tmp_path / "runs")
    results = train(load_config(write_config(tmp_path / "c.yaml", settings)))
    run = tmp_path / "runs" / "tiny"
    steps, epochs = read_csv(run / "layers_steps.csv"), read_csv(run / "layers_epochs.csv")
    groups = ["conv", "hidden", "head"]
    assert list(steps) == ["step", "epoch", *groups] and list(epochs) == ["epoch", *groups]
    assert steps["step"] == list(range(1, results.steps + 1)) and epochs["epoch"] == [1, 2, 3]
    for group in groups:
        cosines, epoch_of = np.array(steps[group], dtype=float), np.array(steps["epoch"])
        assert np.all(np.abs(cosines) <= 1 + 1e-9)
        rates = [float(np.mean(cosines[epoch_of == epoch] < 0)) for epoch in (1, 2, 3)]
        assert epochs[group] == pytest.approx(rates, abs=1e-12)  # every step logged: the rate is their share
    cosine_events = scalars(run / "tensorboard" / "steps", "train/layer_cosine/hidden")
    assert list(cosine_events) == steps["step"]
    assert list(cosine_events.values()) == pytest.approx(steps["hidden"], abs=1e-6)  # float32 events
    rate_events = scalars(run / "tensorboard" / "epochs", "epoch/layer_conflict/conv")
    assert list(rate_events.values()) == pytest.approx(epochs["conv"], abs=1e-6)
    report = write_report([run], tmp_path / "report")
    figure = next((tmp_path / "report").glob("run-*-conflict.png"))
    assert figure.name in report.read_text()
    assert imread(figure).shape[1] == 1500  # three panels: curve, layer x epoch heat map, histogram
