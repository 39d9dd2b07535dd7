"""The paper code's training decisions that dpda offers as config keys: the dev-loss criterion,
RawBoost on the whole utterance before the crop (in the loader), zero gradients for parameters
without one, and the configs that refuse what the paper never ran."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from models import LoudOnlyBranch, TinyDetector
from scipy.stats import ks_2samp
from tiny_runs import experiment as _config

from dpda.augment import build_chain
from dpda.checkpoint import load_weights
from dpda.config import ConfigError, config_from_dict
from dpda.data import Utterance
from dpda.data.audio import repeat_pad
from dpda.data.dataset import AudioDataset
from dpda.dualpath import DualPathStep, WeightedCrossEntropy, set_loss
from dpda.models import build
from dpda.train import train
from dpda.train.paired import PairedDataset, collate_pairs

CROP = 66800


# --- the dev-loss criterion --------------------------------------------------------------------


def paper_dev_loss(logits: torch.Tensor, labels: torch.Tensor, batch: int = 8) -> float:
    """The paper code's loop: per-batch weighted CE (mean reduction) times the batch size, summed,
    over the number of utterances."""
    total = 0.0
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.1, 0.9]))
    for start in range(0, len(labels), batch):
        part = labels[start : start + batch]
        total += criterion(logits[start : start + batch], part).item() * len(part)
    return total / len(labels)


def test_batch_mean_dev_loss_is_the_paper_criterion_and_differs_from_pooled():
    torch.manual_seed(0)
    labels = (torch.rand(203) < 0.1).long()  # mostly spoof, like ASVspoof 2019 LA dev; a short last batch
    logits = torch.randn(203, 2) * 3 + labels[:, None] * torch.tensor([-2.0, 2.0])
    loss = WeightedCrossEntropy((0.1, 0.9))
    assert set_loss(loss, logits, labels, 8) == pytest.approx(paper_dev_loss(logits, labels), rel=1e-6)
    pooled = set_loss(loss, logits, labels)
    assert pooled == pytest.approx(F.cross_entropy(logits, labels, weight=torch.tensor([0.1, 0.9])).item(), rel=1e-6)
    assert abs(pooled - set_loss(loss, logits, labels, 8)) > 0.05 * pooled


# --- zero gradients for parameters without one ---------------------------------------------------


def test_zero_missing_grads_lets_weight_decay_move_frozen_and_unused_parameters():
    moved = {}
    for zero in (False, True):
        model = LoudOnlyBranch()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
        engine = DualPathStep(model, optimizer, "pcgrad", zero_missing_grads=zero)
        x = 0.1 * torch.randn(4, 400)
        engine(x, x + 0.01 * torch.randn(4, 400), torch.tensor([0, 1, 0, 1]))
        moved[zero] = {
            name: not torch.equal(p, LoudOnlyBranch().state_dict()[name]) for name, p in model.named_parameters()
        }
        assert all(p.grad is None for p in model.parameters())
    assert not moved[False]["frozen"] and not moved[False]["loud_gain"] and not moved[False]["unused"]
    assert moved[True]["frozen"] and moved[True]["loud_gain"]
    assert not moved[True]["unused"]  # zeros: decay and a zero gradient leave them at 0
    assert moved[True]["head.weight"] and moved[False]["head.weight"]


def test_paper_configs_hand_frozen_parameters_to_adam_only_with_an_aligner(tmp_path, corpus):
    """The Conformer-TCM positional table is a frozen parameter, as in the paper code: with
    zero_missing_grads the trainer's optimizer holds it and weight decay moves it."""
    config = _config(corpus, tmp_path / "runs", epochs=1, n_best=1, max_steps_per_epoch=2)
    config["model"] = {
        "name": "xlsr_conformer_tcm",
        "ssl": {"tiny": "wav2vec2"},
        "emb_size": 16,
        "heads": 2,
        "kernel_size": 3,
        "n_encoders": 1,
    }
    config["optim"] = {"lr": 1e-3, "weight_decay": 1e-2}
    config["eval"] = {"sets": []}
    tables = {}
    for zero in (False, True):
        config["name"] = f"zero-{zero}"
        config["dualpath"] = {"aligner": "pcgrad", "zero_missing_grads": zero}
        train(config_from_dict(config))
        weights, _ = load_weights(tmp_path / "runs" / config["name"] / "final.safetensors")
        tables[zero] = weights["backend.conformer.positional_emb"]
    initial = build(config["model"]).state_dict()["backend.conformer.positional_emb"]
    assert torch.equal(tables[False], initial)
    assert not torch.equal(tables[True], initial)


# --- RawBoost on the whole utterance, then the crop ----------------------------------------------


def paired(tmp_path, audio: np.ndarray, algo: int, order: str, seed: int = 0) -> PairedDataset:
    sf.write(str(tmp_path / "u.wav"), audio, 16000, subtype="FLOAT")
    records = [Utterance("u", "u.wav", 1)]
    dataset = AudioDataset(records, tmp_path, length=CROP, crop="head", seed=seed)
    chain = build_chain({"sample_rate": 16000, "stages": [{"name": "rawboost", "algo": algo}]})
    return PairedDataset(dataset, chain, order, seed)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum((noisy - clean).astype(np.float64) ** 2)))


def test_a_short_utterance_is_augmented_whole_then_repeated_like_the_reference(tmp_path, reference_dir):
    stats = np.load(reference_dir / "rawboost" / "reference_rawboost_stats.npz")
    short = stats["inputs"][5][:30000]  # voiced-speech-like, shorter than the crop
    dataset = paired(tmp_path, short, 4, "augment_then_crop")
    snrs, energies = [], []
    for epoch in range(40):
        original, augmented, *_ = dataset[(0, epoch)]
        np.testing.assert_array_equal(original, repeat_pad(short, CROP))
        # the reference pads the augmented utterance: its copy repeats with the original
        np.testing.assert_array_equal(augmented[30000:60000], augmented[:30000])
        snrs.append(snr_db(short, augmented[:30000]))
        energies.append(10 * np.log10(np.sum(augmented[:30000].astype(np.float64) ** 2) / np.sum(short**2.0)))
    reference = stats["algo4_input_index"] == 5
    assert ks_2samp(snrs, stats["algo4_snr_db"][reference]).pvalue > 0.001
    assert ks_2samp(energies, stats["algo4_energy_ratio_db"][reference]).pvalue > 0.001
    _, cropped_first, *_ = paired(tmp_path, short, 4, "crop_then_augment")[(0, 0)]
    assert not np.array_equal(cropped_first[30000:60000], cropped_first[:30000])


def test_a_long_utterance_gets_the_noise_level_of_the_whole_utterance(tmp_path, reference_dir):
    """SSI's SNR refers to the whole utterance in the paper's order and to the crop in dpda's:
    with a quiet first 4 s and a loud tail the crop's SNR shows which."""
    speech = np.load(reference_dir / "rawboost" / "reference_rawboost_stats.npz")["inputs"][6]
    long = np.concatenate([0.1 * speech, speech])[: CROP + 60000].astype(np.float32)
    whole_energy, crop_energy = np.sum(long.astype(np.float64) ** 2), np.sum(long[:CROP].astype(np.float64) ** 2)
    for order in ("augment_then_crop", "crop_then_augment"):
        dataset = paired(tmp_path, long, 3, order)
        for epoch in range(5):
            original, augmented, _, params, _ = dataset[(0, epoch)]
            np.testing.assert_array_equal(original, long[:CROP])
            drawn = float(params["rawboost.ssi_snr_db"][0])
            if order == "augment_then_crop":  # noise energy in the crop: its share of the whole noise
                noise = CROP / len(long) * whole_energy / 10 ** (drawn / 10)
                expected = 10 * np.log10(crop_energy / noise)
            else:
                expected = drawn
            assert snr_db(long[:CROP], augmented) == pytest.approx(expected, abs=0.5), (order, epoch)


def test_loader_augmentation_is_keyed_by_utterance_and_epoch(tmp_path):
    audio = np.random.default_rng(0).normal(0, 0.1, 20000).astype(np.float32)
    dataset = paired(tmp_path, audio, 4, "augment_then_crop", seed=7)
    first, again, other = dataset[(0, 3)], dataset[(0, 3)], dataset[(0, 4)]
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    batch = collate_pairs([first, other])
    assert batch[0].shape == batch[1].shape == (2, CROP) and batch[4] == ["u", "u"]
    assert batch[3]["rawboost.ssi_snr_db"].shape == (2,)


def test_a_run_in_the_paper_order_is_the_same_with_and_without_worker_processes(tmp_path, corpus):
    finals = []
    for workers in (0, 2):
        config = _config(corpus, tmp_path / "runs", epochs=1, n_best=1, dev_loss="batch_mean", dev_batch_size=3)
        config["name"] = f"workers-{workers}"
        config["data"]["workers"] = workers
        config["augment"] = {
            "chain": None,
            "order": "augment_then_crop",
            "where": "loader",
            "inline": {"sample_rate": 16000, "stages": [{"name": "rawboost", "algo": 4}]},
        }
        results = train(config_from_dict(config))
        finals.append(load_weights(tmp_path / "runs" / config["name"] / "final.safetensors")[0])
        assert results.history[0].dev_loss == pytest.approx(results.dev.dev_loss, rel=1e-6)
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    # the epoch criterion is the paper's: batches of 3 in protocol order, on the final weights
    model = TinyDetector()
    model.load_state_dict(finals[0])
    model.eval()
    lines = (corpus / "dev.txt").read_text().splitlines()  # protocol order
    audio = torch.stack(
        [
            torch.from_numpy(sf.read(str(corpus / "flac" / f"{line.split()[1]}.flac"), dtype="float32")[0][:8000])
            for line in lines
        ]
    )
    labels = torch.tensor([1 if line.endswith("bonafide") else 0 for line in lines])
    with torch.no_grad():
        logits = model(audio)
    assert results.dev.dev_loss == pytest.approx(paper_dev_loss(logits, labels, 3), rel=1e-5)


# --- combinations the paper never ran ----------------------------------------------------------


def test_the_paper_order_on_the_device_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"augment\.where.*loader"):
        config_from_dict({"augment": {"order": "augment_then_crop", "where": "device"}})


def test_accumulation_with_batchnorm_warns_that_it_is_not_exact(tmp_path, corpus):
    config = _config(corpus, tmp_path / "runs", epochs=1, n_best=1, accumulation=2, max_steps_per_epoch=1)
    config["model"] = {"name": "custom", "class": "models:TinyDetector", "batch_norm": True}
    config["eval"] = {"sets": []}
    with pytest.warns(UserWarning, match=r"train\.accumulation 2.*BatchNorm"):
        train(config_from_dict(config))
    config["name"], config["model"]["batch_norm"] = "no-bn", False
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*BatchNorm.*")
        train(config_from_dict(config))
