"""The paper's released detectors (paper-code state dicts with fairseq SSL names) load into dpda,
and `dpda convert-paper` makes dpda checkpoints of them; ``model.init`` starts a model from one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file
from test_fairseq_convert import XLSR_LIKE, fairseq_names
from tiny_runs import experiment
from transformers import Wav2Vec2Model

from dpda.checkpoint import load_weights
from dpda.cli import main
from dpda.config import config_from_dict
from dpda.evaluate.evaluation import load_detector
from dpda.models import build
from dpda.models.detector import SSLDetector
from dpda.models.fairseq_convert import STANDARD_CONV
from dpda.models.paper_checkpoint import load_paper_checkpoint, paper_model
from dpda.models.registry import SSL_BACKENDS, _load, ssl_frontend_class
from dpda.models.ssl import tiny_config
from dpda.train import train

HEADS = {"encoder_attention_heads": 2}  # the tiny width is not a released one, so say it


def released_like(name: str) -> tuple[SSLDetector, dict[str, torch.Tensor]]:
    """A random dpda detector and the same weights under the paper code's names: the encoder
    under ``ssl_model.model.`` (fairseq names), the back-end at the top level, all behind the
    ``module.`` prefix that DataParallel leaves."""
    torch.manual_seed(0)
    config = tiny_config(
        "wav2vec2",
        **XLSR_LIKE,
        conv_dim=[16] * len(STANDARD_CONV),
        conv_kernel=[k for _, k, _ in STANDARD_CONV],
        conv_stride=[s for _, _, s in STANDARD_CONV],
    )
    frontend = ssl_frontend_class(name)(config)
    model = SSLDetector(frontend, _load(SSL_BACKENDS[name])(ssl_dim=frontend.output_dim)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # fairseq checkpoints also hold the mask embedding, which a fine-tuning front-end lacks
    pretrained = Wav2Vec2Model(type(config)(**{**config.to_dict(), "mask_time_prob": 0.05}))
    pretrained.load_state_dict(frontend.model.state_dict(), strict=False)
    state = {f"module.ssl_model.model.{k}": v for k, v in fairseq_names(pretrained).items()}
    state.update({f"module.{k}": v for k, v in model.backend.state_dict().items()})
    return model, state


@pytest.mark.parametrize("name", sorted(SSL_BACKENDS))
def test_released_naming_converts_to_the_same_detector(name, tmp_path):
    model, state = released_like(name)
    torch.save(state, tmp_path / "released.pth")
    converted = load_paper_checkpoint(tmp_path / "released.pth", name, HEADS).eval()
    x = 0.1 * torch.randn(2, 16000)
    with torch.no_grad():
        torch.testing.assert_close(converted(x)[1], model(x)[1], atol=1e-5, rtol=0)


def test_keys_that_do_not_map_are_all_listed():
    _, state = released_like("xlsr_conformer_tcm")
    state["module.ssl_model.extra_head.weight"] = torch.zeros(2)
    state["module.unknown_layer.bias"] = torch.zeros(2)
    del state["module.conformer.fc5.weight"]
    with pytest.raises(ValueError) as error:
        paper_model("xlsr_conformer_tcm", state, HEADS)
    message = str(error.value)
    assert "ssl_model.extra_head.weight" in message and "backend.unknown_layer.bias" in message
    assert "backend.conformer.fc5.weight" in message
    with pytest.raises(ValueError, match="valid: xlsr_aasist"):
        paper_model("conformer", state)


# ---------------------------------------------------------------------------------------------
# dpda convert-paper: the paper code's real back-ends (../shared/reference) on a fake XLS-R that is
# 1024 wide like the real one but has one layer and a thin feature encoder, so the test is fast.

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper_checkpoints"
SAMPLES = 66800  # what the paper code scores: no crop or padding on the way
FAKE_XLSR = {
    **XLSR_LIKE,
    "hidden_size": 1024,
    "num_hidden_layers": 1,
    "num_attention_heads": 16,
    "intermediate_size": 64,
    "conv_dim": [8] * len(STANDARD_CONV),
    "conv_kernel": [k for _, k, _ in STANDARD_CONV],
    "conv_stride": [s for _, _, s in STANDARD_CONV],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 16,
    "mask_time_prob": 0.05,
}


def reference_backend(name: str) -> dict[str, list[int]]:
    """Names and shapes of the paper code's back-end ``name`` (its ``state_dict()``)."""
    path = REFERENCE / f"{name}_backend_keys.json"
    if not path.is_file():
        pytest.skip(f"{path} not found: the paper code's back-end names come from ../shared/reference")
    return json.loads(path.read_text())["keys"]


def released_state(name: str) -> dict[str, torch.Tensor]:
    """A state dict as the paper code saves it under DataParallel: random tensors under the paper
    code's back-end names and fairseq's XLS-R names (pre-training parts included)."""
    torch.manual_seed(0)
    xlsr = Wav2Vec2Model(tiny_config("wav2vec2", **FAKE_XLSR))
    state = {f"module.ssl_model.model.{k}": v for k, v in fairseq_names(xlsr).items()}
    for key, shape in reference_backend(name).items():
        if key.endswith("num_batches_tracked"):
            tensor = torch.tensor(100)
        elif key.endswith("running_var"):
            tensor = 0.5 + torch.rand(shape)
        else:
            tensor = 0.05 * torch.randn(shape)
        state[f"module.{key}"] = tensor
    return state


def convert(*args: str) -> tuple[int, str]:
    """``dpda convert-paper ARGS`` through the real entry point: exit status and stderr."""
    import contextlib
    import io

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        status = main(["convert-paper", *args])
    return status, errors.getvalue()


@pytest.mark.parametrize("name", ["xlsr_conformer_tcm", "xlsr_aasist"])
def test_converted_paper_checkpoint_scores_as_the_released_model(name, tmp_path, capsys):
    state = released_state(name)
    torch.save(state, tmp_path / "released.pth")
    dst = tmp_path / "converted" / f"{name}.safetensors"
    assert main(["convert-paper", str(tmp_path / "released.pth"), str(dst), "--model", name]) == 0
    assert sorted(p.name for p in dst.parent.iterdir()) == [f"{name}.json", f"{name}.safetensors"]
    sf.write(
        tmp_path / "utterance.wav", 0.1 * np.random.default_rng(0).standard_normal(SAMPLES), 16000, subtype="FLOAT"
    )
    capsys.readouterr()
    assert main(["score", str(tmp_path / "utterance.wav"), "--model", str(dst), "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    released = load_paper_checkpoint(tmp_path / "released.pth", name).eval()
    audio = torch.from_numpy(sf.read(tmp_path / "utterance.wav", dtype="float32")[0])[None]
    with torch.no_grad():
        expected = released(audio)[1][0, 1].item()  # the paper's score: the bona fide logit
    assert record["score"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # the same weights start a training run (model.init), rebuilt from the metadata alone
    _, meta = load_weights(dst)
    assert "init" not in meta["model"] and isinstance(meta["model"]["ssl"]["source"], dict)
    initialised = build({**meta["model"], "init": str(dst)})
    for key, value in released.state_dict().items():
        assert torch.equal(initialised.state_dict()[key], value), key
    assert convert(str(tmp_path / "released.pth"), str(dst), "--model", name)[0] == 2  # kept, not overwritten


def test_convert_fairseq_points_a_released_detector_to_convert_paper(tmp_path, capsys):
    torch.save(released_state("xlsr_aasist"), tmp_path / "released.pth")
    assert main(["convert-fairseq", str(tmp_path / "released.pth"), str(tmp_path / "out")]) == 2
    assert "dpda convert-paper" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_convert_paper_lists_every_key_that_does_not_fit_in_one_error(tmp_path):
    state = released_state("xlsr_conformer_tcm")
    state["module.ssl_model.model.encoder.layers.0.adapter.weight"] = torch.zeros(4)
    del state["module.conformer.fc5.bias"]
    torch.save(state, tmp_path / "released.pth")
    status, error = convert(
        str(tmp_path / "released.pth"), str(tmp_path / "out.safetensors"), "--model", "xlsr_conformer_tcm"
    )
    assert status == 2
    assert "ssl_model.model.encoder.layers.0.adapter.weight" in error and "backend.conformer.fc5.bias" in error
    assert error.count("\n") == 1 and not (tmp_path / "out.safetensors").exists()


def test_convert_paper_refuses_what_is_not_a_state_dict_or_a_paper_model(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    torch.save({"epoch": 3, "model": {"w": torch.zeros(1)}}, tmp_path / "training.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    out = str(tmp_path / "out.safetensors")
    for source, message in (
        ("list.pth", "expected a state dict"),
        ("training.pth", "entries that are no tensors"),
        ("text.pth", "not a torch.save file"),
    ):
        status, error = convert(str(tmp_path / source), out, "--model", "xlsr_aasist")
        assert status == 2 and message in error, error
    status, error = convert(str(tmp_path / "list.pth"), out, "--model", "conformer")
    assert status == 2 and "valid: xlsr_aasist, xlsr_conformer_tcm, xlsr_mamba" in error
    status, error = convert(str(tmp_path / "list.pth"), str(tmp_path / "out.pt"), "--model", "xlsr_aasist")
    assert status == 2 and "must end in .safetensors" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.pth", "text.pth", "training.pth"]


def test_model_init_loads_strictly_and_never_unpickles(tmp_path):
    config = {"name": "xlsr_aasist", "ssl": {"tiny": "wav2vec2"}}
    torch.manual_seed(0)
    source = build(config)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "weights.safetensors")
    torch.manual_seed(1)
    initialised = build({**config, "init": str(tmp_path / "weights.safetensors")})
    assert all(torch.equal(initialised.state_dict()[k], v) for k, v in source.state_dict().items())
    weighted = {
        **config,
        "ssl": {"tiny": "wav2vec2", "layer": "weighted"},
        "init": str(tmp_path / "weights.safetensors"),
    }
    with pytest.raises(
        ValueError, match=r"weights.safetensors does not fit .* weights not filled \['ssl.layer_weights'\]"
    ):
        build(weighted)
    with pytest.raises(ValueError, match=r"keys without a place \[.*\] and \d+ more"):
        build(
            {"name": "xlsr_conformer_tcm", "ssl": {"tiny": "wav2vec2"}, "init": str(tmp_path / "weights.safetensors")}
        )
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="never unpickles"):
        build({**config, "init": str(tmp_path / "weights.pth")})
    with pytest.raises(FileNotFoundError, match=r"model\.init"):
        build({**config, "init": str(tmp_path / "missing.safetensors")})


def test_a_run_started_from_model_init_scores_without_its_init_file(tmp_path, corpus):
    """The weights of a trained run's checkpoint are its own: ``model.init`` in its saved config
    is neither read again nor needed (it may have moved, or name a file outside the run)."""
    model = {"name": "custom", "class": "models:TinyDetector"}
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in build(model).state_dict().items()}, tmp_path / "init.safetensors")
    config = experiment(corpus, tmp_path / "runs", epochs=1, n_best=1, max_steps_per_epoch=2)
    config["model"] = {**model, "init": str(tmp_path / "init.safetensors")}
    config["eval"] = {"sets": []}
    train(config_from_dict(config))
    (tmp_path / "init.safetensors").unlink()
    detector = load_detector(tmp_path / "runs" / "tiny" / "final.safetensors", torch.device("cpu"), trust_code=True)
    trained, _ = load_weights(tmp_path / "runs" / "tiny" / "final.safetensors")
    assert all(torch.equal(detector.model.state_dict()[k], v) for k, v in trained.items())
