"""Checkpoints without pickle: weights and training state round trips, atomic writes, error
messages naming the file, the exact average of the n best checkpoints, and bit-exact resume."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import dpda.checkpoint as ckpt
from dpda.checkpoint import (
    BestCheckpoints,
    CheckpointError,
    average_weights,
    capture_rng,
    check_architecture,
    flatten,
    load_state,
    load_weights,
    restore_rng,
    save_state,
    save_weights,
    unflatten,
)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes, so that NaNs, -0.0 and bfloat16 compare exactly."""
    return tensor.detach().reshape(-1).contiguous().view(torch.uint8)


def assert_same(a, b, where="obj"):
    """Equal values of exactly equal types, recursively (tensors and arrays bit for bit)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(bits(a), bits(b)), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for (ka, va), kb in zip(a.items(), b, strict=True):
            assert_same(ka, kb, f"{where} key")
            assert_same(va, b[kb], f"{where}[{ka!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (va, vb) in enumerate(zip(a, b, strict=True)):
            assert_same(va, vb, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where
        if isinstance(a, float):
            assert np.copysign(1, a) == np.copysign(1, b), where


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- weights ------------------------------------------------------------------------------------
def test_weights_round_trip_with_shared_and_odd_tensors(tmp_path):
    big = torch.arange(12.0)
    weight = torch.randn(3, 4)
    tensors = {
        "weight": weight,
        "tied": weight,
        "first": big[:6],
        "second": big[6:],  # shared storage
        "transposed": torch.randn(4, 3).t(),
        "bf16": torch.randn(5).bfloat16(),
        "half": torch.randn(2).half(),
        "count": torch.tensor(7),
        "mask": torch.tensor([True, False]),
        "bytes": torch.arange(256, dtype=torch.uint8),
        "empty": torch.zeros(0, 3),
        "grad": torch.randn(2, requires_grad=True),
    }
    meta = {"model": {"name": "aasist", "width": [1, 2]}, "epoch": 3, "metric": 0.25}
    path = tmp_path / "w.safetensors"
    save_weights(path, tensors, meta)
    loaded, loaded_meta = load_weights(path)
    assert_same({k: tensors[k].detach() for k in sorted(tensors)}, dict(sorted(loaded.items())))
    assert loaded_meta == meta
    document = json.loads(path.with_suffix(".json").read_text())
    assert document == {"format": "dpda-checkpoint", "version": 1, **meta}
    assert siblings(tmp_path) == ["w.json", "w.safetensors"]  # no temporary files left
    path.with_suffix(".json").unlink()  # a lone .safetensors is still a dpda checkpoint
    assert load_weights(path)[1] == meta


def test_weights_of_a_model_with_tied_parameters_load_back(tmp_path):
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5))
    model[1].weight = model[0].weight
    save_weights(tmp_path / "m.safetensors", model.state_dict(), {})
    fresh = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5))
    fresh.load_state_dict(load_weights(tmp_path / "m.safetensors")[0])
    assert_same(dict(model.state_dict()), dict(fresh.state_dict()))


def test_reserved_meta_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_weights(tmp_path / "w.safetensors", {}, {"format": "mine"})


def test_failed_weights_write_keeps_the_previous_copy(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.ones(3)}, {"v": 1})

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_weights(path, {"a": torch.zeros(3)}, {"v": 2})
    with pytest.raises(OSError, match="simulated"):
        save_weights(tmp_path / "new.safetensors", {"a": torch.zeros(3)}, {})
    monkeypatch.undo()
    tensors, meta = load_weights(path)
    assert torch.equal(tensors["a"], torch.ones(3)) and meta == {"v": 1}
    assert siblings(tmp_path) == ["w.safetensors"]  # no partial file, nothing under the new name


def test_load_weights_errors_name_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    save_weights(good, {"a": torch.randn(100)}, {})
    cases = {}
    cases["no such file"] = tmp_path / "missing.safetensors"
    cases["a folder"] = tmp_path
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-7])
    cases["not a readable safetensors file"] = truncated
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x01\x02 not a checkpoint at all")
    cases["not a readable safetensors file "] = garbage
    foreign = tmp_path / "foreign.safetensors"
    save_file({"a": torch.ones(2)}, foreign, metadata={"format": "pt"})
    cases["not written by dpda"] = foreign
    zipped = tmp_path / "model.pth"
    torch.save({"a": torch.ones(2)}, zipped)
    cases["never unpickles"] = zipped
    legacy = tmp_path / "legacy.bin"  # no telling suffix: found by the pickle protocol byte
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    cases["never unpickles "] = legacy
    bad_header = tmp_path / "bad.safetensors"
    save_file({"a": torch.ones(2)}, bad_header, metadata={"dpda": "{not json"})
    cases["corrupt 'dpda' metadata"] = bad_header
    newer = tmp_path / "newer.safetensors"
    save_file({}, newer, metadata={"dpda": json.dumps({"format": "dpda-checkpoint", "version": 2})})
    cases["version 2"] = newer
    save_state(tmp_path / "state", {"x": 1})
    cases["found format 'dpda-training-state'"] = tmp_path / "state" / "state.safetensors"
    for expected, path in cases.items():
        with pytest.raises(CheckpointError) as error:
            load_weights(path)
        assert str(path) in str(error.value) and expected.strip() in str(error.value), str(error.value)


def test_check_architecture_lists_differences():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    check_architecture(model, model.state_dict(), Path("x.safetensors"))
    other = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as error:
        check_architecture(
            model,
            other.state_dict(),
            Path("run/x.safetensors"),
            meta={"model": {"name": "rawnet2"}},
            expected_model={"name": "aasist"},
        )
    message = str(error.value)
    assert message.startswith("run/x.safetensors: ") and "another architecture" in message
    assert message.index("'rawnet2'") < message.index("'aasist'") < message.index("missing keys")
    assert "3 missing keys: 1.running_mean, 1.running_var, 1.num_batches_tracked;" in message
    assert "4 mismatches: 0.weight (expected [3, 4], found [2, 4]), 0.bias" in message and "unexpected" not in message
    wide = {f"k{i}": torch.ones(1) for i in range(9)}
    with pytest.raises(CheckpointError, match=r"9 unexpected keys: k0, k1, k2, k3, k4, \.\.\."):
        check_architecture(nn.Identity(), wide, Path("y"))


# -- training state -----------------------------------------------------------------------------
def nested_state() -> dict:
    return {
        "tensors": [
            torch.randn(2, 3),
            torch.tensor(1.5, dtype=torch.bfloat16),
            torch.tensor(3),
            torch.randint(0, 255, (10,), dtype=torch.uint8),
            torch.tensor([1e-45, -0.0]),  # a state tensor is finite: save_state refuses NaN
        ],
        "arrays": (
            np.arange(6, dtype=np.float32).reshape(2, 3),
            np.array(7, dtype=np.uint32),
            np.arange(4, dtype=">i4"),
            np.zeros((0, 2)),
            np.arange(6.0).reshape(2, 3).T,
        ),
        "scalars": [
            0,
            -1,
            2**62,
            2**19937 - 1,
            -(2**70),
            1.5,
            float("inf"),
            -float("inf"),
            float("nan"),
            -0.0,
            True,
            False,
            None,
            "text",
            "",
        ],
        "int keys": {0: "a", 1: {"step": 3}},
        "mixed keys": {("a", 1): 1, None: 2, 2.5: 3, True: 4},
        "marker lookalike": {"__tensor__": "0", "__tuple__": [1]},
        "nested tuples": ((1, (2,)), []),
    }


def test_flatten_round_trips_exactly_through_json():
    state = nested_state()
    tensors, skeleton = flatten(state)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert_same(state, unflatten(json.loads(json.dumps(skeleton, allow_nan=False)), tensors))


def test_flatten_refuses_objects_needing_pickle():
    with pytest.raises(TypeError, match="set"):
        flatten({"a": {1, 2}})
    with pytest.raises(TypeError, match="ndarray"):
        flatten(np.array([object()]))


def test_state_round_trips_through_a_folder(tmp_path):
    state = nested_state()
    save_state(tmp_path / "state", state)
    assert siblings(tmp_path) == ["state"] and siblings(tmp_path / "state") == ["state.json", "state.safetensors"]
    assert json.loads((tmp_path / "state" / "state.json").read_text())["format"] == "dpda-training-state"
    assert_same(state, load_state(tmp_path / "state"))
    save_state(tmp_path / "state", {"second": 2})  # replaces the first as a whole
    assert load_state(tmp_path / "state") == {"second": 2} and siblings(tmp_path) == ["state"]


@pytest.mark.parametrize("failing_call", [1, 2])
def test_failed_state_save_keeps_the_previous_state(tmp_path, monkeypatch, failing_call):
    """Call 1 moves the old folder away, call 2 moves the new one into place (the files inside
    the temporary folder are written with their own replaces first, hence the offset)."""
    folder = tmp_path / "state"
    save_state(folder, {"step": 1})
    real, calls = os.replace, []

    def replace(src, dst):
        if Path(src).is_dir():
            calls.append(src)
            if len(calls) == failing_call:
                raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        save_state(folder, {"step": 2})
    monkeypatch.undo()
    assert load_state(folder) == {"step": 1}
    assert siblings(tmp_path) == ["state"]


def test_failed_state_write_leaves_no_temporary_folder(tmp_path, monkeypatch):
    save_state(tmp_path / "state", {"step": 1})
    monkeypatch.setattr(ckpt, "save_file", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_state(tmp_path / "state", {"step": 2})
    assert siblings(tmp_path) == ["state"] and load_state(tmp_path / "state") == {"step": 1}


def test_load_state_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'none'}: no training state")):
        load_state(tmp_path / "none")
    save_state(tmp_path / "state", {"step": 1})
    os.replace(tmp_path / "state", tmp_path / ".state.old-123")  # a crash between the two renames
    with pytest.raises(CheckpointError, match=r"interrupted save left .*\.state\.old-123"):
        load_state(tmp_path / "state")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty/state\.safetensors: no such file"):
        load_state(tmp_path / "empty")
    weights = tmp_path / "weights"
    save_weights(weights / "state.safetensors", {}, {})
    with pytest.raises(CheckpointError, match="expected a 'dpda-training-state' file, found format 'dpda-checkpoint'"):
        load_state(weights)
    broken = tmp_path / "broken"
    broken.mkdir()
    skeleton = {"format": "dpda-training-state", "version": 1, "skeleton": {"a": {"__tensor__": "7"}}}
    save_file({}, broken / "state.safetensors", metadata={"dpda": json.dumps(skeleton)})
    with pytest.raises(CheckpointError, match=r"broken/state\.safetensors: malformed training state"):
        load_state(broken)


def test_rng_states_restore_exactly(tmp_path):
    def draw():
        return (
            random.random(),
            random.getrandbits(64),
            np.random.rand(3).tolist(),
            np.random.randn(),
            torch.rand(3).tolist(),
            torch.randn(2).tolist(),
        )

    draw()
    state = capture_rng()
    save_state(tmp_path / "rng", {"rng": state})
    first = draw()
    restore_rng(state)
    assert draw() == first
    restore_rng(load_state(tmp_path / "rng")["rng"])  # through the file: tuples stay tuples
    assert draw() == first


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2))

    def forward(self, x):
        return self.body(x)


def make_run(optimizer_cls, scheduler_fn):
    model = Net()
    optimizer = optimizer_cls(model.parameters(), lr=0.01, weight_decay=0.01)
    return model, optimizer, scheduler_fn(optimizer)


def train_steps(model, optimizer, scheduler, steps):
    for _ in range(steps):
        x = torch.randn(4, 6)  # data and dropout draw from the global generator
        loss = model(x).square().mean() + random.random() * 0 + float(np.random.rand()) * 1e-3
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize(
    "optimizer_cls, scheduler_fn",
    [
        (torch.optim.Adam, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5)),
        (torch.optim.AdamW, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
        (torch.optim.AdamW, lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=4)),
    ],
)
def test_resume_continues_bit_exactly(tmp_path, optimizer_cls, scheduler_fn):
    torch.manual_seed(0)
    model, optimizer, scheduler = make_run(optimizer_cls, scheduler_fn)
    start = capture_rng()
    train_steps(model, optimizer, scheduler, 6)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    restore_rng(start)
    torch.manual_seed(0)
    model, optimizer, scheduler = make_run(optimizer_cls, scheduler_fn)
    restore_rng(start)
    train_steps(model, optimizer, scheduler, 3)
    save_state(
        tmp_path / "state",
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": capture_rng(),
        },
    )
    del model, optimizer, scheduler
    torch.manual_seed(123)  # a fresh process: other weights, other generator states
    random.seed(5)
    np.random.seed(5)
    model, optimizer, scheduler = make_run(optimizer_cls, scheduler_fn)
    state = load_state(tmp_path / "state")
    check_architecture(model, state["model"], tmp_path / "state")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    train_steps(model, optimizer, scheduler, 3)
    assert_same(uninterrupted, {k: v.clone() for k, v in model.state_dict().items()})


# -- averaging and the n best ------------------------------------------------------------------
def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2).to(torch.bfloat16))
    for p in [*model.parameters(), model[1].running_mean, model[1].running_var]:
        p.data.normal_()
    model[1].num_batches_tracked.fill_(100 + seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_best_checkpoints_average_exactly_the_n_best(tmp_path):
    losses = {1: 0.61, 2: 0.42, 3: 0.55, 4: 0.30, 5: 0.30, 6: 0.77, 7: 0.25, 8: 0.48}  # shuffled; 4 and 5 tie
    states = {epoch: tiny_state(epoch) for epoch in losses}
    best = BestCheckpoints(tmp_path / "ckpt", n=5)
    written = [best.consider(e, loss, states[e], {"epoch": e}) for e, loss in losses.items()]
    assert written == [True, True, True, True, True, False, True, True]
    assert not best.consider(9, float("nan"), tiny_state(9), {})
    best_five = [7, 4, 5, 2, 8]  # by loss; the tie goes to the earlier epoch
    assert best.entries == [(e, losses[e]) for e in best_five]
    assert best.paths == [tmp_path / "ckpt" / f"epoch-{e:03d}.safetensors" for e in best_five]
    assert siblings(tmp_path / "ckpt") == sorted(
        f"epoch-{e:03d}.{x}" for e in best_five for x in ("json", "safetensors")
    )

    out = best.average(tmp_path / "final.safetensors", {"averaged": best_five})
    averaged, meta = load_weights(out)
    assert meta == {"averaged": best_five}
    for key, first in states[7].items():
        if not first.is_floating_point():  # num_batches_tracked: the best checkpoint's
            assert torch.equal(averaged[key], first)
            continue
        total = states[best_five[0]][key].double()
        for epoch in best_five[1:]:
            total = total + states[epoch][key].double()
        expected = (total / 5).to(first.dtype)
        assert averaged[key].dtype == first.dtype and torch.equal(bits(averaged[key]), bits(expected)), key

    # The bug this replaces: the paper code loaded each checkpoint into the model and kept
    # `avg = model.state_dict()`, whose tensors ARE the model's parameters. Loading the second
    # checkpoint overwrote the best one inside `avg` before anything was added, so the sum was
    # second + second + third + ...: the best epoch dropped, the second best counted twice.
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2).to(torch.bfloat16))
    model.load_state_dict(load_weights(best.paths[0])[0])
    buggy = model.state_dict()
    for path in best.paths[1:]:
        model.load_state_dict(load_weights(path)[0])
        current = model.state_dict()
        buggy = {k: buggy[k] + current[k] for k in buggy}
    emulated = (2 * states[4]["0.weight"].double() + sum(states[e]["0.weight"].double() for e in (5, 2, 8))) / 5
    assert torch.allclose(buggy["0.weight"].double() / 5, emulated, atol=1e-6)
    assert not torch.allclose(averaged["0.weight"], (buggy["0.weight"] / 5).float())


def test_best_checkpoints_resume_cleans_leftovers(tmp_path):
    folder = tmp_path / "ckpt"
    best = BestCheckpoints(folder, n=2)
    for epoch, loss in [(1, 0.5), (2, 0.4), (3, 0.6)]:
        best.consider(epoch, loss, tiny_state(epoch), {})
    saved = json.loads(json.dumps(best.state_dict()))
    save_weights(folder / "epoch-004.safetensors", tiny_state(4), {})  # written, then killed
    (folder / ".epoch-005.safetensors.x1y2.tmp").write_bytes(b"partial")
    resumed = BestCheckpoints(folder, n=2)
    resumed.load_state_dict(saved)
    assert resumed.entries == [(2, 0.4), (1, 0.5)]
    assert siblings(folder) == ["epoch-001.json", "epoch-001.safetensors", "epoch-002.json", "epoch-002.safetensors"]
    (folder / "epoch-001.safetensors").unlink()  # evicted just before a kill: dropped
    resumed.load_state_dict(saved)
    assert resumed.entries == [(2, 0.4)] and siblings(folder) == ["epoch-002.json", "epoch-002.safetensors"]
    with pytest.raises(ValueError, match="already considered"):
        resumed.consider(2, 0.1, tiny_state(2), {})


def test_average_weights_refuses_files_that_differ(tmp_path):
    save_weights(tmp_path / "a.safetensors", {"w": torch.ones(2, 2), "b": torch.ones(2)}, {})
    save_weights(tmp_path / "b.safetensors", {"w": torch.ones(2, 3)}, {})
    save_weights(tmp_path / "c.safetensors", {"w": torch.ones(2, 2, dtype=torch.float64), "b": torch.ones(2)}, {})
    for other, problem in [
        ("b", "1 missing keys: b; 1 mismatches: w (expected float32[2, 2], found float32[2, 3])"),
        ("c", "w (expected float32[2, 2], found float64[2, 2])"),
    ]:
        with pytest.raises(CheckpointError) as error:
            average_weights([tmp_path / "a.safetensors", tmp_path / f"{other}.safetensors"])
        assert str(error.value).startswith(f"{tmp_path / other}.safetensors: does not match {tmp_path / 'a'}")
        assert problem in str(error.value)
    with pytest.raises(ValueError, match="no checkpoints"):
        average_weights([])
    with pytest.raises(ValueError, match="no checkpoint kept"):
        BestCheckpoints(tmp_path / "none", 3).average(tmp_path / "out.safetensors", {})


def test_average_weights_read_in_chunks_equals_the_mean(tmp_path, monkeypatch):
    """Files read a few tensors per pass (here 40 bytes: two passes over three files) give the mean."""
    import dpda.checkpoint

    monkeypatch.setattr(dpda.checkpoint, "_CHUNK_BYTES", 40)
    states = [{"a": torch.randn(3, 4), "b": torch.randn(5), "n": torch.tensor(i)} for i in range(3)]
    for index, state in enumerate(states):
        save_weights(tmp_path / f"{index}.safetensors", state, {})
    average = average_weights([tmp_path / f"{index}.safetensors" for index in range(3)])
    for key in ("a", "b"):
        expected = torch.stack([s[key].double() for s in states]).mean(0).float()
        assert torch.equal(average[key], expected)
    assert average["n"] == 0  # from the first file
