"""Every augmentation declares its parameters before a batch: ``param_names`` is what ``augment`` returns
(the training log's columns are fixed before the first step)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
import torch
import yaml
from test_augment_noise_reverb import write_musan, write_rirs

from dpda.augment.chain import REGISTRY, AugmentationChain, OneOf, augmentation_class, load_chain, stage_labels
from dpda.augment.channel import Gain, Speed
from dpda.augment.codec import _FORMATS, CODECS, G711_CODECS, LOSSY_CODECS
from dpda.augment.rawboost import ALGORITHMS

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "augment"
RATE = 16000
#: The option naming the folder each folder-reading augmentation draws its clips from.
FOLDER_OPTIONS = {"noise": "root", "reverb": "folder"}
#: Option sets per registered name: those that change what is drawn (RawBoost's algorithm, the codecs,
#: the noise categories).
LEAVES: dict[str, list[dict[str, Any]]] = {
    "rawboost": [{"algo": algo} for algo in ALGORITHMS],
    "noise": [{}, {"snr_db": {"noise": [0, 15]}}, {"snr_db": {"babble": [13, 20]}, "babble_speakers": [2, 3]}],
    "reverb": [{}, {"rescale": "peak"}],
    "codec": [
        {"codecs": list(G711_CODECS)},
        *({"codecs": [codec]} for codec in LOSSY_CODECS),
        {"codecs": list(CODECS)},
    ],
    "bandlimit": [{"rates_hz": [8000, 11025]}],
    "speed": [{"factors": [0.9, 1.1]}],
    "gain": [{}],
}
LEAF_CASES = [(name, options) for name, variants in LEAVES.items() for options in variants]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Registry name -> a tiny folder for the augmentations that read clips."""
    root = tmp_path_factory.mktemp("clips")
    return {"noise": str(write_musan(root / "musan")), "reverb": str(write_rirs(root / "rirs"))}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(size: int = 4, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(size, RATE, generator=seeded(seed))


def skip_without_backend(codecs: Iterable[str]) -> None:
    """Skip when libsndfile here cannot write one of the lossy ``codecs``."""
    for codec in codecs:
        if codec in _FORMATS:
            fmt, subtype = _FORMATS[codec]
            if subtype not in sf.available_subtypes(fmt):
                pytest.skip(f"libsndfile {sf.__libsndfile_version__} has no {fmt}/{subtype} encoder for {codec}")


def walk(stages: Sequence[Mapping[str, Any]], prefix: str = "") -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(dotted label path, spec) of every stage and choice of a YAML chain, nested ones included."""
    for label, spec in zip(stage_labels([str(s["name"]) for s in stages]), stages):
        yield prefix + label, spec
        yield from walk(spec.get("choices", []), f"{prefix}{label}.")


def test_every_registered_augmentation_is_covered():
    assert set(LEAVES) == set(REGISTRY)


@pytest.mark.parametrize("name, options", LEAF_CASES, ids=[f"{name}-{options}" for name, options in LEAF_CASES])
def test_an_augmentation_returns_exactly_its_declared_names_in_order(name, options, folders):
    skip_without_backend(options.get("codecs", ()))
    if name in FOLDER_OPTIONS:
        options = {**options, FOLDER_OPTIONS[name]: folders[name]}
    augmentation = augmentation_class(name)(**options)
    names = augmentation.param_names()
    assert names and len(set(names)) == len(names)
    for seed in range(2):
        assert tuple(augmentation.augment(batch(seed=seed), seeded(seed)).params) == names


def test_chain_names_compose_the_stage_labels_as_augment_prefixes_them():
    chain = AugmentationChain(
        [(Gain(), 1.0), (OneOf([(Gain(), 1.0), (OneOf([(Speed(), 1.0)]), 1.0)]), 1.0), (Gain(), 0.5)]
    )
    assert chain.param_names() == (
        "gain.applied",
        "gain.gain_db",
        "one_of.applied",
        "one_of.choice",
        "one_of.gain.gain_db",
        "one_of.one_of.choice",
        "one_of.one_of.speed.speed",
        "gain_2.applied",
        "gain_2.gain_db",
    )
    seen: set[str] = set()
    for seed in range(8):
        params = chain.augment(batch(2, seed=seed), seeded(seed)).params
        assert list(params) == [name for name in chain.param_names() if name in params]
        seen |= set(params)
    assert seen == set(chain.param_names())  # over the seeds every stage and choice is drawn


@pytest.fixture(params=sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def config_chain(
    request: pytest.FixtureRequest, folders: dict[str, str]
) -> tuple[list[str], Callable[[Mapping[str, float]], AugmentationChain]]:
    """A YAML chain with every top-level stage's ``p`` set by the test: ``build(p_by_label)``."""
    config = yaml.safe_load(request.param.read_text())
    specs = list(walk(config["stages"]))
    skip_without_backend(c for _, spec in specs if spec["name"] == "codec" for c in spec.get("codecs", G711_CODECS))
    located = {
        f"{path}.{FOLDER_OPTIONS[s['name']]}": folders[s["name"]] for path, s in specs if s["name"] in FOLDER_OPTIONS
    }
    labels = stage_labels([str(stage["name"]) for stage in config["stages"]])

    def build(p: Mapping[str, float]) -> AugmentationChain:
        return load_chain(request.param, overrides={**located, **{f"{label}.p": p[label] for label in labels}})

    return labels, build


def test_a_yaml_chain_with_every_stage_on_returns_all_its_declared_names(config_chain):
    labels, build = config_chain
    chain = build(dict.fromkeys(labels, 1.0))
    names = chain.param_names()
    assert len(set(names)) == len(names)
    # 8 utterances: with this seed every OneOf choice of the configs is drawn by some utterance
    assert tuple(chain.augment(batch(8), seeded()).params) == names


def test_a_yaml_chain_stage_at_p_0_leaves_out_its_own_names(config_chain):
    labels, build = config_chain
    for off in labels:
        chain = build({label: 0.0 if label == off else 1.0 for label in labels})
        names = chain.param_names()
        expected = [name for name in names if name == f"{off}.applied" or not name.startswith(f"{off}.")]
        params = chain.augment(batch(8), seeded()).params
        assert list(params) == expected and set(params) < set(names)
        assert not params[f"{off}.applied"].any()
