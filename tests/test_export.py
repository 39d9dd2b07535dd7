"""``dpda export``: every registry detector as ONNX and TorchScript, run by ONNX Runtime and
``torch.jit.load`` against PyTorch eager on several batch sizes and lengths, and against ``dpda
score``'s raw score on a real file; a model whose graph would fix the input length is refused."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import soundfile as sf
import torch
from torch import nn

from dpda.checkpoint import save_weights
from dpda.cli import main
from dpda.config import config_to_dict, load_config
from dpda.deploy.export import ExportError, export_detector
from dpda.evaluate.evaluation import Detector, load_detector, score_files
from dpda.models import architecture, build
from dpda.models.aasist import GraphPool

RATE = 16000
#: tiny versions of every registry model (SSL detectors on a tiny random wav2vec 2.0)
SMALL = {
    "aasist": {},
    "aasist_l": {},
    "rawnet2": {"gru_hidden": 64, "fc_hidden": 64},
    "lfcc_lcnn": {},
    "xlsr_aasist": {"ssl": {"tiny": "wav2vec2"}},
    "xlsr_conformer_tcm": {"ssl": {"tiny": "wav2vec2"}, "emb_size": 16, "heads": 2, "kernel_size": 7, "n_encoders": 1},
    "xlsr_mamba": {"ssl": {"tiny": "wav2vec2"}, "emb_size": 16},
}
EXPORTED = [(name, fmt) for name in SMALL for fmt in ("onnx", "torchscript")]
CALIBRATION = {"scale": 2.0, "offset": -0.5, "threshold": 0.25, "fitted_on": "dev"}
#: batch sizes and lengths the exported graphs are run on (none is the export's example or probe)
SHAPES = [(1, 8000), (3, 8000), (1, 14001), (3, 14001), (1, 24000), (3, 24000)]


def checkpoint(folder: Path, name: str, score: str = "logit_diff") -> Path:
    """A dpda checkpoint of the tiny ``name`` (random weights) with a calibration."""
    config = load_config(None, [f"model.name={name}", f"eval.score={score}"])
    config.model.update(SMALL[name])
    torch.manual_seed(0)
    model = build(architecture(config.model))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_weights(path, model.state_dict(), {"config": config_to_dict(config), "calibration": CALIBRATION})
    return path


class ChunkPeaks(nn.Module):
    """A detector that loops over 4,000-sample chunks: as many iterations as the length gives."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peaks = torch.stack([chunk.abs().amax(dim=1) for chunk in x.split(4000, dim=1)], dim=1)
        return self.head(peaks.mean(dim=1, keepdim=True))


Run = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def load_exported(path: Path, fmt: str) -> Run:
    """(audio -> (logits, score)) of an exported file, run as a user without dpda would run it."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda audio: tuple(session.run(["logits", "score"], {"audio": audio}))
    module = torch.jit.load(str(path))

    def run(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            logits, score = module(torch.from_numpy(audio))
        return logits.numpy(), score.numpy()

    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[tuple[str, str], tuple[Detector, Path]]:
    """Each exportable model and format, exported once."""
    root = tmp_path_factory.mktemp("exports")
    found = {}
    for name, fmt in EXPORTED:
        score = "bonafide_logit" if name == "rawnet2" else "logit_diff"  # both kinds through the graph
        detector = load_detector(checkpoint(root / "checkpoints", name, score), torch.device("cpu"))
        found[name, fmt] = detector, export_detector(detector, root / fmt / f"{name}.{fmt}", fmt)
    return found


@pytest.mark.parametrize("name, fmt", EXPORTED)
def test_the_exported_graph_matches_eager_on_every_batch_size_and_length(exported, name, fmt):
    detector, path = exported[name, fmt]
    run = load_exported(path, fmt)
    generator = torch.Generator().manual_seed(5)
    for batch, length in SHAPES:
        audio = 0.1 * torch.randn(batch, length, generator=generator)
        with torch.no_grad():
            output = detector.model(audio)
        logits = (output[1] if isinstance(output, tuple) else output).numpy()
        want = logits[:, 1] - logits[:, 0] if detector.config.eval.score == "logit_diff" else logits[:, 1]
        got_logits, got_score = run(audio.numpy())
        assert got_logits.shape == (batch, 2) and got_score.shape == (batch,)
        np.testing.assert_allclose(got_logits, logits, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got_score, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name, fmt", EXPORTED)
def test_the_exported_score_is_dpda_scores_raw_score(exported, name, fmt, tmp_path):
    detector, path = exported[name, fmt]
    wav = tmp_path / "clip.wav"
    t = np.arange(int(1.3 * RATE)) / RATE
    signal = 0.3 * np.sin(2 * np.pi * 220 * t) + np.random.default_rng(1).normal(0, 0.02, len(t))
    sf.write(str(wav), signal.astype(np.float32), RATE, subtype="FLOAT")
    [record] = score_files(detector, [wav], torch.device("cpu"))
    audio, rate = sf.read(str(wav), dtype="float32")
    _, score = load_exported(path, fmt)(audio[None])
    assert rate == RATE and score.dtype == np.float64
    assert abs(float(score[0]) - record["score"]) < 1e-6  # dpda score rounds to 6 decimals


@pytest.mark.parametrize("name, fmt", EXPORTED[:2])
def test_the_facts_beside_the_file_turn_a_score_into_a_decision(exported, name, fmt):
    detector, path = exported[name, fmt]
    facts = json.loads(path.with_suffix(".json").read_text())
    assert facts["file"] == path.name and facts["model"] == name and facts["export_format"] == fmt
    assert facts["inputs"] == [{"name": "audio", "dtype": "float32", "shape": ["batch", "samples"]}]
    assert [(o["name"], o["shape"]) for o in facts["outputs"]] == [("logits", ["batch", 2]), ("score", ["batch"])]
    assert facts["sample_rate"] == RATE and facts["score"]["kind"] == detector.config.eval.score
    assert facts["calibration"] == CALIBRATION and facts["dpda_version"]
    assert facts["verified"]["max_abs_difference"] <= 1e-4
    assert (facts["opset"] is None) == (fmt == "torchscript")


def test_a_model_whose_graph_fixes_the_length_is_refused_and_nothing_is_left(tmp_path):
    config = load_config(None, ["model.name=custom", "model.class=test_export:ChunkPeaks"])
    detector = Detector(ChunkPeaks().eval(), config, None, tmp_path / "custom.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError, match=r"model 'custom' cannot be exported to TorchScript: .*fails on a.*example's"):
        export_detector(detector, out / "model.pt", "torchscript")
    assert list(out.iterdir()) == []  # no file, no facts, no temporary


@pytest.mark.parametrize("ratio", [0.4, 0.5, 0.7])
def test_an_exported_graph_pool_keeps_as_many_nodes_as_the_published_float_formula(ratio, tmp_path):
    """max(int(N * ratio), 1) in float64 keeps one node fewer than exact arithmetic for some N
    (90 and 170 at 0.7): traced and exported pools compute it from the input, in float64."""
    pool = GraphPool(ratio, 8).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(pool, (torch.randn(2, 10, 8),), check_trace=False)
        torch.onnx.export(
            pool,
            (torch.randn(2, 10, 8),),
            str(tmp_path / "pool.onnx"),
            dynamo=False,
            input_names=["h"],
            dynamic_axes={"h": {0: "batch", 1: "nodes"}},
        )
    session = onnxruntime.InferenceSession(str(tmp_path / "pool.onnx"), providers=["CPUExecutionProvider"])
    counts = [1, 2, 3, 9, 10, 29, 30, 90, 170, 233, 250]
    assert any(int(n * ratio) != n * round(ratio * 10) // 10 for n in counts) == (ratio == 0.7)
    for n in counts:
        h = torch.randn(3, n, 8)
        with torch.no_grad():
            want = pool(h)
            assert want.shape == (3, max(int(n * ratio), 1), 8)
            torch.testing.assert_close(traced(h), want, rtol=0, atol=0)
        np.testing.assert_allclose(session.run(None, {"h": h.numpy()})[0], want.numpy(), rtol=0, atol=1e-6)


def test_an_onnx_export_that_no_exporter_gets_right_is_refused_and_nothing_is_left(tmp_path):
    config = load_config(None, ["model.name=custom", "model.class=test_export:ChunkPeaks"])
    detector = Detector(ChunkPeaks().eval(), config, None, tmp_path / "custom.safetensors")
    both = r"TorchScript-based: the exported graph fails on a .*; torch.onnx, torch.export-based: .*example's"
    with pytest.raises(ExportError, match=rf"model 'custom' cannot be exported to ONNX: torch.onnx, {both}"):
        export_detector(detector, tmp_path / "peaks.onnx", "onnx")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_refused_unless_overwritten_and_formats_are_checked(tmp_path):
    detector = load_detector(checkpoint(tmp_path / "checkpoints", "lfcc_lcnn"), torch.device("cpu"))
    out = tmp_path / "lcnn.pt"
    out.write_bytes(b"someone's file")
    with pytest.raises(FileExistsError, match=r"lcnn\.pt exists"):
        export_detector(detector, out, "torchscript")
    assert out.read_bytes() == b"someone's file" and not out.with_suffix(".json").exists()
    assert export_detector(detector, out, "torchscript", overwrite=True) == out
    assert torch.jit.load(str(out)) is not None and out.with_suffix(".json").is_file()
    out.unlink()  # the facts alone are someone's too
    with pytest.raises(FileExistsError, match=r"lcnn\.json exists"):
        export_detector(detector, out, "torchscript")
    with pytest.raises(ExportError, match=r"unknown export format 'tflite'; valid: onnx, torchscript"):
        export_detector(detector, tmp_path / "lcnn.tflite", "tflite")
    with pytest.raises(ExportError, match="an opset is for ONNX"):
        export_detector(detector, tmp_path / "other.pt", "torchscript", opset=17)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "lcnn.json"]


def test_dpda_export_writes_a_trained_run_and_refuses_to_overwrite(lfcc_run, tmp_path, capsys):
    corpus, run = lfcc_run
    out = tmp_path / "exported" / "lcnn.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    detector = load_detector(run, torch.device("cpu"))
    facts = json.loads(out.with_suffix(".json").read_text())
    assert detector.calibration is not None and facts["calibration"] == detector.calibration.as_dict()
    flac = corpus / "flac" / "EVAL_0000.flac"
    [record] = score_files(detector, [flac], torch.device("cpu"))
    _, score = load_exported(out, "torchscript")(sf.read(str(flac), dtype="float32")[0][None])
    assert abs(float(score[0]) - record["score"]) < 1e-6
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 2
    assert "lcnn.pt exists" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out), "--overwrite"]) == 0


def test_dpda_export_takes_an_onnx_opset(tmp_path, capsys):
    source = checkpoint(tmp_path / "checkpoints", "aasist_l")
    out = tmp_path / "aasist_l.onnx"
    assert main(["export", str(source), "--format", "onnx", "--opset", "17", "--out", str(out)]) == 0
    facts = json.loads(out.with_suffix(".json").read_text())
    assert facts["opset"] == 17 and facts["exporter"] == "torch.onnx, TorchScript-based"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(["score"], {"audio": np.zeros((2, 9000), np.float32)})[0].shape == (2,)
    capsys.readouterr()
    scripted = ["export", str(source), "--format", "torchscript", "--opset", "17", "--out", str(tmp_path / "a.pt")]
    assert main(scripted) == 2
    assert "an opset is for ONNX" in capsys.readouterr().err
