"""The front-ends beyond wav2vec 2.0 / WavLM / HuBERT: data2vec-audio, UniSpeech-SAT, MMS and
Whisper's encoder, each as a tiny random model under the paper's back-ends, and Whisper's
log-mel and sliced positions against transformers' own feature extractor and encoder."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from transformers import (
    Data2VecAudioModel,
    UniSpeechSatModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperModel,
)

from dpda.models import build, self_contained
from dpda.models.ssl import MODEL_TYPES, PRESETS, TINY_KINDS, SSLFrontEnd, preset_config, tiny_config
from dpda.models.whisper import WhisperAudioEncoder, WhisperLogMel

NEW_KINDS = ["data2vec-audio", "unispeech-sat", "mms", "whisper"]
SMALL_BACKENDS = {
    "xlsr_aasist": {},
    "xlsr_conformer_tcm": {"emb_size": 16, "heads": 2, "kernel_size": 7, "n_encoders": 1},
    "xlsr_mamba": {"emb_size": 16, "n_layers": 1, "reference_final_add": False},
}
#: Each new kind under one paper back-end, and Whisper (the most different) under all three.
PAIRS = [
    ("data2vec-audio", "xlsr_aasist"),
    ("unispeech-sat", "xlsr_conformer_tcm"),
    ("mms", "xlsr_mamba"),
    ("whisper", "xlsr_aasist"),
    ("whisper", "xlsr_conformer_tcm"),
    ("whisper", "xlsr_mamba"),
]
NO_DROPOUT = {"hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0}
WHISPER_NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}


def wave(batch: int = 2, samples: int = 16000, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


@functools.cache
def speech_like(samples: int, seed: int = 0, level: float = 0.3) -> torch.Tensor:
    """A voiced signal: 12 harmonics of a gliding 100-220 Hz pitch under a 4 Hz syllable envelope
    with pauses, and breath noise 40 dB down (the log-mel check needs realistic dynamics, not
    white noise). Cached: the 30 s ones are used by several tests; never modified in place."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / 16000
    f0 = 160 + 60 * torch.sin(2 * math.pi * 0.7 * t)
    phase = torch.remainder(2 * math.pi * torch.cumsum(f0, 0) / 16000, 2 * math.pi).float()
    harmonics = torch.arange(1, 13, dtype=torch.float32)[:, None]
    voiced = (torch.sin(harmonics * phase) / harmonics).sum(0)
    envelope = torch.sin(2 * math.pi * 4 * t).clamp(min=0) ** 2 * (torch.sin(2 * math.pi * 0.3 * t) > -0.5)
    noise = torch.randn(samples, generator=generator)
    return level * (voiced * envelope.float() / 3 + 0.01 * noise)


def layer_io(front_end: SSLFrontEnd, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of the first transformer layer and each layer's output, by hooks on the layers."""
    layers = front_end.model.encoder.layers
    seen: list[torch.Tensor] = []
    hooks = [layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))]
    for layer in layers:
        hooks.append(
            layer.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
        )
    try:
        last = front_end.model(x).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    return [*seen[:-1], last]


@pytest.mark.parametrize(("kind", "name"), PAIRS)
def test_paper_back_ends_train_on_each_front_end(kind, name):
    model = build({"name": name, "ssl": {"tiny": kind, "layer": "weighted"}, **SMALL_BACKENDS[name]}).train()
    assert model.ssl.model_type == ("wav2vec2" if kind == "mms" else kind)
    _, logits = model(wave())
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    logits.sum().backward()
    first_conv = (
        model.ssl.model.encoder.conv1 if kind == "whisper" else model.ssl.model.feature_extractor.conv_layers[0].conv
    )
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    last_layer = list(model.ssl.model.encoder.layers[-1].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last_layer)
    assert model.ssl.layer_weights.grad is not None and model.ssl.layer_weights.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.backend.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_frozen_front_end_gets_no_gradient(kind):
    model = build({"name": "xlsr_aasist", "ssl": {"tiny": kind, "freeze": True, "layer": "weighted"}}).train()
    assert not model.ssl.model.training
    model(wave())[1].sum().backward()
    assert all(p.grad is None for p in model.ssl.model.parameters())
    assert model.ssl.layer_weights.grad is not None


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_layers_are_the_transformer_layers_io(kind):
    """layer 0 is the first layer's input, i its output, L the model's output (after a pre-norm
    model's final LayerNorm), found by hooks on the layers, not from transformers' hidden_states;
    weighted starts as their mean."""
    torch.manual_seed(0)
    front_end = SSLFrontEnd.tiny(kind).eval()
    x = wave()
    with torch.no_grad():
        states = layer_io(front_end, x)
        assert len(states) == front_end.num_layers + 1 == 3
        for layer in range(-front_end.num_layers - 1, front_end.num_layers + 1):
            front_end.layer = front_end._check_layer(layer)
            torch.testing.assert_close(front_end(x), states[layer], msg=f"layer {layer}")
        front_end.layer = "weighted"
        front_end.layer_weights = torch.nn.Parameter(torch.zeros(front_end.num_layers + 1))
        torch.testing.assert_close(front_end(x), torch.stack(states).mean(0))
    with pytest.raises(ValueError, match="layer must be"):
        SSLFrontEnd.tiny(kind, layer=3)


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_frame_counts_and_rate(kind):
    front_end = SSLFrontEnd.tiny(kind).eval()
    assert front_end.hop_samples == 320 and front_end.frame_rate == 50.0
    with torch.no_grad():
        for samples in (4001, 16000, 64600):
            assert front_end(wave(1, samples)).shape[1] == front_end.num_frames(samples), samples
    assert front_end.num_frames(64600) == (202 if kind == "whisper" else 201)


def test_unknown_kinds_and_presets_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown tiny SSL kind 'data2vec' \(did you mean 'data2vec-audio'\?\)"):
        tiny_config("data2vec")
    with pytest.raises(ValueError, match="valid: " + ", ".join(TINY_KINDS)):
        build({"name": "xlsr_aasist", "ssl": {"tiny": "whisperr"}})
    with pytest.raises(ValueError, match=r"unknown SSL preset 'mms_300' \(did you mean 'mms_300m'\?\)"):
        preset_config("mms_300")
    with pytest.raises(ValueError, match="supported: " + ", ".join(MODEL_TYPES)):
        SSLFrontEnd({"model_type": "speech_to_text"})


@pytest.mark.parametrize("model_class", [Data2VecAudioModel, UniSpeechSatModel])
def test_loads_a_save_pretrained_folder(tmp_path, model_class):
    torch.manual_seed(0)
    kind = model_class.config_class.model_type
    model = model_class(tiny_config(kind)).eval()
    model.save_pretrained(tmp_path / kind)
    front_end = SSLFrontEnd(tmp_path / kind, local_files_only=True).eval()
    assert type(front_end.model) is model_class and front_end.model.config.layerdrop == 0.0
    x = wave()
    with torch.no_grad():
        torch.testing.assert_close(front_end(x), model(x).last_hidden_state, atol=1e-5, rtol=0)


def test_mms_presets_are_xlsr_shaped_wav2vec2():
    for mms, xlsr, millions in (("mms_300m", "xlsr_300m", 315.4), ("mms_1b", "xlsr_1b", 962.5)):
        config = preset_config(mms)
        assert config.model_type == "wav2vec2" and config.to_dict() == preset_config(xlsr).to_dict()
        with torch.device("meta"):
            front_end = SSLFrontEnd(config)
        assert sum(p.numel() for p in front_end.parameters()) / 1e6 == pytest.approx(millions, rel=1e-3)


@pytest.mark.parametrize(
    ("preset", "millions"),
    [
        # the whole Whisper model, against the paper's table 1 (39M, 74M, 244M, 769M, 1550M)
        ("whisper_tiny", 39),
        ("whisper_base", 74),
        ("whisper_small", 244),
        ("whisper_medium", 769),
        ("whisper_large_v3", 1550),
        # "95M" (wav2vec 2.0, HuBERT), 94.70M (WavLM), 94.68M (UniSpeech-SAT) as published
        ("wav2vec2_base", 95),
        ("hubert_base", 95),
        ("wavlm_base", 94.70),
        ("unispeech_sat_base", 94.68),
    ],
)
def test_presets_have_the_published_sizes(preset, millions):
    config = preset_config(preset)
    with torch.device("meta"):
        model = WhisperModel(config) if config.model_type == "whisper" else SSLFrontEnd(config).model
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, rel=0.035)
    if config.model_type == "whisper":
        assert config.num_mel_bins == (128 if preset == "whisper_large_v3" else 80)
        assert config.encoder_ffn_dim == 4 * config.d_model
    else:
        assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (768, 12, 3072)


def test_data2vec_audio_base_preset_shape():
    config = preset_config("data2vec_audio_base")
    assert (config.num_conv_pos_embeddings, config.conv_pos_kernel_size, config.num_conv_pos_embedding_groups) == (
        5,
        19,
        16,
    )
    assert (config.hidden_size, config.num_hidden_layers) == (768, 12) and list(config.conv_stride) == [5] + [2] * 6


def test_every_preset_builds():
    for name in PRESETS:
        with torch.device("meta"):
            front_end = SSLFrontEnd(preset_config(name))
        assert front_end.frame_rate == 50.0, name


# --- Whisper: log-mel, positions, checkpoints ---------------------------------------------------


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("samples", [64600, 30 * 16000, 7 * 16000 + 10])
def test_log_mel_matches_whispers_feature_extractor(n_mels, samples):
    """On the frames of the audio, to 1e-4: a 4 s crop, a full 30 s chunk (no padding at all) and a
    length whose last frame's window reaches 30 samples past the end (zeros there, as in the
    extractor's 30 s padding); two utterances of different loudness in one batch (the clamp is per utterance)."""
    x = torch.stack([speech_like(samples, seed=0), speech_like(samples, seed=1, level=0.01)])
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    reference = extractor(list(x.numpy()), sampling_rate=16000, return_tensors="pt").input_features
    ours = WhisperLogMel(n_mels)(x)
    assert ours.shape == (2, n_mels, samples // 160) and reference.shape[-1] == 3000
    torch.testing.assert_close(ours, reference[..., : samples // 160], atol=1e-4, rtol=0)
    assert ours.std() > 0.1  # a real spectrogram, not the floor


def test_log_mel_is_differentiable_batched_and_follows_the_module():
    log_mel = WhisperLogMel(80)
    x = torch.stack([speech_like(16000), speech_like(16000, seed=3)]).requires_grad_()
    out = log_mel(x)
    torch.testing.assert_close(out[1:], log_mel(x[1:]), atol=1e-6, rtol=0)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert log_mel.state_dict() == {}  # derived, never stored
    doubled = WhisperLogMel(80).double()
    torch.testing.assert_close(doubled(x.detach()), out.detach(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least 160 samples"):
        log_mel(torch.zeros(1, 100))


def tiny_whisper(**overrides) -> SSLFrontEnd:
    torch.manual_seed(0)
    return SSLFrontEnd.tiny("whisper", config_overrides={**WHISPER_NO_DROPOUT, **overrides}).eval()


def test_a_30_s_input_gives_transformers_whisper_encoder_output():
    front_end = tiny_whisper()
    x = speech_like(30 * 16000)[None]
    features = WhisperFeatureExtractor()(x[0].numpy(), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ours = front_end(x)
        exact = front_end.model.encoder(front_end.model.log_mel(x)).last_hidden_state
        reference = front_end.model.encoder(features).last_hidden_state
    assert ours.shape == (1, 1500, 32)
    torch.testing.assert_close(ours, exact, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def test_short_input_slices_the_positions():
    """1 s against the same second zero-padded to 30 s (Whisper's own input): the mel frames are
    the same, the convolution + position stage too except on the last frame, the transformer
    layers' outputs not (each padded frame attends to 29 s of padding): what slicing changes."""
    front_end = tiny_whisper()
    x = speech_like(16000)[None]
    padded = torch.nn.functional.pad(x, (0, 29 * 16000))
    model = front_end.model
    with torch.no_grad():
        torch.testing.assert_close(model.log_mel(x), model.log_mel(padded)[..., :100], atol=1e-6, rtol=0)
        short, long = model(x, output_hidden_states=True), model(padded, output_hidden_states=True)
    frames = short.last_hidden_state.shape[1]
    assert frames == 50 == front_end.num_frames(16000) and long.last_hidden_state.shape[1] == 1500
    torch.testing.assert_close(short.hidden_states[0][:, :-1], long.hidden_states[0][:, : frames - 1])
    assert not torch.allclose(short.hidden_states[0][:, -1], long.hidden_states[0][:, frames - 1], atol=1e-4)
    difference = (short.last_hidden_state - long.last_hidden_state[:, :frames]).abs().max()
    assert difference > 1e-2  # the attention context differs: stated, not hidden
    with pytest.raises(ValueError, match=r"at most 480000 samples \(30 s, 1500 positions\), got 480320"):
        front_end(torch.zeros(1, 480320))


def test_whisper_fine_tune_defaults_and_refusals():
    front_end = SSLFrontEnd.tiny("whisper")
    config = front_end.model.config
    assert (config.apply_spec_augment, config.encoder_layerdrop, config.mask_time_prob) == (False, 0.0, 0.0)
    assert front_end.model.encoder.layerdrop == 0.0
    with pytest.raises(ValueError, match="does not apply SpecAugment"):
        SSLFrontEnd.tiny("whisper", config_overrides={"apply_spec_augment": True})
    with pytest.raises(ValueError, match="WhisperConfig has no option"):
        SSLFrontEnd.tiny("whisper", config_overrides={"layerdrop": 0.1})
    dropping = SSLFrontEnd.tiny("whisper", config_overrides={**WHISPER_NO_DROPOUT, "encoder_layerdrop": 0.5}).train()
    outputs = {tuple(dropping(wave(1)).flatten()[:4].tolist()) for _ in range(12)}
    assert len(outputs) > 1  # layers dropped in train mode when asked


def whisper_gradients(feature_grad_mult: float) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    front_end = SSLFrontEnd.tiny("whisper", feature_grad_mult=feature_grad_mult).eval()
    front_end(wave()).square().mean().backward()
    return {name: p.grad for name, p in front_end.model.named_parameters() if p.requires_grad}


def test_whisper_feature_grad_mult_scales_only_the_convolutions():
    full, scaled, cut = whisper_gradients(1.0), whisper_gradients(0.1), whisper_gradients(0.0)
    convolutions = ("encoder.conv1.", "encoder.conv2.")
    assert {"encoder.conv1.weight", "encoder.conv2.bias"} <= full.keys()
    for name, grad in full.items():
        factor = 0.1 if name.startswith(convolutions) else 1.0
        torch.testing.assert_close(scaled[name], factor * grad, msg=name)
        assert (cut[name] is None) == name.startswith(convolutions), name


@pytest.mark.parametrize("kind", ["whisper", "data2vec-audio"])
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        front_end = SSLFrontEnd.tiny(kind, layer="weighted", gradient_checkpointing=checkpointing).train()
        torch.manual_seed(1)
        front_end(wave()).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in front_end.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("saved_class", [WhisperForConditionalGeneration, WhisperModel, WhisperAudioEncoder])
def test_loads_a_whisper_checkpoint_without_its_decoder(tmp_path, saved_class):
    torch.manual_seed(0)
    config = WhisperConfig(**tiny_config("whisper").to_dict())
    saved = saved_class(config).eval()
    saved.save_pretrained(tmp_path / "whisper")
    front_end = SSLFrontEnd(tmp_path / "whisper", local_files_only=True).eval()
    encoder = saved if saved_class is WhisperAudioEncoder else saved.get_encoder()
    encoder = encoder.encoder if saved_class is WhisperAudioEncoder else encoder
    for name, tensor in encoder.state_dict().items():
        torch.testing.assert_close(front_end.model.encoder.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
    assert not any("decoder" in name for name in front_end.state_dict())
    x = speech_like(30 * 16000)[None]
    with torch.no_grad():
        torch.testing.assert_close(front_end(x), encoder(front_end.model.log_mel(x)).last_hidden_state)
    with pytest.raises(ValueError, match=r"lacks weights for: encoder\.layers\.2\."):
        SSLFrontEnd(tmp_path / "whisper", config_overrides={"encoder_layers": 3})


def test_a_whisper_detector_checkpoint_rebuilds_from_its_config(tmp_path):
    torch.manual_seed(0)
    WhisperModel(WhisperConfig(**tiny_config("whisper").to_dict())).save_pretrained(tmp_path / "w")
    named = {"name": "xlsr_aasist", "ssl": {"source": str(tmp_path / "w"), "layer": 1}}
    model = build(named).eval()
    stored = self_contained(named, model)
    assert stored["ssl"]["source"]["model_type"] == "whisper" and str(tmp_path) not in repr(stored)
    rebuilt = build(stored).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = wave()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)[1], model(x)[1])


def test_sls_reads_every_whisper_layer():
    """xlsr_sls's layer-stack front-end works on Whisper too: its stack is each encoder layer's
    output (the last before the final LayerNorm), as the hooks on the layers see them."""
    from dpda.models.sls import LayerStackFrontEnd

    torch.manual_seed(0)
    stack = LayerStackFrontEnd.tiny("whisper").eval()
    x = wave()
    with torch.no_grad():
        layers, states = stack(x), layer_io(stack, x)
        assert layers.shape == (2, 2, 50, 32)
        torch.testing.assert_close(layers[:, 0], states[1])
        torch.testing.assert_close(stack.model.encoder.layer_norm(layers[:, 1]), states[2])
    model = build({"name": "xlsr_sls", "ssl": {"tiny": "whisper"}, "hidden": 16}).train()
    model(wave(2, 64600))[1].sum().backward()
    assert model.ssl.model.encoder.layers[0].fc1.weight.grad.abs().sum() > 0
