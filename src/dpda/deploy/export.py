"""A trained detector as one ONNX or TorchScript file, for runtimes without dpda (or without Python).

    dpda export runs/lcnn --format onnx --out lcnn.onnx  # or --format torchscript --out lcnn.pt
    session = onnxruntime.InferenceSession("lcnn.onnx")  # or module = torch.jit.load("lcnn.pt")
    logits, score = session.run(None, {"audio": waves})  # float32 (batch, samples) at lcnn.json's sample_rate
    calibration = json.load(open("lcnn.json"))["calibration"]  # P(bona fide) = sigmoid(scale * score + offset)
    spoof = score < calibration["threshold"]  # the decision at the dev EER threshold, as dpda score makes it

The graph takes a waveform batch with dynamic batch and length axes and returns the two logits
(index 1 = bona fide) and the raw score of ``eval.score`` (float64, as ``dpda score`` computes it).
Every export is run, before it is renamed into place, on two input shapes other than the example
it was made from and compared with the PyTorch model: an exporter fixes at the example's length
whatever the model's forward computes from the length in Python, and such a file would score
other lengths wrongly without an error. A model whose graph does not reproduce it is an
:class:`ExportError` naming the model and the reason. Needs ``pip install 'dpda[export]'``.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dpda import __version__
from dpda.atomic import atomic_path, write_text_atomic
from dpda.dualpath.loss import logits_of
from dpda.errors import DpdaError
from dpda.evaluate.evaluation import Detector
from dpda.evaluate.scoring import scores_from_logits

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("onnx", "torchscript")
EXPORT_FORMAT = "dpda-export"  # the sidecar JSON's "format"
INPUT = "audio"
OUTPUTS = ("logits", "score")
#: what an ONNX export imports: the writer, torch's torch.export-based exporter, the checking runtime
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
#: an exported graph reproduces the model where |exported - eager| <= ATOL + RTOL * |eager|: room for
#: a runtime's fused float32 kernels on a big model; a length fixed by an export is off by 1e-3 to 1e-2
ATOL, RTOL = 1e-4, 1e-3
#: why an exported graph fails or differs on a shape the example did not have
_FIXED = (
    " (the model's forward turns the input's size into Python numbers, such as a loop count or a number of "
    "graph nodes kept, which the export fixed at the example's (2, sample rate))"
)


class ExportError(DpdaError, ValueError):
    """A detector that cannot be exported in a format, or an unknown format."""


class ScoringGraph(nn.Module):
    """What is exported: waveforms -> (logits, score), whatever the model's forward returns."""

    def __init__(self, model: nn.Module, score_kind: str) -> None:
        super().__init__()
        self.model = model
        self.score_kind = score_kind

    def forward(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        logits = logits_of(self.model(audio)).float()
        return logits, scores_from_logits(logits, self.score_kind)


def export_detector(
    detector: Detector,
    out: str | Path,
    fmt: ExportFormat,
    *,
    opset: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``detector`` as ``out`` (ONNX, or TorchScript from ``torch.jit.trace``) and the facts a
    user needs to read its score beside it (``out.with_suffix(".json")``); ``opset`` is the ONNX
    opset (the exporter's default when ``None``). Returns ``out``."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise ExportError(f"an opset is for ONNX exports, not {fmt}")
    out = Path(out)
    facts_path = out.with_suffix(".json")
    if facts_path == out:
        raise ExportError(f"{out}: the export's facts go to {facts_path.name}; give the file another suffix")
    if not overwrite:
        for path in (out, facts_path):
            if path.exists():
                raise FileExistsError(f"{path} exists; remove it, pick another name or overwrite it (--overwrite)")
    config = detector.config
    name = str(config.model.get("name"))
    # a CPU copy of a model elsewhere, so that the graph names no accelerator and the detector stays put
    model = detector.model if _on_cpu(detector.model) else copy.deepcopy(detector.model).cpu()
    graph = ScoringGraph(model, config.eval.score).eval()  # the detector's model is in eval mode already
    rate = config.data.sample_rate
    example = 0.1 * torch.randn(2, rate, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary:
        if fmt == "onnx":
            exporter, difference = _export_onnx(graph, example, temporary, opset, name)
            opset = _opset_of(temporary)
        else:
            exporter, difference = _export_torchscript(graph, example, temporary, name)
    facts = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "file": out.name,
        "export_format": fmt,
        "exporter": exporter,
        "opset": opset,
        "model": name,
        "inputs": [{"name": INPUT, "dtype": "float32", "shape": ["batch", "samples"]}],
        "outputs": [
            {"name": OUTPUTS[0], "dtype": "float32", "shape": ["batch", 2], "classes": ["spoof", "bonafide"]},
            {"name": OUTPUTS[1], "dtype": "float64", "shape": ["batch"]},
        ],
        "sample_rate": rate,
        "score": {
            "kind": config.eval.score,
            "higher_is": "bona fide",
            # dpda score reads only this much of each file (None: all of it)
            "max_seconds": config.eval.max_seconds,
        },
        "calibration": detector.calibration.as_dict() if detector.calibration is not None else None,
        "decision": "P(bona fide) = 1 / (1 + exp(-(scale * score + offset))); spoof where score < threshold",
        "verified": {"shapes": [list(x.shape) for x in _probes(rate)], "max_abs_difference": difference},
        "dpda_version": __version__,
    }
    write_text_atomic(facts_path, json.dumps(facts, indent=2) + "\n")
    return out


def _on_cpu(model: nn.Module) -> bool:
    """Whether every weight and buffer of ``model`` is on the CPU."""
    return all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])


def _probes(rate: int) -> list[Tensor]:
    """Inputs of batch sizes and lengths that the example (2, rate) does not have."""
    generator = torch.Generator().manual_seed(1)
    return [
        0.1 * torch.randn(batch, length, generator=generator)
        for batch, length in ((1, rate * 3 // 4 + 1), (3, rate * 5 // 4 + 3))
    ]


def _export_onnx(graph: ScoringGraph, example: Tensor, path: Path, opset: int | None, name: str) -> tuple[str, float]:
    """The ONNX file of the first exporter whose graph reproduces the model.

    The TorchScript-based exporter (``dynamo=False``, deprecated since torch 2.9) is tried first:
    it takes about a second where the torch.export-based one takes 10-20 s for these models on a
    CPU, and it keeps RawNet2's GRU dynamic in length, which torch.export fixes at the example's
    length. The torch.export-based one (onnxscript) converts what the first cannot: LFCC-LCNN's
    complex STFT. Neither converts every model, so both are tried and each result is checked."""
    missing = [module for module in ONNX_MODULES if importlib.util.find_spec(module) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install 'dpda[export]'")

    def legacy() -> None:
        _register_rms_norm()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # what _verified checks
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                dynamo=False,
                input_names=[INPUT],
                output_names=list(OUTPUTS),
                dynamic_axes={INPUT: {0: "batch", 1: "samples"}, OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}},
                opset_version=opset,
            )

    def torch_export() -> None:
        shapes = {INPUT: {0: torch.export.Dim("batch"), 1: torch.export.Dim("samples")}}
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_shapes=shapes,
            opset_version=opset,
            external_data=False,  # one file (so at most 2 GB of weights)
            verbose=False,
        )

    failures, mismatched = [], False
    for exporter, export in (
        ("torch.onnx, TorchScript-based", legacy),
        ("torch.onnx, torch.export-based", torch_export),
    ):
        try:
            export()
            return exporter, _verified(graph, _onnx_runner(path), example)
        except Exception as error:  # the exporters raise many kinds; each is reported
            failures.append(f"{exporter}: {_reason(error)}")
            mismatched |= isinstance(error, ExportError)
    explained = _FIXED if mismatched else ""
    raise ExportError(f"model {name!r} cannot be exported to ONNX: " + "; ".join(failures) + explained)


@functools.cache
def _register_rms_norm() -> None:
    """Teach the TorchScript-based exporter ``aten::rms_norm`` (XLSR-Mamba's RMSNorm), which it
    lacks: ``x / sqrt(mean(x^2 over the normalised dims) + eps) * weight``, eps defaulting to the
    input dtype's machine epsilon as in PyTorch."""
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "is", "v", "f")
    def rms_norm(g: Any, x: Any, normalized_shape: list[int], weight: Any, eps: float | None) -> Any:
        axes = g.op("Constant", value_t=torch.arange(-len(normalized_shape), 0))
        mean_square = g.op("ReduceMean", g.op("Mul", x, x), axes, keepdims_i=1)
        epsilon = torch.finfo(torch.float32).eps if eps is None else eps
        root = g.op("Sqrt", g.op("Add", mean_square, g.op("Constant", value_t=torch.tensor(epsilon))))
        normed = g.op("Div", x, root)
        return normed if symbolic_helper._is_none(weight) else g.op("Mul", normed, weight)

    torch.onnx.register_custom_op_symbolic("aten::rms_norm", rms_norm, 18)


def _onnx_runner(path: Path) -> Callable[[Tensor], Sequence[np.ndarray]]:
    """The ONNX file as ONNX Runtime on the CPU runs it."""
    import onnxruntime  # type: ignore[import-untyped]  # it ships no types

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(list(OUTPUTS), {INPUT: x.numpy()})


def _export_torchscript(graph: ScoringGraph, example: Tensor, path: Path, name: str) -> tuple[str, float]:
    """``torch.jit.trace`` of the graph: ``torch.jit.script`` compiles neither transformers' SSL
    front-ends nor code with postponed annotations, and tracing needs only tensors."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # what the tracer fixes (Python numbers of sizes) is what _verified checks
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "`torch.jit.trace", DeprecationWarning)
            traced = torch.jit.trace(graph, (example,), check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
        return "torch.jit.trace", _verified(graph, lambda x: [t.numpy() for t in loaded(x)], example)
    except Exception as error:  # tracing and running raise many kinds
        explained = _FIXED if isinstance(error, ExportError) else ""
        raise ExportError(f"model {name!r} cannot be exported to TorchScript: {_reason(error)}{explained}") from error


def _verified(graph: ScoringGraph, run: Callable[[Tensor], Sequence[np.ndarray]], example: Tensor) -> float:
    """The largest difference between the exported graph (``run``) and the model on the probes of
    ``example``'s length; a graph that fails on one, or differs beyond ``ATOL`` and ``RTOL``, is an
    ``ExportError``."""
    largest = 0.0
    for x in _probes(example.shape[1]):
        shape = tuple(x.shape)
        with torch.no_grad():
            expected = [t.numpy() for t in graph(x)]
            try:
                found = run(x)
            except Exception as error:  # the runtime's own error kinds
                raise ExportError(f"the exported graph fails on a {shape} input ({_reason(error)})") from error
        for output, want, got in zip(OUTPUTS, expected, found):
            if got.shape != want.shape:
                raise ExportError(f"the exported graph's {output} on a {shape} input has the shape {got.shape}")
            difference = float(np.abs(got - want).max())
            if not np.allclose(got, want, rtol=RTOL, atol=ATOL):
                raise ExportError(
                    f"the exported graph's {output} differ from the model's by {difference:.3g} on a {shape} input"
                )
            largest = max(largest, difference)
    return largest


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause: exporters wrap the error that matters in pages of advice."""
    while not isinstance(error, ExportError) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, ExportError):
        return str(error)
    lines = str(error).strip().splitlines() or [""]
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1][:300]  # the error itself, after TorchScript's traceback
    return f"{type(error).__name__}: {' '.join(line.strip() for line in lines[:2])[:300]}"


def _opset_of(path: Path) -> int | None:
    """The default-domain opset the ONNX file was written with."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
