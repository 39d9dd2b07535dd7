"""The paper's released detectors (paper-code state dicts with fairseq SSL names) load into dpda."""

from __future__ import annotations

import pytest
import torch
from test_fairseq_convert import XLSR_LIKE, fairseq_names
from transformers import Wav2Vec2Model

from dpda.models.detector import SSLDetector
from dpda.models.fairseq_convert import STANDARD_CONV
from dpda.models.paper_checkpoint import load_paper_checkpoint, paper_model
from dpda.models.registry import SSL_BACKENDS, _load
from dpda.models.ssl import SSLFrontEnd, tiny_config

HEADS = {"encoder_attention_heads": 2}  # the tiny width is not a released one, so say it


def released_like(name: str) -> tuple[SSLDetector, dict[str, torch.Tensor]]:
    """A random dpda detector and the same weights under the paper code's names: the encoder
    under ``ssl_model.model.`` (fairseq names), the back-end at the top level, all behind the
    ``module.`` prefix that DataParallel leaves."""
    torch.manual_seed(0)
    config = tiny_config("wav2vec2", **XLSR_LIKE, conv_dim=[16] * len(STANDARD_CONV),
                         conv_kernel=[k for _, k, _ in STANDARD_CONV], conv_stride=[s for _, _, s in STANDARD_CONV])
    frontend = SSLFrontEnd(config)
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
