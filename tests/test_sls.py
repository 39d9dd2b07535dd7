"""The SLS back-end (``xlsr_sls``): every transformer layer handed over, the per-utterance layer
weights, the published classifier computed step by step, gradients, modes, key names, lengths
other than the crop and ONNX/TorchScript export, the shipped config, its published figures in
``dpda report``, and one dual-path step."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dpda.config import config_from_dict, load_config, save_config
from dpda.deploy.export import export_detector
from dpda.dualpath import DualPathStep
from dpda.evaluate.evaluation import Detector
from dpda.evaluate.paper import published
from dpda.models import build
from dpda.models.sls import PUBLISHED_FRAMES, LayerStackFrontEnd, SLSBackEnd, adaptive_max_rows
from dpda.models.ssl import TINY_KINDS, SSLFrontEnd
from dpda.report import write_report

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "baselines" / "xlsr_sls_rawboost.yaml"
#: Dropout off, so that two forward passes in train mode agree (the shipped config's values).
NO_DROPOUT = {"hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0}
#: 64,600 samples: the published crop, 201 frames.
CROP = 64600
WEIGHTS = torch.tensor([0.1, 0.9])


def tiny_sls(kind: str = "wav2vec2", seed: int = 0, **ssl):
    torch.manual_seed(seed)
    overrides = {**NO_DROPOUT, **ssl.pop("config_overrides", {})}
    return build({"name": "xlsr_sls", "ssl": {"tiny": kind, "config_overrides": overrides, **ssl}, "hidden": 16})


def audio(batch: int, samples: int = 16000, seed: int = 1) -> torch.Tensor:
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def layer_outputs(batch: int, layers: int, frames: int, dim: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, layers, frames, dim, generator=torch.Generator().manual_seed(seed))


def published_forward(backend: SLSBackEnd, layers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The released model's forward written out layer by layer: time-average pool of each
    layer, fc0 + sigmoid, the broadcast product summed over layers, BatchNorm2d(1), SELU, 3x3 max
    pool, flatten, fc1 + SELU, fc3 + SELU, log-softmax."""
    pooled = [F.adaptive_avg_pool1d(layer.transpose(1, 2), 1).transpose(1, 2) for layer in layers.unbind(1)]
    weights = torch.sigmoid(backend.fc0(torch.cat(pooled, dim=1)))  # (B, L, 1)
    fused = (layers * weights.unsqueeze(-1)).sum(dim=1).unsqueeze(1)  # (B, 1, frames, C)
    x = torch.flatten(F.max_pool2d(F.selu(backend.first_bn(fused)), (3, 3)), 1)
    embedding = F.selu(backend.fc1(x))
    return embedding, F.log_softmax(F.selu(backend.fc3(embedding)), dim=1)


# ---------------------------------------------------------------------------------------------
# The front-end: every transformer layer


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_the_front_end_hands_over_every_transformer_layer_output(kind):
    layers = {"encoder_layers" if kind == "whisper" else "num_hidden_layers": 3}
    torch.manual_seed(0)
    model = build({"name": "xlsr_sls", "ssl": {"tiny": kind, "config_overrides": layers}, "hidden": 16}).eval()
    encoder = model.ssl.model
    x = audio(2)
    with torch.no_grad():
        stack = model.ssl(x)
        out = encoder(x, output_hidden_states=True)
    assert isinstance(model.ssl, LayerStackFrontEnd) and stack.shape == (2, 3, model.ssl.num_frames(16000), 32)
    # layers 1 and 2: hidden states 1 and 2 (0 is the input of layer 1, not a layer's output)
    for index in range(2):
        torch.testing.assert_close(stack[:, index], out.hidden_states[index + 1], rtol=0, atol=0)
    # the last layer's own output: before a pre-norm encoder's final LayerNorm (fairseq's layer_results)
    if kind == "whisper" or getattr(encoder.config, "do_stable_layer_norm", False):
        torch.testing.assert_close(encoder.encoder.layer_norm(stack[:, -1]), out.last_hidden_state)
        assert not torch.allclose(stack[:, -1], out.last_hidden_state)
    else:
        torch.testing.assert_close(stack[:, -1], out.last_hidden_state, rtol=0, atol=0)


def test_as_many_layer_weights_as_the_front_end_has_layers():
    model = tiny_sls(config_overrides={"num_hidden_layers": 24}).eval()  # XLS-R 300M's depth
    with torch.no_grad():
        stack = model.ssl(audio(2, 8000))
    assert stack.shape[1] == 24 and model.backend.layer_weights(stack).shape == (2, 24)


def test_layer_is_refused_and_other_front_end_options_work():
    with pytest.raises(ValueError, match=r"leave ssl\.layer out"):
        tiny_sls(layer="weighted")
    with pytest.raises(ValueError, match=r"leave ssl\.layer out"):
        tiny_sls(layer=3)
    with pytest.raises(ValueError, match="ssl: unknown key 'layers'"):
        tiny_sls(layers=3)
    frozen = tiny_sls(freeze=True).train()
    assert not frozen.ssl.model.training and frozen.backend.training
    frozen(audio(2))[1].sum().backward()
    assert all(p.grad is None for p in frozen.ssl.parameters())
    assert all(p.grad is not None for p in frozen.backend.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, checkpointed = tiny_sls(), tiny_sls(gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = audio(2)
    for model in (plain, checkpointed):
        model.train()(x)[1][:, 1].sum().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_concurrent_forward_passes_and_copies_keep_their_own_layers():
    model = tiny_sls().eval()
    inputs = [audio(1, 8000 + 1000 * i, seed=i) for i in range(4)]
    with torch.no_grad():
        serial = [model(x)[1] for x in inputs]
        copied = copy.deepcopy(model)
        assert torch.equal(copied(inputs[0])[1], serial[0])
        results: list[torch.Tensor | None] = [None] * len(inputs)

        def score(index: int) -> None:
            for _ in range(3):
                results[index] = model(inputs[index])[1]

        threads = [threading.Thread(target=score, args=(i,)) for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for got, expected in zip(results, serial):
        assert got is not None and torch.equal(got, expected)


# ---------------------------------------------------------------------------------------------
# The back-end


def test_the_back_end_computes_the_published_classifier():
    torch.manual_seed(0)
    backend = SLSBackEnd(ssl_dim=32, hidden=16)
    layers = layer_outputs(3, 5, PUBLISHED_FRAMES, 32)
    reference = copy.deepcopy(backend)
    for mode in (True, False):  # train: batch statistics; eval: the running ones
        embedding, logits = backend.train(mode)(layers)
        expected_embedding, expected_logits = published_forward(reference.train(mode), layers)
        torch.testing.assert_close(embedding, expected_embedding)
        torch.testing.assert_close(logits, expected_logits)
    assert embedding.shape == (3, 16) and logits.shape == (3, 2)
    torch.testing.assert_close(logits.exp().sum(dim=1), torch.ones(3))  # log-probabilities


def test_layer_weights_are_per_utterance_sigmoids_that_depend_on_the_input():
    torch.manual_seed(0)
    backend = SLSBackEnd(ssl_dim=32, hidden=16)
    layers = layer_outputs(2, 4, 30, 32)
    layers[1] = 3 * layers[1].flip(1) + 1  # another utterance
    weights = backend.layer_weights(layers)
    expected = torch.sigmoid(layers.mean(dim=2) @ backend.fc0.weight[0] + backend.fc0.bias)
    torch.testing.assert_close(weights, expected)
    assert weights.shape == (2, 4) and ((weights > 0) & (weights < 1)).all()
    assert not torch.allclose(weights[0], weights[1], atol=1e-3)  # per utterance, not one set
    assert not torch.allclose(weights.sum(dim=1), torch.ones(2))  # not normalised: sigmoids
    # the fused map before the batch norm is the weighted sum of the layers
    captured = {}
    backend.first_bn.register_forward_hook(lambda module, inputs, output: captured.update(x=inputs[0]))
    backend(layers)
    torch.testing.assert_close(captured["x"][:, 0], (layers * weights[:, :, None, None]).sum(dim=1))


def test_gradients_reach_fc0_every_layer_and_the_whole_front_end():
    model = tiny_sls(config_overrides={"num_hidden_layers": 3}).train()
    stack = model.ssl(audio(2))
    stack.retain_grad()
    _, logits = model.backend(stack)
    F.cross_entropy(logits, torch.tensor([0, 1]), weight=WEIGHTS).backward()
    assert (stack.grad.flatten(2).abs().amax(dim=2) > 0).all()  # every utterance, every layer
    assert model.backend.fc0.weight.grad.abs().sum() > 0 and model.backend.fc0.bias.grad.abs() > 0
    for name, p in model.named_parameters():
        if name.startswith("ssl.model.encoder.layer_norm."):  # the final LayerNorm is not read
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert sum(1 for n, _ in model.named_parameters() if n.startswith("ssl.model.encoder.layers.2.")) > 0


def test_train_and_eval_modes():
    model = tiny_sls()
    x = audio(3)
    bn = model.backend.first_bn
    model.train()
    before = bn.running_mean.clone()
    first = model(x)[1]
    assert not torch.equal(bn.running_mean, before)  # train: batch statistics, running ones updated
    assert not torch.allclose(model(x[:1])[1], first[:1], atol=1e-4)  # depends on the batch
    model.eval()
    running = bn.running_mean.clone()
    with torch.no_grad():
        alone, together = model(x[:1])[1], model(x)[1]
    assert torch.equal(bn.running_mean, running)
    torch.testing.assert_close(alone, together[:1], atol=1e-5, rtol=0)  # eval: per utterance


def test_state_dict_keys_are_the_released_models():
    assert set(SLSBackEnd().state_dict()) == {
        "fc0.weight",
        "fc0.bias",
        "first_bn.weight",
        "first_bn.bias",
        "first_bn.running_mean",
        "first_bn.running_var",
        "first_bn.num_batches_tracked",
        "fc1.weight",
        "fc1.bias",
        "fc3.weight",
        "fc3.bias",
    }
    published_size = SLSBackEnd()  # XLS-R 300M width, 201 frames: fc1 reads 67 x 341 = 22,847 values
    assert published_size.fc1.in_features == 22847 and published_size.fc1.out_features == 1024
    assert sum(p.numel() for p in published_size.parameters()) == 23_399_429
    model = tiny_sls()
    torch.manual_seed(0)
    plain = build({"name": "xlsr_aasist", "ssl": {"tiny": "wav2vec2"}})
    ssl_keys = {k for k in model.state_dict() if k.startswith("ssl.")}
    assert ssl_keys == {k for k in plain.state_dict() if k.startswith("ssl.")}  # the front-end adds none
    assert {k for k in model.state_dict() if not k.startswith("ssl.")} == {
        f"backend.{k}" for k in SLSBackEnd().state_dict()
    }


def test_other_lengths_go_through_an_adaptive_pool_that_is_idle_at_the_crop():
    torch.manual_seed(0)
    backend = SLSBackEnd(ssl_dim=32, hidden=16).eval()
    with torch.no_grad():
        for frames in (PUBLISHED_FRAMES, 202, 203):  # floor(frames / 3) = 67 rows: no adaptive step
            layers = layer_outputs(2, 3, frames, 32)
            torch.testing.assert_close(backend(layers)[1], published_forward(backend, layers)[1])
        for frames in (3, 50, 500):
            _, logits = backend(layer_outputs(2, 3, frames, 32))
            assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    model = tiny_sls().eval()
    with torch.no_grad():
        assert model(audio(1, CROP))[1].shape == (1, 2)
        assert model(audio(1, 1000))[1].shape == (1, 2)  # 3 frames: the shortest


def test_adaptive_max_rows_is_torchs_adaptive_max_pool_and_exports(tmp_path):
    generator = torch.Generator().manual_seed(3)
    for rows in (1, 5, 67):
        for n in (1, 2, 4, 66, 67, 68, 133, 134, 200, 1001):
            x = torch.randn(2, 1, n, 7, generator=generator)
            assert torch.equal(adaptive_max_rows(x, rows), F.adaptive_max_pool2d(x, (rows, 7))), (rows, n)
    config = {"name": "xlsr_sls", "ssl": {"tiny": "wav2vec2"}, "hidden": 16}
    model = tiny_sls().eval()
    detector = Detector(model, config_from_dict({"model": config}), None, tmp_path)
    onnx = export_detector(detector, tmp_path / "onnx" / "sls.onnx", "onnx")  # checked on other shapes as written
    scripted = torch.jit.load(str(export_detector(detector, tmp_path / "script" / "sls.pt", "torchscript")))
    assert onnx.is_file()
    with torch.no_grad():
        for samples in (8000, CROP):
            x = audio(3, samples)
            torch.testing.assert_close(scripted(x)[0], model(x)[1], atol=1e-4, rtol=0)


def test_bad_shapes_and_options_are_refused():
    backend = SLSBackEnd(ssl_dim=32, hidden=16)
    with pytest.raises(ValueError, match=r"frames >= 3, 32\).*\(2, 49, 32\)"):
        backend(torch.randn(2, 49, 32))  # one hidden state, not the stack of layers
    with pytest.raises(ValueError, match="frames >= 3"):
        backend(torch.randn(2, 3, 2, 32))
    with pytest.raises(ValueError, match="frames must be an int >= 3"):
        SLSBackEnd(frames=2)
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        SLSBackEnd(hidden=0)
    with pytest.raises(ValueError, match="did you mean 'hidden'"):
        build({"name": "xlsr_sls", "ssl": {"tiny": "wav2vec2"}, "hiden": 16})
    with pytest.raises(ValueError, match="ssl_dim 1024 differs"):
        build({"name": "xlsr_sls", "ssl": {"tiny": "wav2vec2"}, "ssl_dim": 1024})
    with pytest.raises(ValueError, match="expected a \\(batch, samples\\) waveform"):
        tiny_sls()(torch.randn(16000))


# ---------------------------------------------------------------------------------------------
# The shipped config, the report's paper column, one dual-path step


def test_the_config_has_the_published_recipe_and_builds_at_tiny_size():
    config = load_config(CONFIG)
    assert config.model["name"] == "xlsr_sls" and "layer" not in config.model["ssl"]
    assert (config.optim.name, config.optim.lr, config.optim.weight_decay) == ("adam", 1e-6, 1e-4)
    assert (config.train.batch_size, config.data.crop_length, config.data.crop_policy) == (5, CROP, "head")
    assert int(config.eval.max_seconds * config.data.sample_rate) == CROP
    assert config.augment.inline["stages"] == [{"name": "rawboost", "p": 1.0, "algo": 3}]
    assert config.dualpath.class_weights == (0.1, 0.9) and config.eval.score == "bonafide_logit"
    figures = published(config.paper_row)
    assert figures is not None and "ACM MM 2024" in figures.source and "Zhang" in figures.source
    assert figures.eers == {"asvspoof2021_la_eval": 2.87, "asvspoof2021_df_eval": 1.92, "in_the_wild": 7.46}
    assert set(figures.eers) <= {s.name for s in config.eval.sets}

    ssl = {k: v for k, v in config.model["ssl"].items() if k != "source"}
    torch.manual_seed(0)
    model = build({**config.model, "ssl": {**ssl, "tiny": "wav2vec2"}})
    assert isinstance(model.ssl, SSLFrontEnd) and model.ssl.model.config.layerdrop == 0.0
    assert model.backend.fc1.in_features == (PUBLISHED_FRAMES // 3) * (32 // 3)
    embedding, logits = model.train()(audio(2, CROP))
    assert embedding.shape == (2, 1024) and logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_the_report_shows_the_published_figures_and_their_source(tmp_path):
    run = tmp_path / "runs" / "sls"
    save_config(load_config(CONFIG), run / "config.yaml")  # a run that has not finished a step
    report = write_report([run], tmp_path / "report").read_text(encoding="utf-8")
    comparison = report.split("## Comparison", 1)[1]
    row = next(line for line in comparison.splitlines() if line.startswith("| xlsr_sls_pcgrad |"))
    assert "asvspoof2021_la_eval 2.87 / asvspoof2021_df_eval 1.92 / in_the_wild 7.46 [1]" in row
    source = next(line for line in comparison.splitlines() if line.startswith("Paper column sources:"))
    assert source == (
        'Paper column sources: [1] Zhang, Wen and Hu, "Audio Deepfake Detection with Self-Supervised '
        'XLS-R and SLS Classifier", ACM MM 2024.'
    )


def test_one_dual_path_step_uses_the_two_paths_gradients():
    model = tiny_sls(config_overrides={"num_hidden_layers": 3}).train()
    x = audio(2, 8000)
    x_aug = torch.tanh(3 * x) + 0.02 * audio(2, 8000, seed=5)
    labels = torch.tensor([1, 0])
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    logits = model(torch.cat([x, x_aug]))[1]  # joint: one forward, BatchNorm over both paths
    flats = []
    for piece in (logits[:2], logits[2:]):
        grads = torch.autograd.grad(
            F.cross_entropy(piece, labels, weight=WEIGHTS), [p for _, p in named], retain_graph=True, allow_unused=True
        )
        flats.append(
            torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, (_, p) in zip(grads, named)])
        )
    before = {n: p.detach().clone() for n, p in named}
    engine = DualPathStep(model, torch.optim.Adam(model.parameters(), lr=1e-3), "pcgrad", layer_grouping="layer")
    stats = engine(x, x_aug, labels)
    assert not stats.skipped and engine.steps == 1
    assert stats.inner == pytest.approx(float(flats[0] @ flats[1]), rel=1e-4, abs=1e-9)
    assert stats.norm_orig == pytest.approx(float(flats[0].norm()), rel=1e-4)
    assert stats.layers is not None and len(stats.layers.names) > 3
    for name, p in named:
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (not name.startswith("ssl.model.encoder.layer_norm.")), name
