"""The augmentation chain: per-utterance probabilities, merged parameters, YAML configurations."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import yaml
from test_augment_noise_reverb import write_musan, write_rirs

from dpda.augment import chain as chain_module
from dpda.augment.chain import AugmentationChain, OneOf, augmentation_class, build_chain, load_chain
from dpda.augment.channel import Gain, Speed
from dpda.augment.codec import CODECS

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "augment"
RATE = 16000


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(size: int, samples: int = 800, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(size, samples, generator=seeded(seed))


def test_probability_zero_leaves_the_audio_unchanged_and_one_always_applies():
    x = batch(8)
    never = AugmentationChain([(Gain([6, 6]), 0.0)]).augment(x, seeded())
    assert torch.equal(never.audio, x)
    assert never.params == {"gain.applied": never.params["gain.applied"]}
    assert not never.params["gain.applied"].any()
    always = AugmentationChain([(Gain([6, 6]), 1.0)]).augment(x, seeded())
    assert always.params["gain.applied"].all()
    torch.testing.assert_close(always.audio, x * 10 ** (6 / 20))
    torch.testing.assert_close(always.params["gain.gain_db"], torch.full((8,), 6.0))


def test_half_probability_selects_about_half_and_keeps_the_rest_untouched():
    x = batch(2000, samples=16)
    out = AugmentationChain([(Gain([-6, -3]), 0.5)]).augment(x, seeded(3))
    applied = out.params["gain.applied"]
    assert 0.45 < applied.float().mean() < 0.55
    assert torch.equal(out.audio[~applied], x[~applied])
    assert torch.all(out.audio[applied].abs().amax(1) < x[applied].abs().amax(1))
    gain = out.params["gain.gain_db"]
    assert torch.isnan(gain[~applied]).all() and torch.all((gain[applied] >= -6) & (gain[applied] <= -3))


def test_stages_apply_in_order_with_prefixed_parameters_and_labels_for_repeats():
    x = batch(4)
    chain = AugmentationChain([(Gain([6, 6]), 1.0), (Speed([1.0]), 1.0), (Gain([6, 6]), 1.0)])
    assert chain.labels == ["gain", "speed", "gain_2"]
    out = chain.augment(x, seeded())
    torch.testing.assert_close(out.audio, x * 10 ** (12 / 20))
    assert set(out.params) == {
        "gain.applied",
        "gain.gain_db",
        "speed.applied",
        "speed.speed",
        "gain_2.applied",
        "gain_2.gain_db",
    }
    assert all(v.shape[0] == 4 for v in out.params.values())


def test_chain_runs_repeat_with_a_seed_and_draw_per_utterance():
    x = batch(1).repeat(64, 1)
    chain = AugmentationChain([(Gain([-6, 6]), 0.5), (Speed([0.9, 1.1]), 0.5)])
    first, again = chain.augment(x, seeded(11)), chain.augment(x, seeded(11))
    assert torch.equal(first.audio, again.audio)
    for key in first.params:
        torch.testing.assert_close(first.params[key], again.params[key], rtol=0, atol=0, equal_nan=True)
    assert len({tuple(row[:20].tolist()) for row in first.audio}) > 10
    assert not torch.equal(chain.augment(x, seeded(12)).audio, first.audio)


def test_one_of_applies_exactly_one_choice_by_weight():
    x = batch(400, samples=16)
    one_of = OneOf([(Gain([6, 6]), 3.0), (Gain([-6, -6]), 1.0)])
    out = AugmentationChain([(one_of, 1.0)]).augment(x, seeded())
    choice = out.params["one_of.choice"]
    assert set(choice.tolist()) == {0, 1} and 0.68 < (choice == 0).float().mean() < 0.82
    first, second = out.params["one_of.gain.gain_db"], out.params["one_of.gain_2.gain_db"]
    assert torch.equal(torch.isnan(first), choice != 0) and torch.equal(torch.isnan(second), choice != 1)
    expected = torch.where(choice[:, None] == 0, x * 10 ** (6 / 20), x * 10 ** (-6 / 20))
    torch.testing.assert_close(out.audio, expected)
    only_first = OneOf([(Gain([6, 6]), 1.0), (Gain([-6, -6]), 0.0)]).augment(x, seeded())
    assert torch.all(only_first.params["choice"] == 0) and "gain_2.gain_db" not in only_first.params


def test_build_chain_from_a_dict_with_overrides_and_a_shared_sample_rate():
    config = {
        "sample_rate": 8000,
        "stages": [{"name": "codec", "p": 1, "codecs": ["mulaw"]}, {"name": "gain", "p": 0.5, "gain_db": [-1, 1]}],
    }
    chain = build_chain(config, overrides={"gain.p": 1.0, "codec.codecs": ["alaw"]})
    assert chain.labels == ["codec", "gain"] and chain.probabilities == [1.0, 1.0]
    assert chain.stages[0].sample_rate == 8000 and chain.stages[0].codec_ids == [CODECS.index("alaw")]
    assert config["stages"][0]["codecs"] == ["mulaw"]  # the caller's configuration is left as it was
    out = chain.augment(batch(3), seeded())
    assert out.audio.shape == (3, 800) and torch.all(out.params["codec.codec_id"] == CODECS.index("alaw"))


def test_rawboost_config_asks_for_the_papers_algorithm_4_on_every_utterance():
    config = yaml.safe_load((CONFIGS / "rawboost_algo4.yaml").read_text())
    assert config["stages"] == [{"name": "rawboost", "p": 1.0, "algo": 4}]
    if importlib.util.find_spec("dpda.augment.rawboost") is None:
        pytest.skip("dpda.augment.rawboost is not there yet")
    chain = load_chain(CONFIGS / "rawboost_algo4.yaml")
    assert chain.labels == ["rawboost"] and chain.probabilities == [1.0]
    out = chain.augment(batch(2, samples=RATE), seeded())
    assert out.audio.shape == (2, RATE) and out.params["rawboost.applied"].all()


def test_musan_rir_config_runs_on_folders_given_as_overrides(tmp_path):
    musan, rirs = write_musan(tmp_path / "musan"), write_rirs(tmp_path / "rirs")
    chain = load_chain(
        CONFIGS / "musan_rir.yaml", overrides={"one_of.noise.root": str(musan), "one_of.reverb.folder": str(rirs)}
    )
    assert chain.labels == ["one_of"] and chain.probabilities == [0.6]
    out = chain.augment(batch(64, samples=RATE), seeded())
    applied, choice = out.params["one_of.applied"], out.params["one_of.choice"]
    assert 0.4 < applied.float().mean() < 0.8
    assert torch.equal(choice >= 0, applied) and set(choice[applied].tolist()) == {0, 1}
    assert torch.equal(~torch.isnan(out.params["one_of.noise.snr_db"]), choice == 1)
    assert torch.equal(out.params["one_of.reverb.rir_index"] >= 0, choice == 0)
    with pytest.raises(ValueError, match="root"):
        load_chain(CONFIGS / "musan_rir.yaml", overrides={"one_of.reverb.folder": str(rirs)})


def test_telephone_config_runs():
    chain = load_chain(CONFIGS / "telephone.yaml")
    assert chain.labels == ["one_of", "gain"]
    out = chain.augment(batch(32, samples=RATE), seeded())
    codec_ids = torch.cat([out.params["one_of.codec.codec_id"], out.params["one_of.codec_2.codec_id"]])
    assert set(codec_ids.tolist()) - {-1} <= {CODECS.index(c) for c in ("mulaw", "alaw", "opus")}
    assert out.audio.shape == (32, RATE) and torch.isfinite(out.audio).all()


def test_rawboost_is_looked_up_lazily_and_a_missing_module_is_named(monkeypatch):
    monkeypatch.setitem(chain_module.REGISTRY, "ghost", "dpda.augment.ghost:Ghost")
    with pytest.raises(ImportError, match=r"dpda\.augment\.ghost"):
        augmentation_class("ghost")
    assert chain_module.REGISTRY["rawboost"] == "dpda.augment.rawboost:RawBoost"


@pytest.mark.parametrize(
    "config, words",
    [
        ({"stages": [{"name": "nosie", "p": 1}]}, ["stages[0].name", "'nosie'", "did you mean 'noise'", "gain"]),
        ({"stages": [{"p": 1}]}, ["stages[0]", "'name'"]),
        ({"stages": [{"name": "gain", "p": 1.5}]}, ["stages[0].p", "[0, 1]"]),
        ({"stages": [{"name": "gain", "p": -0.1}]}, ["stages[0].p"]),
        ({"stages": [{"name": "gain", "p": True}]}, ["stages[0].p"]),
        (
            {"stages": [{"name": "gain", "p": 1, "gain": [0, 1]}]},
            ["stages[0] (gain)", "'gain'", "did you mean 'gain_db'", "allowed: gain_db"],
        ),
        ({"stages": [{"name": "gain", "p": 1, "gain_db": [3, -3]}]}, ["stages[0] (gain)", "gain_db", "inverted"]),
        ({"stages": [{"name": "noise", "p": 1}]}, ["stages[0] (noise)", "missing", "root"]),
        ({"stages": [{"name": "codec", "codecs": ["gsm"]}]}, ["stages[0] (codec)", "codecs", "mulaw"]),
        (
            {"stages": [{"name": "one_of", "p": 1, "choices": [{"name": "gain", "weight": -1}]}]},
            ["stages[0].choices[0].weight"],
        ),
        ({"stages": [{"name": "one_of", "p": 1, "choice": []}]}, ["stages[0] (one_of)", "'choice'", "choices"]),
        (
            {"stages": [{"name": "one_of", "p": 1, "choices": [{"name": "speed", "factors": [0]}]}]},
            ["stages[0] (one_of)", "stages[0].choices[0] (speed)", "factors"],
        ),
        ({"stage": []}, ["config", "'stage'", "did you mean 'stages'"]),
        ({"sample_rate": 16000}, ["stages"]),
        ({"stages": {"name": "gain"}}, ["stages", "list"]),
        ({"sample_rate": -1, "stages": []}, ["sample_rate"]),
    ],
)
def test_bad_configuration_names_the_key(config, words):
    with pytest.raises(ValueError) as error:
        build_chain(config)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_bad_overrides_and_files_name_the_key(tmp_path):
    config = {"stages": [{"name": "gain", "p": 1}]}
    with pytest.raises(ValueError, match=r"overrides: 'gian.p'.*did you mean 'gain'.*stages here: gain"):
        build_chain(config, overrides={"gian.p": 0.5})
    with pytest.raises(ValueError, match=r"stages\[0\].p"):
        build_chain(config, overrides={"gain.p": 2})
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  - name: gain\n    p: 1\n    db: [0, 1]\n")
    with pytest.raises(ValueError, match=f"{path}: stages.0. .gain.: unknown key 'db'"):
        load_chain(path)
    path.write_text("- name: gain\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_chain(path)


def test_probabilities_of_a_chain_built_in_python_are_checked():
    with pytest.raises(ValueError, match=r"stages\[1\].p"):
        AugmentationChain([(Gain(), 0.5), (Gain(), math.nan)])
    with pytest.raises(ValueError, match="names"):
        AugmentationChain([(Gain(), 0.5)], names=["a", "b"])
