"""``dpda.models.build``: every architecture by name, with clear errors for bad configurations."""

from __future__ import annotations

import pytest
import torch

from dpda.models import MODEL_NAMES, build

SMALL_BACKENDS = {
    "xlsr_aasist": {},
    "xlsr_conformer_tcm": {"emb_size": 16, "heads": 2, "kernel_size": 7, "n_encoders": 1},
    "xlsr_mamba": {"emb_size": 16, "reference_final_add": False},  # the paper ending leaves blocks unused
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["aasist_l", "lfcc_lcnn"])
def test_raw_audio_models_score_a_batch(name):
    model = build({"name": name}).eval()
    with torch.no_grad():
        embedding, logits = model(0.1 * torch.randn(2, 16000))
    assert logits.shape == (2, 2) and embedding.shape[0] == 2 and torch.isfinite(logits).all()


def test_paper_defaults_of_the_raw_models():
    assert count(build({"name": "aasist"})) == 297_866
    assert count(build({"name": "aasist_l"})) == 85_306
    assert build({"name": "aasist_l", "gat_dims": [32, 32]}).pos_S.shape[-1] == 24  # override on top of AASIST-L
    assert count(build({"name": "rawnet2"})) == 17_620_562


@pytest.mark.parametrize("name", sorted(SMALL_BACKENDS))
def test_ssl_detectors_with_a_tiny_front_end(name):
    model = build({"name": name, "ssl": {"tiny": "wav2vec2", "layer": "weighted"}, **SMALL_BACKENDS[name]})
    _, logits = model(0.1 * torch.randn(2, 16000))
    assert logits.shape == (2, 2)
    logits.sum().backward()
    assert model.ssl.layer_weights.grad is not None
    assert all(p.grad is not None for p in model.backend.parameters() if p.requires_grad)


def test_frozen_front_end_gets_no_gradient():
    model = build({"name": "xlsr_mamba", "ssl": {"tiny": "hubert", "freeze": True}, "emb_size": 16})
    model(0.1 * torch.randn(1, 16000))[1].sum().backward()
    assert all(p.grad is None for p in model.ssl.parameters())


def test_configuration_errors_name_the_key():
    with pytest.raises(ValueError, match=r"valid names: .*xlsr_conformer_tcm"):
        build({"name": "xlsr_conformer"})
    with pytest.raises(ValueError, match="did you mean 'gat_dims'"):
        build({"name": "aasist", "gat_dim": [64, 32]})
    with pytest.raises(ValueError, match="ssl: unknown key 'layers'"):
        build({"name": "xlsr_aasist", "ssl": {"tiny": "wav2vec2", "layers": 3}})
    with pytest.raises(ValueError, match="ssl_dim"):
        build({"name": "xlsr_aasist", "ssl": {"tiny": "wav2vec2"}, "ssl_dim": 1024})
    with pytest.raises(ValueError, match="not tiny and source"):
        build({"name": "xlsr_aasist", "ssl": {"tiny": "wav2vec2", "source": "x"}})
    assert set(MODEL_NAMES) >= {"aasist", "aasist_l", "rawnet2", "lfcc_lcnn", *SMALL_BACKENDS}


def test_missing_front_end_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(OSError, match="convert-fairseq"):
        build({"name": "xlsr_aasist", "ssl": {"source": str(tmp_path / "no-such-folder"), "local_files_only": True}})
