"""Checkpoints of ``dpda train``: model weights as safetensors with JSON metadata, and the training
state (optimizer, scheduler, RNG states, counters) for an exact resume, all without pickle.

A user's file is never unpickled, so loading a checkpoint cannot run code. Every write is atomic:
a temporary file (or folder) beside the target is written, fsynced and renamed onto it with
``os.replace``, so after a crash the target holds the old complete copy or the new complete one,
never a part. Durability assumes a POSIX file system (folders are fsynced too).

Weights: ``name.safetensors`` holds the tensors and, in its header under ``"dpda"``, the JSON
metadata (format, version, the caller's meta); ``name.json`` is a readable copy written after the
weights, so a ``.json`` present means its weights are complete. The header's copy is the one read,
so a lone ``.safetensors`` loads on its own.

Training state: a folder with ``state.safetensors`` and ``state.json``; ``flatten`` splits nested
dicts, lists and tuples into tensors (to safetensors) and a JSON skeleton, and ``unflatten``
rebuilds them exactly, non-string dict keys, numpy arrays and big ints included.

No file gets a NaN or an infinity: a weight or state tensor that holds one is refused by name
(``NonFiniteError``, nothing is written and the previous file stays), as weights that are not
finite are a diverged training, never worth keeping. JSON is written strictly (no ``NaN`` or
``Infinity`` tokens, which other readers refuse); a non-finite float of a training state (a best
metric of ``inf`` before the first epoch) is stored as a marker and read back exactly.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from dpda.atomic import atomic_path, fsync_path, temporary_sibling
from dpda.errors import DpdaError

__all__ = [
    "BestCheckpoints",
    "CheckpointError",
    "NonFiniteError",
    "average_weights",
    "capture_rng",
    "check_architecture",
    "describe_non_finite",
    "flatten",
    "load_state",
    "load_weights",
    "restore_rng",
    "save_state",
    "save_weights",
    "unflatten",
]

WEIGHTS_FORMAT = "dpda-checkpoint"
STATE_FORMAT = "dpda-training-state"
VERSION = 1
STATE_FILE = "state.safetensors"
_SHOWN = 5  # keys an error message lists per kind of difference
_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
_MARKERS = frozenset({"__tensor__", "__ndarray__", "__tuple__", "__items__", "__int__", "__float__"})
_INT64 = 2**63  # ints beyond int64 go to JSON as hex: other JSON readers and Python's str(int) limit


class CheckpointError(DpdaError, ValueError):
    """A checkpoint that cannot be used: missing, corrupt, foreign, or of another architecture."""


class NonFiniteError(CheckpointError):
    """Weights, a training state or metadata holding NaN or infinite values, refused at the write."""


def _named_leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every value inside nested mappings, lists and tuples, with its dotted path."""
    if isinstance(obj, Mapping):
        items: Iterable[tuple[Any, Any]] = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        yield prefix, obj
        return
    for key, value in items:
        yield from _named_leaves(value, f"{prefix}.{key}" if prefix else str(key))


def describe_non_finite(leaves: Iterable[tuple[str, Any]]) -> str | None:
    """The floating-point tensors and floats among ``leaves`` that hold NaN or infinity, a few
    named with their counts of such values; None when there are none."""
    bad = []
    for name, value in leaves:
        if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
            count = value.numel() - int(torch.isfinite(value).sum())
            if count:
                bad.append(f"{name} ({count} of {value.numel()} values)")
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{name} ({value})")
    if not bad:
        return None
    more = f", ... ({len(bad)} in all)" if len(bad) > _SHOWN else ""
    return f"NaN or infinity in {', '.join(bad[:_SHOWN])}{more}"


def _refuse_non_finite(target: Path, leaves: Iterable[tuple[str, Any]]) -> None:
    """Raise ``NonFiniteError`` before ``target`` is written if any of ``leaves`` is not finite."""
    problem = describe_non_finite(leaves)
    if problem:
        raise NonFiniteError(
            f"{target}: not written, {problem}; the file written before is kept. Non-finite weights mean "
            "a diverged training: lower optim.lr or set dualpath.max_grad_norm and train again"
        )


# -- files ------------------------------------------------------------------------------------------
def _prepare(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, one storage each: safetensors refuses tensors sharing memory (tied weights,
    views of one buffer), so a tensor whose storage was already seen is cloned."""
    prepared, seen = {}, set()
    for key, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{key}: expected a tensor, got {type(value).__name__}")
        value = value.detach().to("cpu").contiguous()
        pointer = value.untyped_storage().data_ptr()
        if pointer in seen:
            value = value.clone()
        seen.add(pointer)
        prepared[key] = value
    return prepared


def _write(path: Path, tensors: Mapping[str, Tensor], document: Mapping[str, Any]) -> None:
    """The tensors with ``document`` in their header, then ``document`` as ``.json``; both atomic.
    An older ``.json`` goes first, so a ``.json`` never describes other weights than its own."""
    text = json.dumps(document, indent=1, allow_nan=False)
    prepared = _prepare(tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_room(path, prepared, text)
    path.with_suffix(".json").unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        save_file(prepared, tmp, metadata={"dpda": text})
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def _check_room(path: Path, tensors: Mapping[str, Tensor], text: str) -> None:
    """Refuse a write the disk cannot hold before it starts (a real-size checkpoint or state is
    GBs; the old file stays until the new one is complete, so the new one's whole size must be
    free): an ``OSError`` ENOSPC naming ``path``, the bytes needed and the bytes free."""
    # the data, the header (the metadata, a line per tensor) and the readable .json copy
    needed = sum(t.nbytes for t in tensors.values()) + 2 * len(text.encode()) + 200 * len(tensors)
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: needs {needed:,} bytes, {free:,} free", str(path))


def _pickled(path: Path) -> bool:
    """Whether ``path`` looks like ``torch.save`` output: a zip archive, a pickle of protocol 2 or
    later (the first bytes), or a pickle's usual suffix."""
    with path.open("rb") as file:
        head = file.read(4)
    return (
        path.suffix.lower() in _PICKLE_SUFFIXES
        or head.startswith(b"PK\x03\x04")
        or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5)
    )


def _document(path: Path, header: Mapping[str, str] | None, expected: str) -> dict[str, Any]:
    """The parsed ``"dpda"`` header of ``path``, checked to be of format ``expected``."""
    text = (header or {}).get("dpda")
    if text is None:
        raise CheckpointError(
            f"{path}: not written by dpda (no 'dpda' metadata); to load foreign weights use "
            "safetensors.torch.load_file and model.load_state_dict"
        )
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: corrupt 'dpda' metadata ({error})") from error
    found = document.get("format") if isinstance(document, dict) else None
    if found != expected:
        raise CheckpointError(f"{path}: expected a {expected!r} file, found format {found!r}")
    if document.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: {expected} version {document.get('version')!r}; this dpda reads version {VERSION}"
        )
    return document


def _read(path: Path, expected: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and header document of a dpda file of format ``expected``."""
    with _open(path, expected) as (file, document):
        return {key: file.get_tensor(key) for key in file.keys()}, document  # noqa: SIM118 (safe_open is no dict)


@contextmanager
def _open(path: Path, expected: str) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The open ``safe_open`` handle of a dpda file of format ``expected`` (tensors are read
    when asked for, one at a time) and its header document; anything else is a CheckpointError."""
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise CheckpointError(f"{path}: {found}; expected a dpda .safetensors file")
    try:
        with safe_open(path, framework="pt") as file:
            yield file, _document(path, file.metadata(), expected)
    except SafetensorError as error:
        if _pickled(path):
            raise CheckpointError(
                f"{path}: a pickle (torch.save) file; dpda never unpickles checkpoints, as loading one can "
                "run arbitrary code. Convert it once with dpda.models' loaders: "
                "dpda.models.fairseq_convert.load_checkpoint reads tensors and plain containers only (the "
                "published AASIST.pth then loads into dpda's AASIST as is), "
                "`dpda convert-paper SRC.pth DST.safetensors --model NAME` the paper's detectors (no further "
                "step), `dpda convert-fairseq` fairseq SSL models; then write the model's state_dict with "
                "dpda.checkpoint.save_weights"
            ) from None
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error


# -- weights ----------------------------------------------------------------------------------------
def save_weights(path: Path, state_dict: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Write ``path`` (.safetensors) and its ``.json``; ``meta`` must be JSON (tuples load as lists)."""
    reserved = sorted({"format", "version"} & set(meta))
    if reserved:
        raise ValueError(f"meta: {reserved} are reserved for the file format")
    _refuse_non_finite(Path(path), [*state_dict.items(), *_named_leaves(meta, "meta")])
    _write(Path(path), state_dict, {"format": WEIGHTS_FORMAT, "version": VERSION, **meta})


def load_weights(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors (on CPU) and the meta that ``save_weights`` wrote to ``path``."""
    tensors, document = _read(Path(path), WEIGHTS_FORMAT)
    return tensors, {k: v for k, v in document.items() if k not in ("format", "version")}


def _mismatch(expected: Mapping[str, str], found: Mapping[str, str]) -> str | None:
    """What differs between two ``{key: layout}`` maps (a few keys of each kind, with counts)."""
    kinds = {
        "missing keys": [k for k in expected if k not in found],
        "unexpected keys": [k for k in found if k not in expected],
        "mismatches": [
            f"{k} (expected {v}, found {found[k]})" for k, v in expected.items() if k in found and found[k] != v
        ],
    }
    parts = [
        f"{len(items)} {kind}: {', '.join(items[:_SHOWN])}{', ...' if len(items) > _SHOWN else ''}"
        for kind, items in kinds.items()
        if items
    ]
    return "; ".join(parts) or None


def _layouts(tensors: Mapping[str, Tensor], dtype: bool) -> dict[str, str]:
    return {k: f"{str(v.dtype).removeprefix('torch.') if dtype else ''}{list(v.shape)}" for k, v in tensors.items()}


def check_architecture(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    path: Path,
    meta: Mapping[str, Any] | None = None,
    expected_model: Mapping[str, Any] | None = None,
) -> None:
    """Refuse a state dict whose keys or shapes differ from ``model``'s, naming ``path`` and the
    differences (``load_state_dict``'s error names neither the file nor the likely cause). When the
    checkpoint's ``meta["model"]`` config and ``expected_model`` differ, that is said first."""
    problem = _mismatch(_layouts(model.state_dict(), dtype=False), _layouts(state_dict, dtype=False))
    if problem is None:
        return
    saved = (meta or {}).get("model")
    if saved and expected_model and dict(saved) != dict(expected_model):
        problem = (
            f"the checkpoint holds model {saved.get('name')!r} ({dict(saved)}), the configuration asks "
            f"for {expected_model.get('name')!r} ({dict(expected_model)}); {problem}"
        )
    raise CheckpointError(f"{path}: does not fit the model (checkpoint of another architecture?): {problem}")


# -- training state ---------------------------------------------------------------------------------
def flatten(obj: Any) -> tuple[dict[str, Tensor], Any]:
    """``obj`` as tensors plus a JSON skeleton naming them; ``unflatten`` inverts it exactly.

    Takes nested dict, list and tuple of tensors, numpy arrays, int, float (inf and NaN too, as
    ``{"__float__": "inf"}``: strict JSON has neither), bool, str and None. Dicts with keys that
    are not all strings, and dicts that use a marker key, become ``{"__items__": [[key, value],
    ...]}`` so that every key keeps its type.
    """
    tensors: dict[str, Tensor] = {}

    def store(tensor: Tensor) -> str:
        key = str(len(tensors))
        tensors[key] = tensor
        return key

    def walk(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return {"__float__": repr(value)}
        if value is None or isinstance(value, (bool, str, float)):
            return value
        if isinstance(value, int):
            return value if -_INT64 <= value < _INT64 else {"__int__": hex(value)}
        if isinstance(value, Tensor):
            return {"__tensor__": store(value)}
        if isinstance(value, np.ndarray) and not value.dtype.hasobject:
            raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8).copy()
            return {"__ndarray__": store(torch.from_numpy(raw)), "dtype": value.dtype.str, "shape": list(value.shape)}
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v) for v in value]}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and not _MARKERS & value.keys():
                return {k: walk(v) for k, v in value.items()}
            return {"__items__": [[walk(k), walk(v)] for k, v in value.items()]}
        raise TypeError(
            f"cannot store a {type(value).__name__} without pickle (tensors, numpy arrays, dict, "
            "list, tuple, int, float, bool, str and None can be stored)"
        )

    return tensors, walk(obj)


def unflatten(skeleton: Any, tensors: Mapping[str, Tensor]) -> Any:
    """The object that ``flatten`` split into ``skeleton`` and ``tensors``."""

    def build(node: Any) -> Any:
        if isinstance(node, list):
            return [build(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__ndarray__" in node:
            raw = tensors[node["__ndarray__"]].numpy()
            return raw.view(np.dtype(node["dtype"])).reshape(node["shape"]).copy()
        if "__tuple__" in node:
            return tuple(build(v) for v in node["__tuple__"])
        if "__items__" in node:
            return {build(k): build(v) for k, v in node["__items__"]}
        if "__int__" in node:
            return int(node["__int__"], 16)
        if "__float__" in node:
            return float(node["__float__"])
        return {k: build(v) for k, v in node.items()}

    return build(skeleton)


def capture_rng() -> dict[str, Any]:
    """The global generators a training step draws from: Python's, numpy's legacy one, torch's CPU
    generator and, when CUDA is available, every GPU's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the generators ``capture_rng`` captured. GPU states are skipped where CUDA is absent: a
    GPU run continued on a CPU cannot replay its GPU streams anyway."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(folder: Path, state: Mapping[str, Any]) -> None:
    """Write ``folder`` (``state.safetensors`` + ``state.json``) as a whole: it is built in
    a temporary sibling (``dpda.atomic``'s, so that a killed save's is an orphan to
    ``remove_orphans``), the current folder is renamed to ``.{name}.old-<pid>``, the new one
    renamed into place and the old one deleted. A crash between the two renames leaves only the
    old copy, which ``load_state`` does not load but names in its error (a run folder's lock
    holder puts it back: ``dpda.train.folder``)."""
    folder = Path(folder)
    _refuse_non_finite(folder, (leaf for leaf in _named_leaves(state) if isinstance(leaf[1], Tensor)))
    tensors, skeleton = flatten(dict(state))
    tmp, old = temporary_sibling(folder), folder.with_name(f".{folder.name}.old-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        _write(tmp / STATE_FILE, tensors, {"format": STATE_FORMAT, "version": VERSION, "skeleton": skeleton})
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)  # left by a crash after the second rename: stale
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except BaseException:
            if old.exists() and not folder.exists():
                os.replace(old, folder)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    fsync_path(folder.parent)


def load_state(folder: Path) -> dict[str, Any]:
    """The state that ``save_state`` wrote to ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        left = sorted(folder.parent.glob(f".{folder.name}.old-*"))
        hint = f"; an interrupted save left {left[-1]}: rename it to {folder.name} to resume" if left else ""
        raise CheckpointError(f"{folder}: no training state (expected a folder with {STATE_FILE}){hint}")
    path = folder / STATE_FILE
    tensors, document = _read(path, STATE_FORMAT)
    try:
        return unflatten(document["skeleton"], tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: malformed training state ({error!r})") from error


# -- the n best checkpoints -------------------------------------------------------------------------
def average_weights(paths: Sequence[Path]) -> dict[str, Tensor]:
    """The element-wise mean of the checkpoints' floating-point tensors, summed in float64 and cast
    back to each tensor's dtype. Other tensors (BatchNorm's ``num_batches_tracked``) come from the
    first path, by convention the best checkpoint. The layouts are compared from the headers
    first; then the files are read a few tensors at a time (``_CHUNK_BYTES``), each pass closing
    them, so that memory holds the average and one chunk of each file, whatever the number of
    files: the pages a memory map touches count as resident until it is closed.
    A tensor with a NaN or infinity is refused by file and key (``NonFiniteError``); the mean of
    finite tensors is finite, so the average always is."""
    if not paths:
        raise ValueError("average_weights: no checkpoints given")
    paths = [Path(path) for path in paths]
    headers = []
    for path in paths:
        with _open(path, WEIGHTS_FORMAT) as (file, _):
            headers.append(_header(file))
    layouts = [{key: f"{dtype}{shape}" for key, (dtype, shape) in header.items()} for header in headers]
    for path, layout in zip(paths[1:], layouts[1:]):
        problem = _mismatch(layouts[0], layout)
        if problem:
            raise CheckpointError(f"{path}: does not match {paths[0]}, so they cannot be averaged: {problem}")
    average = {}
    for chunk in _chunks(headers[0], _CHUNK_BYTES):
        with ExitStack() as stack:
            files = [stack.enter_context(_open(path, WEIGHTS_FORMAT))[0] for path in paths]
            for key in chunk:
                first = _finite_tensor(files[0], key, paths[0])
                if not first.is_floating_point():
                    average[key] = first
                    continue
                total = first.to(torch.float64)
                for path, file in zip(paths[1:], files[1:]):
                    total += _finite_tensor(file, key, path)  # summed in float64, no float64 copy
                average[key] = (total / len(paths)).to(first.dtype)
    return average


#: Bytes of each file read in one pass of ``average_weights``.
_CHUNK_BYTES = 64 * 2**20
#: safetensors' dtype names -> torch's, so that a layout reads as ``_layouts`` writes it.
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
           "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}  # fmt: skip


def _header(file: Any) -> dict[str, tuple[str, list[int]]]:
    """``{key: (torch dtype name, shape)}`` of an open safetensors file, from its header alone."""
    header = {}
    for key in file.keys():  # noqa: SIM118 (safe_open is no dict)
        view = file.get_slice(key)
        header[key] = _DTYPES.get(view.get_dtype(), view.get_dtype()), list(view.get_shape())
    return header


def _chunks(header: Mapping[str, tuple[str, list[int]]], budget: int) -> Iterator[list[str]]:
    """The keys in file order, in groups of at most ``budget`` bytes (a larger tensor alone)."""
    chunk: list[str] = []
    size = 0
    for key, (dtype, shape) in header.items():
        nbytes = math.prod(shape) * getattr(torch, dtype).itemsize
        if chunk and size + nbytes > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(key)
        size += nbytes
    if chunk:
        yield chunk


def _finite_tensor(file: Any, key: str, path: Path) -> Tensor:
    tensor = file.get_tensor(key)
    problem = describe_non_finite([(key, tensor)])
    if problem:
        raise NonFiniteError(f"{path}: cannot be averaged, {problem}")
    return tensor


def _rank(entry: tuple[int, float]) -> tuple[float, int]:
    """Order of (epoch, metric) entries: lower metric first, then the earlier epoch."""
    return entry[1], entry[0]


class BestCheckpoints:
    """The ``n`` best checkpoints of a run by a metric (lower is better; on a tie the earlier epoch
    wins), as ``folder/epoch-NNN.safetensors``. ``folder`` is the class's own: on resume, files
    there that look like epoch checkpoints but are not kept are deleted."""

    def __init__(self, folder: Path, n: int) -> None:
        if n < 1:
            raise ValueError(f"n: keep at least one checkpoint, got {n}")
        self.folder, self.n = Path(folder), n
        self._entries: list[tuple[int, float]] = []

    def _path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:03d}.safetensors"

    def _keep(self, entries: list[tuple[int, float]]) -> None:
        """Keep the best ``n`` of ``entries``; delete the others' files (``.json`` first, so that a
        half-deleted checkpoint never looks complete)."""
        ranked = sorted(entries, key=_rank)
        self._entries = ranked[: self.n]
        for epoch, _ in ranked[self.n :]:
            self._path(epoch).with_suffix(".json").unlink(missing_ok=True)
            self._path(epoch).unlink(missing_ok=True)

    @property
    def entries(self) -> list[tuple[int, float]]:
        """(epoch, metric) of the kept checkpoints, best first."""
        return list(self._entries)

    @property
    def paths(self) -> list[Path]:
        """The kept checkpoints' weights files, best first."""
        return [self._path(epoch) for epoch, _ in self._entries]

    def consider(self, epoch: int, metric: float, state_dict: Mapping[str, Tensor], meta: Mapping[str, Any]) -> bool:
        """Write epoch ``epoch``'s weights if they rank among the ``n`` best (never for a NaN
        metric), evicting the worst kept one; whether they were written."""
        if any(kept == epoch for kept, _ in self._entries):
            raise ValueError(f"epoch {epoch} was already considered")
        if math.isnan(metric):
            return False
        if len(self._entries) >= self.n and _rank((epoch, metric)) > _rank(self._entries[-1]):
            return False
        save_weights(self._path(epoch), state_dict, meta)
        self._keep([*self._entries, (epoch, metric)])
        return True

    def average(self, out_path: Path, meta: Mapping[str, Any]) -> Path:
        """Write the exact average of the kept checkpoints to ``out_path`` (see ``average_weights``)."""
        if not self._entries:
            raise ValueError(f"{self.folder}: no checkpoint kept to average (every metric was NaN?)")
        save_weights(Path(out_path), average_weights(self.paths), meta)
        return Path(out_path)

    def state_dict(self) -> dict[str, Any]:
        return {"entries": [[epoch, metric] for epoch, metric in self._entries]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict()``'s output. Files of epochs not listed (written by a run
        killed before its state was saved) are deleted; listed epochs whose file is gone (evicted
        just before such a kill, and evicted again when the resumed run replays that epoch) drop."""
        listed = [(int(epoch), float(metric)) for epoch, metric in state["entries"]]
        self._keep([entry for entry in listed if self._path(entry[0]).is_file()])
        kept = {self._path(epoch).stem for epoch, _ in self._entries}
        for file in [*self.folder.glob("epoch-*"), *self.folder.glob(".epoch-*.tmp")]:
            if file.name.startswith(".") or file.stem not in kept:
                file.unlink()
