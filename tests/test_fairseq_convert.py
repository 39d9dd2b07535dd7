"""fairseq wav2vec 2.0 checkpoints to transformers: exact outputs, refused globals, key errors.

The fairseq names are written out by hand below (not taken from the converter's table), for a
tiny transformers model with random weights; the converted folder must reproduce its outputs."""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Model

from dpda.models.fairseq_convert import (
    STANDARD_CONV,
    UnsafeCheckpointError,
    convert_fairseq_checkpoint,
    fairseq_to_transformers,
    load_fairseq_checkpoint,
    parse_conv_layers,
)
from dpda.models.ssl import SSLFrontEnd, tiny_config

XLSR_LIKE = {"feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True}
BASE_LIKE = {"feat_extract_norm": "group", "do_stable_layer_norm": False, "conv_bias": False}


def random_model(layout: dict, **sizes) -> Wav2Vec2Model:
    """A tiny model whose every weight differs from its initial value (so that two layer norms
    swapped by a wrong mapping would show)."""
    torch.manual_seed(0)
    model = Wav2Vec2Model(tiny_config("wav2vec2", mask_time_prob=0.05, **layout, **sizes)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def fairseq_names(model: Wav2Vec2Model) -> dict[str, torch.Tensor]:
    """The model's state dict under fairseq's names, plus pre-training-only parts."""
    hf = dict(model.state_dict())
    config = model.config
    out: dict[str, torch.Tensor] = {}

    def put(fairseq: str, transformers: str) -> None:
        out[fairseq] = hf.pop(transformers)

    for i in range(len(config.conv_dim)):
        put(f"feature_extractor.conv_layers.{i}.0.weight", f"feature_extractor.conv_layers.{i}.conv.weight")
        if config.conv_bias:
            put(f"feature_extractor.conv_layers.{i}.0.bias", f"feature_extractor.conv_layers.{i}.conv.bias")
        for p in ("weight", "bias"):
            if config.feat_extract_norm == "layer":  # Sequential(TransposeLast, LayerNorm, TransposeLast)
                put(f"feature_extractor.conv_layers.{i}.2.1.{p}", f"feature_extractor.conv_layers.{i}.layer_norm.{p}")
            elif i == 0:  # GroupNorm on the first layer only
                put(f"feature_extractor.conv_layers.0.2.{p}", f"feature_extractor.conv_layers.0.layer_norm.{p}")
    for p in ("weight", "bias"):
        put(f"layer_norm.{p}", f"feature_projection.layer_norm.{p}")
        put(f"post_extract_proj.{p}", f"feature_projection.projection.{p}")
        put(f"encoder.layer_norm.{p}", f"encoder.layer_norm.{p}")
    put("mask_emb", "masked_spec_embed")
    put("encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias")
    put("encoder.pos_conv.0.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0")
    put("encoder.pos_conv.0.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1")
    for n in range(config.num_hidden_layers):
        fs, tf = f"encoder.layers.{n}.", f"encoder.layers.{n}."
        for p in ("weight", "bias"):
            for proj in ("q", "k", "v", "out"):
                put(f"{fs}self_attn.{proj}_proj.{p}", f"{tf}attention.{proj}_proj.{p}")
            put(f"{fs}self_attn_layer_norm.{p}", f"{tf}layer_norm.{p}")
            put(f"{fs}fc1.{p}", f"{tf}feed_forward.intermediate_dense.{p}")
            put(f"{fs}fc2.{p}", f"{tf}feed_forward.output_dense.{p}")
            put(f"{fs}final_layer_norm.{p}", f"{tf}final_layer_norm.{p}")
    assert not hf, f"test mapping misses {sorted(hf)}"
    out["quantizer.vars"] = torch.randn(1, 8, 4)
    out["quantizer.weight_proj.weight"] = torch.randn(8, 32)
    out["project_q.weight"] = torch.randn(4, 4)
    out["final_proj.bias"] = torch.randn(4)
    return out


def model_cfg(model: Wav2Vec2Model) -> dict:
    """fairseq's model options for the tiny model."""
    c = model.config
    conv = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride, strict=True))
    return {
        "_name": "wav2vec2",
        "extractor_mode": "layer_norm" if c.feat_extract_norm == "layer" else "default",
        "layer_norm_first": c.do_stable_layer_norm,
        "conv_feature_layers": conv,
        "conv_bias": c.conv_bias,
        "encoder_layers": c.num_hidden_layers,
        "encoder_embed_dim": c.hidden_size,
        "encoder_ffn_embed_dim": c.intermediate_size,
        "encoder_attention_heads": c.num_attention_heads,
        "conv_pos": c.num_conv_pos_embeddings,
        "conv_pos_groups": c.num_conv_pos_embedding_groups,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "encoder_layerdrop": 0.05,
    }


def assert_same_outputs(model: Wav2Vec2Model, folder: Path) -> None:
    front_end = SSLFrontEnd(folder, local_files_only=True).eval()
    x = torch.randn(2, 16000)
    with torch.no_grad():
        expected = model(x).last_hidden_state
        got = front_end(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_hydra_cfg_checkpoint_converts_exactly(tmp_path):
    model = random_model(XLSR_LIKE)
    src = tmp_path / "xlsr.pt"
    cfg = {"model": model_cfg(model), "task": {"_name": "audio_pretraining", "normalize": True, "sample_rate": 16000}}
    extra = {"val_loss": np.float64(2.5), "steps": np.arange(3), "metrics": {"loss": {"val": torch.tensor(1.0)}}}
    torch.save({"args": None, "cfg": cfg, "model": fairseq_names(model), "extra_state": extra}, src)
    dst = convert_fairseq_checkpoint(src, tmp_path / "hf").folder
    config = json.loads((dst / "config.json").read_text())
    assert config["do_stable_layer_norm"] and config["feat_extract_norm"] == "layer"
    assert config["conv_stride"] == [5, 8, 8] and config["num_attention_heads"] == 2
    assert config["attention_dropout"] == 0.0 and config["layerdrop"] == 0.05
    assert (config["mask_time_prob"], config["mask_feature_prob"], config["apply_spec_augment"]) == (0.0, 0.0, False)
    assert json.loads((dst / "preprocessor_config.json").read_text())["do_normalize"] is True
    assert (dst / "conversion.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "xlsr.pt"]  # no temporary folder left
    assert_same_outputs(model, dst)


def test_args_namespace_legacy_file_converts_exactly(tmp_path):
    model = random_model(BASE_LIKE)
    src = tmp_path / "base.pt"
    args = argparse.Namespace(arch="wav2vec2", normalize=False, sample_rate=16000, **model_cfg(model))
    torch.save({"args": args, "model": fairseq_names(model)}, src, _use_new_zipfile_serialization=False)
    _, cfg = load_fairseq_checkpoint(src)
    assert cfg["arch"] == "wav2vec2" and isinstance(cfg, dict)
    dst = convert_fairseq_checkpoint(src, tmp_path / "hf").folder
    config = json.loads((dst / "config.json").read_text())
    assert not config["do_stable_layer_norm"] and config["feat_extract_norm"] == "group"
    assert not config["conv_bias"]
    assert_same_outputs(model, dst)


def test_prefixed_state_dict_without_cfg(tmp_path):
    """The paper's detectors hold the encoder under ``ssl_model.model.`` beside a back-end, and no
    cfg: sizes and strides come from the shapes (standard feature encoder)."""
    standard = {
        "conv_dim": [16] * len(STANDARD_CONV),
        "conv_kernel": [k for _, k, _ in STANDARD_CONV],
        "conv_stride": [s for _, _, s in STANDARD_CONV],
    }
    model = random_model(XLSR_LIKE, **standard)
    state = {f"ssl_model.model.{k}": v for k, v in fairseq_names(model).items()}
    state["LL.weight"] = torch.randn(4, 32)
    torch.save(state, tmp_path / "detector.pth")
    loaded, cfg = load_fairseq_checkpoint(tmp_path / "detector.pth")
    assert cfg == {}
    with pytest.raises(ValueError, match="encoder_attention_heads"):
        fairseq_to_transformers(loaded, cfg, prefix="ssl_model.model.")
    config, weights = fairseq_to_transformers(loaded, {"encoder_attention_heads": 2}, prefix="ssl_model.model.")
    assert config.conv_stride == standard["conv_stride"] and config.do_stable_layer_norm
    converted = Wav2Vec2Model(config).eval()
    converted.load_state_dict(weights, strict=True)
    x = torch.randn(1, 16000)
    with torch.no_grad():
        torch.testing.assert_close(converted(x).last_hidden_state, model(x).last_hidden_state, atol=1e-5, rtol=0)


def listed(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(
    ("layers", "width", "heads", "layout"),
    [(24, 1024, 16, XLSR_LIKE), (48, 1280, 16, XLSR_LIKE), (48, 1920, 16, XLSR_LIKE), (12, 768, 12, BASE_LIKE)],
    ids=["xlsr-300m", "xlsr-1b", "xlsr-2b", "base"],
)
def test_released_sizes_without_cfg(layers, width, heads, layout):
    """The released models' shapes (on the meta device: no memory) give back their configs."""
    from transformers import Wav2Vec2Config

    config = Wav2Vec2Config(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        mask_time_prob=0.05,
        **layout,
    )
    with torch.device("meta"):
        model = Wav2Vec2Model(config)
    state = {f"ssl_model.model.{k}": v for k, v in fairseq_names(model).items()}
    derived, weights = fairseq_to_transformers(state, None, prefix="ssl_model.model.")
    for name in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "conv_dim",
        "conv_kernel",
        "conv_stride",
        "conv_bias",
        "feat_extract_norm",
        "do_stable_layer_norm",
        "num_conv_pos_embeddings",
        "num_conv_pos_embedding_groups",
    ):
        assert listed(getattr(derived, name)) == listed(getattr(config, name)), name
    assert weights.keys() == model.state_dict().keys() - {"masked_spec_embed"}  # the mask embedding is dropped


#: A saved configuration with values other than fairseq's defaults, and options that do not carry.
UNUSUAL = {
    "dropout": 0.2,
    "attention_dropout": 0.15,
    "activation_dropout": 0.05,
    "dropout_input": 0.25,
    "encoder_layerdrop": 0.1,
    "feature_grad_mult": 0.1,
    "dropout_features": 0.3,
    "mask_prob": 0.65,
    "mask_channel_prob": 0.1,
    "quantize_targets": True,
    "latent_temp": [2.0, 0.5, 0.999995],
}
TRANSFORMERS_VALUES = {
    "hidden_dropout": 0.2,
    "attention_dropout": 0.15,
    "activation_dropout": 0.05,
    "feat_proj_dropout": 0.25,
    "layerdrop": 0.1,
    "mask_time_prob": 0.0,
    "mask_feature_prob": 0.0,
    "apply_spec_augment": False,
}


@pytest.mark.parametrize("form", ["cfg", "args"])
def test_every_saved_value_is_carried_or_reported(tmp_path, form, capsys):
    from dpda.cli import main

    model = random_model(XLSR_LIKE)
    options = {**model_cfg(model), **UNUSUAL}
    if form == "cfg":
        options["made_up_option"] = 3
        saved = {"cfg": {"model": options, "task": {"normalize": True, "sample_rate": 16000}}}
    else:  # fairseq before hydra: one flat Namespace of model, task and training options
        saved = {"args": argparse.Namespace(arch="wav2vec2", normalize=True, sample_rate=16000, lr=[5e-4], **options)}
    torch.save({**saved, "model": fairseq_names(model)}, tmp_path / "src.pt")
    assert main(["convert-fairseq", str(tmp_path / "src.pt"), str(tmp_path / "hf")]) == 0
    printed = capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert {k: config[k] for k in TRANSFORMERS_VALUES} == TRANSFORMERS_VALUES
    report = json.loads((tmp_path / "hf" / "conversion.json").read_text())
    assert report["frontend_options"] == {"feature_grad_mult": 0.1, "config_overrides": {"layerdrop": 0.1}}
    assert report["task"]["normalize"] is True
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["do_normalize"] is True
    not_carried = {"dropout_features", "mask_prob", "mask_channel_prob", "quantize_targets", "latent_temp"}
    if form == "cfg":  # flat args also hold training options: only known model options are listed there
        assert "not known" in report["not_carried"]["made_up_option"]["reason"]
        not_carried.add("made_up_option")
    assert set(report["not_carried"]) == not_carried
    assert "mask=False" in report["not_carried"]["mask_prob"]["reason"]
    assert "feature_grad_mult: 0.1" in printed and "not carried: dropout_features=0.3" in printed
    # the folder runs with the carried dropouts; dpda's front-end still never masks
    front_end = SSLFrontEnd(tmp_path / "hf", feature_grad_mult=0.1)
    assert front_end.model.config.hidden_dropout == 0.2 and front_end.model.config.mask_time_prob == 0.0


def test_fairseq_defaults_fill_a_config_without_the_values(tmp_path):
    model = random_model(XLSR_LIKE)
    options = {
        k: v for k, v in model_cfg(model).items() if k not in ("dropout", "attention_dropout", "encoder_layerdrop")
    }
    torch.save({"cfg": {"model": options}, "model": fairseq_names(model)}, tmp_path / "src.pt")
    report = convert_fairseq_checkpoint(tmp_path / "src.pt", tmp_path / "hf").report
    assert report["carried"]["dropout"] == {"to": "hidden_dropout", "value": 0.1, "from": "fairseq default"}
    assert report["frontend_options"]["feature_grad_mult"] == 1.0 and report["task"]["normalize"] is False


def test_unmapped_and_missing_keys_are_listed():
    model = random_model(XLSR_LIKE)
    cfg = {"model": model_cfg(model)}
    state = fairseq_names(model)
    extra = {**state, "encoder.layers.0.self_attn.rel_pos.weight": torch.zeros(1), "adapter.bias": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"2 fairseq key.*rel_pos\.weight, adapter\.bias"):
        fairseq_to_transformers(extra, cfg)
    partial = {k: v for k, v in state.items() if k != "encoder.layers.1.fc2.bias"}
    with pytest.raises(ValueError, match=r"missing \['encoder\.layers\.1\.feed_forward\.output_dense\.bias'\]"):
        fairseq_to_transformers(partial, cfg)
    with pytest.raises(ValueError, match="no key starts with the prefix"):
        fairseq_to_transformers(state, cfg, prefix="ssl_model.model.")


def test_config_that_disagrees_with_the_tensors_is_refused():
    model = random_model(XLSR_LIKE)
    cfg = {"model": {**model_cfg(model), "encoder_layers": 3, "extractor_mode": "default"}}
    with pytest.raises(ValueError, match=r"encoder_layers=3.*extractor_mode='default'"):
        fairseq_to_transformers(fairseq_names(model), cfg)


def test_conv_layer_spec_is_parsed_without_eval():
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]") == STANDARD_CONV
    with pytest.raises(ValueError, match="unsupported"):
        parse_conv_layers("__import__('os').system('true')")


class Payload:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Custom:
    """A user class: unpickling it would import this module and set its state."""

    def __setstate__(self, state):
        Path(state["marker"]).touch()


@pytest.mark.parametrize("zip_format", [True, False])
def test_arbitrary_globals_are_refused_and_never_run(tmp_path, zip_format):
    marker = tmp_path / "ran"
    custom = Custom()
    custom.__dict__["marker"] = str(marker)
    src = tmp_path / "evil.pt"
    torch.save(
        {"model": {"w": torch.zeros(1)}, "cfg": {"x": Payload(marker)}, "extra": custom},
        src,
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.raises(UnsafeCheckpointError) as error:
        convert_fairseq_checkpoint(src, tmp_path / "hf")
    assert f"{os.system.__module__}.system" in str(error.value)
    assert f"{Custom.__module__}.Custom" in str(error.value)
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_omegaconf_and_fairseq_objects_become_plain_config(tmp_path, monkeypatch):
    """A 2020-era cfg: omegaconf containers and nodes with a fairseq enum value, rebuilt as inert
    records (same pickled layout as omegaconf's: ``_metadata``, ``_parent``, ``_content``/``_val``)."""
    names = ("omegaconf", "omegaconf.dictconfig", "omegaconf.nodes", "fairseq", "fairseq.enums")
    modules = {name: types.ModuleType(name) for name in names}

    class DictConfig:
        pass

    class AnyNode:
        pass

    class Mode(enum.Enum):
        layer_norm = "layer_norm"

    for cls, module in ((DictConfig, "omegaconf.dictconfig"), (AnyNode, "omegaconf.nodes"), (Mode, "fairseq.enums")):
        cls.__module__, cls.__qualname__ = module, cls.__name__
        setattr(modules[module], cls.__name__, cls)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)

    def node(value):
        n = AnyNode()
        n.__dict__.update(_metadata=None, _parent=None, _val=value)
        return n

    def container(content):
        c = DictConfig()
        c.__dict__.update(_metadata=None, _parent=None, _content=content)
        return c

    cfg = container({"model": container({"extractor_mode": node(Mode.layer_norm), "encoder_layers": node(2)})})
    torch.save({"model": {"w": torch.ones(1)}, "cfg": cfg}, tmp_path / "old.pt")
    for name in modules:
        monkeypatch.delitem(sys.modules, name)  # fairseq and omegaconf are not installed
    state, plain = load_fairseq_checkpoint(tmp_path / "old.pt")
    assert plain == {"model": {"extractor_mode": "layer_norm", "encoder_layers": 2}}
    assert torch.equal(state["w"], torch.ones(1))


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import transformers

    model = random_model(XLSR_LIKE)
    torch.save({"cfg": {"model": model_cfg(model)}, "model": fairseq_names(model)}, tmp_path / "src.pt")

    def disk_full(self, folder, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(transformers.Wav2Vec2FeatureExtractor, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="disk full"):
        convert_fairseq_checkpoint(tmp_path / "src.pt", tmp_path / "hf")
    assert [p.name for p in tmp_path.iterdir()] == ["src.pt"]


def test_existing_destination_is_kept(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(FileExistsError):
        convert_fairseq_checkpoint(tmp_path / "missing.pt", tmp_path / "hf")
