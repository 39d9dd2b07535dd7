"""The SSL front-end on tiny random transformers models: shapes, layer selection, freezing,
gradient checkpointing, fine-tuning defaults and offline loading from a folder."""

from __future__ import annotations

import pytest
import torch
from transformers import Wav2Vec2Model

from dpda.models.ssl import TINY_SIZES, SSLFrontEnd, tiny_config

SAMPLES = 16000  # 1 s: 49 frames of 20 ms
FRAMES = 49
HIDDEN = TINY_SIZES["hidden_size"]
LAYERS = TINY_SIZES["num_hidden_layers"]


def wave(batch: int = 2, samples: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def all_states(front_end: SSLFrontEnd, x: torch.Tensor) -> list[torch.Tensor]:
    """The L + 1 hidden states straight from the transformers model."""
    out = front_end.model(x, output_hidden_states=True)
    return [*out.hidden_states[:-1], out.last_hidden_state]


@pytest.mark.parametrize("kind", ["wav2vec2", "wavlm", "hubert"])
@pytest.mark.parametrize("layer", ["last", 0, 1, -1, "weighted"])
def test_shapes_and_backward(kind, layer):
    front_end = SSLFrontEnd.tiny(kind, layer=layer)
    y = front_end(wave())
    assert y.shape == (2, FRAMES, HIDDEN) and front_end.output_dim == HIDDEN
    y.square().mean().backward()
    assert front_end.model.feature_extractor.conv_layers[0].conv.weight.grad is not None


def test_layer_selection_matches_the_model_hidden_states():
    torch.manual_seed(0)
    x = wave()
    front_end = SSLFrontEnd.tiny(layer="last").eval()
    states = all_states(front_end, x)
    with torch.no_grad():
        torch.testing.assert_close(front_end(x), states[LAYERS])
        for layer in range(-LAYERS - 1, LAYERS + 1):
            front_end.layer = front_end._check_layer(layer)
            torch.testing.assert_close(front_end(x), states[layer])
    weighted = SSLFrontEnd(front_end.model.config, layer="weighted").eval()
    weighted.model.load_state_dict(front_end.model.state_dict())
    with torch.no_grad():  # uniform weights at the start: the mean of the L + 1 states
        torch.testing.assert_close(weighted(x), torch.stack(states).mean(0))


@pytest.mark.parametrize("layer", ["first", LAYERS + 1, -LAYERS - 2, True])
def test_invalid_layer(layer):
    with pytest.raises(ValueError, match="layer must be"):
        SSLFrontEnd.tiny(layer=layer)


def test_input_must_be_a_batch_of_waveforms():
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        SSLFrontEnd.tiny()(torch.zeros(SAMPLES))


def test_freeze_trains_only_the_layer_weights():
    front_end = SSLFrontEnd.tiny(layer="weighted", freeze=True).train()
    assert not front_end.model.training and front_end.training
    x = wave()
    y = front_end(x)
    torch.testing.assert_close(front_end(x), y)  # eval mode kept: no dropout
    y.square().mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in front_end.model.parameters())
    assert front_end.layer_weights.grad is not None and front_end.layer_weights.grad.abs().sum() > 0


def test_fine_tuning_defaults_disable_masking_and_layerdrop():
    front_end = SSLFrontEnd.tiny()
    config = front_end.model.config
    assert (config.mask_time_prob, config.mask_feature_prob, config.layerdrop) == (0.0, 0.0, 0.0)
    assert not hasattr(front_end.model, "masked_spec_embed")
    masked = SSLFrontEnd.tiny(
        config_overrides={
            "mask_time_prob": 0.5,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            "activation_dropout": 0.0,
            "feat_proj_dropout": 0.0,
        }
    )
    x = wave()
    torch.manual_seed(0)
    train_out = masked.train()(x)
    eval_out = masked.eval()(x)
    assert not torch.allclose(train_out, eval_out)  # only masking differs between the two modes
    with pytest.raises(ValueError, match="no option"):
        SSLFrontEnd.tiny(config_overrides={"mask_time_probability": 0.1})


def test_normalize_is_fairseqs_per_utterance_layer_norm():
    front_end = SSLFrontEnd.tiny(normalize=True).eval()
    x = wave()
    with torch.no_grad():
        torch.testing.assert_close(front_end(3.0 * x + 0.5), front_end(x), atol=1e-4, rtol=1e-4)
        raw = SSLFrontEnd(front_end.model.config).eval()
        raw.model.load_state_dict(front_end.model.state_dict())
        normalized = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True, unbiased=False) + 1e-5)
        torch.testing.assert_close(front_end(x), raw(normalized))


NO_DROPOUT = {"hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0}


def test_by_default_the_model_sees_the_raw_waveform(tmp_path):
    """No normalisation anywhere: the front-end's output is the bare transformers model's on the
    same input, for x and for 3x + 0.1 alike (the folder's preprocessor config asks for
    normalisation, and is not read)."""
    from transformers import Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    model = Wav2Vec2Model(tiny_config("wav2vec2")).eval()
    model.save_pretrained(tmp_path / "w2v")
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp_path / "w2v")
    front_end = SSLFrontEnd(tmp_path / "w2v").eval()
    x = wave()
    with torch.no_grad():
        for inputs in (x, 3.0 * x + 0.1):
            torch.testing.assert_close(front_end(inputs), model(inputs).last_hidden_state, atol=1e-5, rtol=0)
        assert not torch.allclose(front_end(3.0 * x + 0.1), front_end(x), atol=1e-3)


def test_no_masking_in_train_mode_even_when_the_loaded_config_masks(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(
        "wav2vec2", mask_time_prob=0.5, mask_time_length=2, mask_feature_prob=0.5, layerdrop=0.5, **NO_DROPOUT
    )
    Wav2Vec2Model(config).save_pretrained(tmp_path / "masking")
    x = wave()
    bare = Wav2Vec2Model.from_pretrained(tmp_path / "masking").train()
    assert not torch.equal(bare(x).last_hidden_state, bare(x).last_hidden_state)  # it would mask
    front_end = SSLFrontEnd(tmp_path / "masking").train()
    first, second = front_end(x), front_end(x)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    torch.testing.assert_close(first, front_end.eval()(x), atol=1e-6, rtol=0)


def test_dropout_and_layerdrop_overrides_are_applied():
    front_end = SSLFrontEnd.tiny(config_overrides={**NO_DROPOUT, "layerdrop": 0.3})
    config = front_end.model.config
    assert {k: getattr(config, k) for k in NO_DROPOUT} == NO_DROPOUT and config.layerdrop == 0.3
    assert {m.p for m in front_end.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}


def feature_encoder_gradients(feature_grad_mult: float) -> tuple[dict, dict]:
    """Gradients of the CNN feature encoder and of the rest, for one loss on fixed weights."""
    torch.manual_seed(0)
    front_end = SSLFrontEnd.tiny(feature_grad_mult=feature_grad_mult).eval()
    front_end(wave()).square().mean().backward()
    cnn, rest = {}, {}
    for name, p in front_end.model.named_parameters():
        (cnn if name.startswith("feature_extractor.") else rest)[name] = p.grad
    return cnn, rest


def test_feature_grad_mult_scales_the_feature_encoders_gradient():
    cnn, rest = feature_encoder_gradients(1.0)
    scaled_cnn, scaled_rest = feature_encoder_gradients(0.1)
    for name, grad in cnn.items():
        torch.testing.assert_close(scaled_cnn[name], 0.1 * grad, msg=name)
    for name, grad in rest.items():
        torch.testing.assert_close(scaled_rest[name], grad, msg=name)
    cut_cnn, cut_rest = feature_encoder_gradients(0.0)
    assert all(g is None for g in cut_cnn.values()) and all(g is not None for g in cut_rest.values())
    for bad in (-1.0, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="feature_grad_mult"):
            SSLFrontEnd.tiny(feature_grad_mult=bad)


def test_gradient_checkpointing_gives_the_same_gradients():
    """In train mode with dropout: checkpointing replays the same random numbers."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        front_end = SSLFrontEnd.tiny(layer="weighted", gradient_checkpointing=checkpointing).train()
        torch.manual_seed(1)
        front_end(wave()).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in front_end.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_loads_a_save_pretrained_folder_offline(tmp_path):
    torch.manual_seed(0)
    model = Wav2Vec2Model(tiny_config("wav2vec2", mask_time_prob=0.05)).eval()
    model.save_pretrained(tmp_path / "w2v")
    front_end = SSLFrontEnd(tmp_path / "w2v", local_files_only=True).eval()
    x = wave()
    with torch.no_grad():
        torch.testing.assert_close(front_end(x), model(x).last_hidden_state, atol=1e-5, rtol=0)
    assert all(p.dtype == torch.float32 for p in front_end.parameters())
    with pytest.raises(ValueError, match=r"lacks weights for: encoder\.layers\.2\."):
        SSLFrontEnd(tmp_path / "w2v", config_overrides={"num_hidden_layers": 3})
    with pytest.raises(FileNotFoundError):
        SSLFrontEnd(tmp_path / "missing")


def test_config_dict_source():
    front_end = SSLFrontEnd({"model_type": "hubert", **TINY_SIZES}, layer=1)
    assert type(front_end.model).__name__ == "HubertModel" and front_end.num_layers == LAYERS
    with pytest.raises(ValueError, match="model_type"):
        SSLFrontEnd(dict(TINY_SIZES))
    with pytest.raises(ValueError, match="unsupported SSL model_type"):
        SSLFrontEnd({"model_type": "bert"})


@pytest.mark.parametrize(
    ("preset", "layers", "width", "ffn", "millions"),
    [("xlsr_300m", 24, 1024, 4096, 315.4), ("xlsr_1b", 48, 1280, 5120, 963), ("xlsr_2b", 48, 1920, 7680, 2162)],
)
def test_xlsr_presets_build_the_published_shapes(preset, layers, width, ffn, millions):
    """Built on the meta device (no memory): the published shape, and a parameter count near the
    models' (315.4M is the hub's wav2vec2-xls-r-300m; 1B and 2B are named for theirs)."""
    from dpda.models.ssl import preset_config

    config = preset_config(preset)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (layers, width, ffn)
    assert config.num_attention_heads == 16 and config.do_stable_layer_norm and config.feat_extract_norm == "layer"
    assert list(config.conv_dim) == [512] * 7 and list(config.conv_stride) == [5, 2, 2, 2, 2, 2, 2]
    assert (config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups) == (128, 16)
    with torch.device("meta"):
        model = Wav2Vec2Model(config)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, rel=0.01)


def test_a_preset_is_a_detector_front_end_and_refuses_a_second_source():
    from dpda.models import build

    with torch.device("meta"):
        model = build({"name": "xlsr_conformer_tcm", "ssl": {"preset": "xlsr_300m"}})
    assert model.ssl.output_dim == 1024 and model.ssl.num_layers == 24
    # source: null is no source (a paper row's config whose base names the hub id, set to a preset)
    tiny = build({"name": "xlsr_aasist", "ssl": {"tiny": "wav2vec2", "source": None}})
    assert tiny.ssl.num_layers == build({"name": "xlsr_aasist", "ssl": {"tiny": "wav2vec2"}}).ssl.num_layers
    with pytest.raises(ValueError, match="give one of 'tiny', 'preset' or 'source', not preset and source"):
        build({"name": "xlsr_aasist", "ssl": {"preset": "xlsr_300m", "source": "/models/xlsr"}})
    with pytest.raises(ValueError, match=r"unknown SSL preset 'xlsr_30m' \(did you mean 'xlsr_300m'\?\)"):
        build({"name": "xlsr_aasist", "ssl": {"preset": "xlsr_30m"}})


def test_a_checkpoint_config_rebuilds_without_the_source_it_named(tmp_path):
    from dpda.models import build, self_contained

    tiny = {"name": "xlsr_aasist", "ssl": {"tiny": "wav2vec2", "source": None}}
    assert self_contained(tiny, build(tiny)) == tiny  # rebuilt from the name; source: null builds
    folder = tmp_path / "frontend"
    build({"name": "xlsr_aasist", "ssl": {"tiny": "wav2vec2"}}).ssl.model.save_pretrained(folder)
    named = {"name": "xlsr_aasist", "ssl": {"source": str(folder)}}
    stored = self_contained(named, build(named))
    assert isinstance(stored["ssl"]["source"], dict) and str(folder) not in repr(stored)
    assert build(stored).ssl.num_layers == build(named).ssl.num_layers
