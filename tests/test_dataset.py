"""Loader order, exact mid-epoch resume (with worker processes), and rank partitioning."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soundfile as sf
import torch

from dpda.data import Utterance
from dpda.data.dataset import AudioDataset, ResumableLoader, ResumableSampler


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    records = []
    for i in range(23):
        length = int(rng.integers(3000, 9000))
        sf.write(root / f"u{i:02d}.flac", (0.1 * rng.standard_normal(length)).astype(np.float32), 16000)
        records.append(Utterance(f"u{i:02d}", f"u{i:02d}.flac", label=int(i % 3 == 0)))
    return root, records


def batches(loader, count=None):
    """The first ``count`` batches (all by default), as a training loop would take them."""
    return [(x.clone(), y.clone(), list(ids)) for x, y, ids in itertools.islice(loader, count)]


def test_batches_have_the_documented_form(corpus):
    root, records = corpus
    loader = ResumableLoader(AudioDataset(records, root, length=4000), batch_size=4, seed=3)
    x, y, ids = next(iter(loader))
    assert x.shape == (4, 4000) and x.dtype == torch.float32
    assert y.dtype == torch.long and len(ids) == 4
    assert len(loader) == 6  # 23 utterances, last batch of 3


def test_order_is_seeded_and_changes_per_epoch(corpus):
    root, records = corpus
    dataset = AudioDataset(records, root, length=4000, crop="random", seed=1)
    first = [ids for _, _, ids in batches(ResumableLoader(dataset, 4, seed=5))]
    again = [ids for _, _, ids in batches(ResumableLoader(dataset, 4, seed=5))]
    assert first == again
    loader = ResumableLoader(dataset, 4, seed=5)
    loader.set_epoch(1)
    assert [ids for _, _, ids in batches(loader)] != first
    assert sorted(utt for batch in first for utt in batch) == sorted(r.utt_id for r in records)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_the_same_remaining_batches(corpus, workers):
    root, records = corpus
    dataset = AudioDataset(records, root, length=4000, crop="random", seed=2)
    uninterrupted = ResumableLoader(dataset, 4, seed=9, num_workers=workers)
    uninterrupted.set_epoch(2)
    expected = batches(uninterrupted)
    interrupted = ResumableLoader(dataset, 4, seed=9, num_workers=workers)
    interrupted.set_epoch(2)
    batches(interrupted, count=3)  # workers have prefetched further; the position counts handed-out batches
    state = interrupted.state_dict()
    assert state["position"] == 12 and state["epoch"] == 2
    resumed = ResumableLoader(dataset, 4, seed=9, num_workers=workers)
    resumed.load_state_dict(state)
    rest = batches(resumed)
    assert len(rest) == len(expected) - 3
    for (x, y, ids), (ex, ey, eids) in zip(rest, expected[3:]):
        assert ids == eids and torch.equal(y, ey) and torch.equal(x, ex)  # the same random crops too


def test_ranks_partition_each_epoch(corpus):
    _, records = corpus
    shares = [list(ResumableSampler(len(records), seed=4, rank=r, world_size=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 12  # 23 wrapped to 24
    assert {i for i, _ in shares[0] + shares[1]} == set(range(len(records)))
    dropped = [list(ResumableSampler(len(records), seed=4, rank=r, world_size=2, drop_last=True)) for r in range(2)]
    assert len(dropped[0]) == 11 and not {i for i, _ in dropped[0]} & {i for i, _ in dropped[1]}


def test_resume_errors_are_clear(corpus):
    root, records = corpus
    dataset = AudioDataset(records, root, length=4000)
    state = ResumableLoader(dataset, 4, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        ResumableLoader(dataset, 4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="outside"):
        ResumableLoader(dataset, 4, seed=1).load_state_dict({**state, "position": 99})
    with pytest.raises(KeyError, match="position"):
        ResumableLoader(dataset, 4, seed=1).load_state_dict({"epoch": 0})


def test_full_policy_batches_repeat_pad_to_the_longest(corpus):
    root, records = corpus
    loader = ResumableLoader(AudioDataset(records[:4], root, length=None, crop="full"), 4, shuffle=False)
    x, _, ids = next(iter(loader))
    assert x.shape[1] == max(len(sf.read(root / f"{i}.flac")[0]) for i in ids)


def test_dataset_errors(corpus):
    root, records = corpus
    with pytest.raises(ValueError, match="valid policies"):
        AudioDataset(records, root, crop="middle")
    with pytest.raises(ValueError, match="needs a length"):
        AudioDataset(records, root, length=None, crop="random")
    with pytest.raises(ValueError, match="name no audio file"):
        AudioDataset([Utterance("x", None, 1)], root)
    with pytest.raises(ValueError, match="empty"):
        ResumableSampler(0)
