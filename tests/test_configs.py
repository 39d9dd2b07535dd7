"""The shipped experiment configs: they load, name real paper rows, and their parts build.

Covers ``configs/default.yaml`` and every YAML under ``configs/paper``, ``configs/baselines``
and ``configs/builtin`` (not ``configs/paper/base``: parts the paper rows start from, tested
through the rows, with the ``base:`` mechanics on files of their own). Models are built once per
distinct model section, with a tiny random SSL front-end in place of XLS-R; MUSAN&RIR chains get
tiny synthetic folders.
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_augment_noise_reverb import write_musan, write_rirs

from dpda.align import make_aligner
from dpda.augment import load_chain
from dpda.config import ConfigError, DataSet, ExperimentConfig, config_to_dict, load_config, save_config
from dpda.data.protocols import (
    read_asvspoof2019,
    read_asvspoof2021,
    read_for,
    read_in_the_wild,
)
from dpda.models import build

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PAPER_MD = ROOT.parent / "shared" / "PAPER.md"
PAPER_FILES = sorted((CONFIGS / "paper").glob("*.yaml"))
EXPERIMENT_FILES = sorted(
    path for folder in ("paper", "baselines", "builtin") for path in (CONFIGS / folder).glob("*.yaml")
)
ALL_FILES = [CONFIGS / "default.yaml", *EXPERIMENT_FILES]

#: The result table of PAPER.md: row id -> reported EER % (21DF, ITW, FoR); None for a blank
#: cell that a config still covers. Ids: table1/<back-end>[/musan_rir]/<dpda|pcgrad|gradvac|cagrad>.
PAPER_ROWS: dict[str, tuple[float, float, float] | None] = {
    "table1/xlsr_conformer_tcm/dpda": (2.11, 7.97, 5.31),
    "table1/xlsr_conformer_tcm/pcgrad": (1.81, 6.48, 4.47),
    "table1/xlsr_conformer_tcm/gradvac": (1.83, 7.09, 4.81),
    "table1/xlsr_conformer_tcm/cagrad": (1.92, 7.45, 4.23),
    "table1/xlsr_aasist/dpda": (1.87, 6.20, 4.60),
    "table1/xlsr_aasist/pcgrad": (2.13, 5.42, 3.04),
    "table1/xlsr_aasist/gradvac": None,
    "table1/xlsr_aasist/cagrad": None,
    "table1/xlsr_mamba/dpda": (2.31, 7.62, 5.39),
    "table1/xlsr_mamba/pcgrad": (1.74, 6.43, 4.86),
    "table1/xlsr_mamba/gradvac": None,
    "table1/xlsr_mamba/cagrad": None,
    "table1/xlsr_conformer_tcm/musan_rir/dpda": (5.45, 23.04, 12.02),
    "table1/xlsr_conformer_tcm/musan_rir/pcgrad": (3.81, 19.43, 8.05),
}
#: PAPER.md's row labels and column order.
PAPER_SYSTEMS = {
    "XLSR-Conformer-TCM, RawBoost": "table1/xlsr_conformer_tcm",
    "XLSR-AASIST, RawBoost": "table1/xlsr_aasist",
    "XLSR-Mamba, RawBoost": "table1/xlsr_mamba",
    "XLSR-Conformer-TCM, MUSAN&RIR": "table1/xlsr_conformer_tcm/musan_rir",
}
PAPER_COLUMNS = ("dpda", "pcgrad", "gradvac", "cagrad")

#: The reference code's settings that every paper config shares (configs/paper/README.md).
PAPER_SETTINGS = {
    "seed": 1234,
    "data.crop_length": 66800,
    "data.crop_policy": "head",
    "dualpath.mode": "joint",
    "dualpath.grouping": "model",
    "dualpath.class_weights": (0.1, 0.9),
    "optim.name": "adam",
    "optim.lr": 1e-6,
    "optim.weight_decay": 1e-4,
    "optim.scheduler": "none",
    "train.batch_size": 5,
    "train.accumulation": 1,
    "train.epochs": 101,
    "train.patience": 7,
    "train.dev_loss": "batch_mean",
    "train.dev_batch_size": 8,
    "train.n_best": 5,
    "augment.order": "augment_then_crop",
    "augment.where": "loader",
    "eval.score": "bonafide_logit",
    "eval.max_seconds": 4.175,
}
#: The front-end as the paper code runs fairseq's xlsr2_300m.pt (the values of its saved config).
PAPER_SSL = {
    "source": "facebook/wav2vec2-xls-r-300m",
    "layer": "last",
    "freeze": False,
    "normalize": False,
    "feature_grad_mult": 1.0,
    "config_overrides": {
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.0,
        "layerdrop": 0.0,
        "mask_time_prob": 0.0,
        "mask_feature_prob": 0.0,
    },
}
ALIGNER_OF_COLUMN = {"dpda": "mean", "pcgrad": "pcgrad", "gradvac": "gradvac", "cagrad": "cagrad"}
ALIGNER_OPTIONS = {"mean": {}, "pcgrad": {}, "gradvac": {"beta": 0.5}, "cagrad": {"c": 0.5}}
EVAL_KINDS = ["asvspoof2021", "asvspoof2021", "in_the_wild", "for"]

#: The reader of each data-set kind the configs use (``builtin`` is read as ASVspoof 2019).
READERS = {
    "asvspoof2019": read_asvspoof2019,
    "builtin": read_asvspoof2019,
    "asvspoof2021": read_asvspoof2021,
    "in_the_wild": read_in_the_wild,
    "for": read_for,
}

_EER_LINE = re.compile(r"^# Reported EER \(%\): (.*)$", re.MULTILINE)
_EERS = re.compile(r"21DF (\d+\.\d+) / ITW (\d+\.\d+) / FoR (\d+\.\d+)")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def load(path: Path) -> ExperimentConfig:
    """The checked config (once per file: YAML parsing is the slow part here)."""
    return load_config(path)


def get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def unique(items: list[tuple[str, Any]]) -> list[Any]:
    """The items with distinct keys (JSON of the part), first occurrence first."""
    seen: dict[str, Any] = {}
    for key, item in items:
        seen.setdefault(key, item)
    return list(seen.values())


@cache
def resolved(path: Path) -> dict[str, Any]:
    """The config as plain data, its bases merged; {} for one that does not load (collection must
    not fail on it: test_config_loads names the error); read-only."""
    try:
        return config_to_dict(load(path))
    except ConfigError:
        return {}


def section(path: Path, name: str, default: Any) -> Any:
    value = resolved(path).get(name)
    return default if value is None else value


def key_of(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("path", ALL_FILES, ids=rel)
def test_config_loads(path):
    config = load(path)
    if path.parent.name == "paper":
        assert config.name == path.stem


def test_the_config_folders_hold_the_expected_files():
    stems = {folder: sorted(p.stem for p in (CONFIGS / folder).glob("*.yaml")) for folder in ("baselines", "builtin")}
    assert stems == {
        "baselines": ["aasist_l", "rawnet2", "xlsr_sls_rawboost"],
        "builtin": ["aasist_l", "lfcc_lcnn"],
    }
    assert len(PAPER_FILES) == len(PAPER_ROWS)


def test_run_names_are_unique():
    names = [load(path).name for path in EXPERIMENT_FILES]
    assert len(names) == len(set(names))


# ---------------------------------------------------------------------------------------------
# Paper rows


def test_every_paper_config_names_its_own_paper_row():
    rows = {path.name: load(path).paper_row for path in PAPER_FILES}
    assert all(row in PAPER_ROWS for row in rows.values()), rows
    assert sorted(rows.values()) == sorted(PAPER_ROWS), "each row once, every row covered"


@pytest.mark.parametrize("path", PAPER_FILES, ids=rel)
def test_paper_config_matches_its_row(path):
    config = load(path)
    parts = config.paper_row.split("/")
    backend, column = parts[1], parts[-1]
    musan = len(parts) == 4
    assert parts[0] == "table1" and (not musan or parts[2] == "musan_rir")
    assert path.stem == f"{backend}_{column}" + ("_musan_rir" if musan else "")
    assert config.model["name"] == backend
    assert config.dualpath.aligner == ALIGNER_OF_COLUMN[column]
    assert config.dualpath.aligner_options == ALIGNER_OPTIONS[config.dualpath.aligner]
    # the paper's aligners hand Adam zero gradients; its step without alignment leaves them None
    assert config.dualpath.zero_missing_grads == (column != "dpda")
    chain = "configs/augment/musan_rir.yaml" if musan else "configs/augment/rawboost_algo4.yaml"
    assert config.augment.chain == chain
    # The numbers in the header comment are the row's.
    header = _EER_LINE.search(path.read_text(encoding="utf-8"))
    assert header, f"{path.name}: no '# Reported EER (%): ...' line"
    reported = PAPER_ROWS[config.paper_row]
    if reported is None:
        assert header.group(1).startswith("not reported")
    else:
        numbers = _EERS.fullmatch(header.group(1))
        assert numbers and tuple(map(float, numbers.groups())) == reported


@pytest.mark.parametrize("path", PAPER_FILES, ids=rel)
def test_paper_config_uses_the_reference_settings(path):
    config = load(path)
    assert {key: get(config, key) for key in PAPER_SETTINGS} == PAPER_SETTINGS
    assert config.model["ssl"] == PAPER_SSL
    assert (config.data.train.kind, config.data.dev.kind) == ("asvspoof2019", "asvspoof2019")
    assert config.data.train.protocol.endswith("ASVspoof2019.LA.cm.train.trn.txt")
    assert config.data.dev.protocol.endswith("ASVspoof2019.LA.cm.dev.trl.txt")
    assert [s.kind for s in config.eval.sets] == EVAL_KINDS
    assert all(s.options == {"phase": "eval"} for s in config.eval.sets if s.kind == "asvspoof2021")


def test_paper_rows_match_the_table_of_paper_md():
    if not PAPER_MD.is_file():
        pytest.skip(f"{PAPER_MD} not found")
    table: dict[str, tuple[float, ...] | None] = {}
    for line in PAPER_MD.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in PAPER_SYSTEMS:
            assert len(cells) == 1 + len(PAPER_COLUMNS), line
            for column, cell in zip(PAPER_COLUMNS, cells[1:]):
                value = tuple(float(x) for x in cell.split("/")) if cell else None
                table[f"{PAPER_SYSTEMS[cells[0]]}/{column}"] = value
    assert len(table) == len(PAPER_SYSTEMS) * len(PAPER_COLUMNS)
    reported = {row: value for row, value in table.items() if value is not None}
    assert reported == {row: value for row, value in PAPER_ROWS.items() if value is not None}
    assert set(PAPER_ROWS) <= set(table)


def test_paper_readme_lists_every_config_with_its_row_and_numbers():
    lines = (CONFIGS / "paper" / "README.md").read_text(encoding="utf-8").splitlines()
    for path in PAPER_FILES:
        row = load(path).paper_row
        eers = PAPER_ROWS[row]
        numbers = "not reported" if eers is None else " / ".join(f"{x:.2f}" for x in eers)
        expected = f"| `{path.name}` | `{row}` | {numbers} |"
        assert expected in lines, expected


@pytest.mark.parametrize("path", PAPER_FILES, ids=rel)
def test_paper_row_files_state_only_what_sets_the_row_apart(path):
    """The shared settings live in configs/paper/base; a row names its back-end's base."""
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert data["base"] == f"base/{load(path).model['name']}.yaml"
    assert set(data) <= {"base", "name", "paper_row", "dualpath", "augment"}
    assert len(text.splitlines()) <= 30


# ---------------------------------------------------------------------------------------------
# Data sets


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=rel)
def test_data_sets_have_known_readers_and_options(path):
    config = load(path)
    sets: list[DataSet] = [config.data.train, config.data.dev, *config.eval.sets]
    assert config.data.train is not None and config.data.dev is not None and config.eval.sets
    for data_set in sets:
        inspect.signature(READERS[data_set.kind]).bind(data_set.protocol, **data_set.options)
    if path.parent.name == "builtin":
        assert [s.protocol for s in sets] == [f"corpus/protocols/{split}.txt" for split in ("train", "dev", "eval")]
        assert all(s.kind == "builtin" and s.root is None for s in sets)


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=rel)
def test_scored_length_is_the_training_crop(path):
    """Where scoring is cut (the recipes score the training crop's length), the trainer's
    ``int(max_seconds * sample_rate)`` gives exactly the crop."""
    config = load(path)
    if config.eval.max_seconds is not None:
        assert int(config.eval.max_seconds * config.data.sample_rate) == config.data.crop_length


# ---------------------------------------------------------------------------------------------
# base: files merged under the file that names them


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_bases_of_bases_merge_mappings_key_by_key_and_replace_lists(tmp_path):
    write(
        tmp_path / "parts" / "root.yaml",
        """
        seed: 7
        optim: {lr: 1.0e-3, betas: [0.8, 0.9]}
        model: {name: aasist_l, extra: {a: 1, b: 2}}
        """,
    )
    write(tmp_path / "parts" / "mid.yaml", "base: root.yaml\noptim: {weight_decay: 0.0}\nmodel: {extra: {b: 3}}\n")
    row = write(tmp_path / "row.yaml", "base: parts/mid.yaml\nname: row\noptim: {betas: [0.5, 0.6]}\n")
    config = load_config(row)
    assert (config.name, config.seed) == ("row", 7)
    assert (config.optim.lr, config.optim.weight_decay, config.optim.betas) == (1e-3, 0.0, (0.5, 0.6))
    assert config.model == {"name": "aasist_l", "extra": {"a": 1, "b": 3}}
    assert load_config(row, ["optim.lr=2e-3"]).optim.lr == 2e-3  # overrides apply to the merged config


def test_a_list_of_bases_is_applied_in_order(tmp_path):
    write(tmp_path / "a.yaml", "seed: 1\ntrain: {epochs: 3, patience: 2}\n")
    write(tmp_path / "b.yaml", "seed: 2\ntrain: {epochs: 4}\n")
    config = load_config(write(tmp_path / "row.yaml", "base: [a.yaml, b.yaml]\ntrain: {n_best: 1}\n"))
    assert (config.seed, config.train.epochs, config.train.patience, config.train.n_best) == (2, 4, 2, 1)


def test_null_over_a_base_value_sets_null(tmp_path):
    write(tmp_path / "base.yaml", "train: {patience: 3}\neval: {max_seconds: 4.0}\n")
    row = write(
        tmp_path / "row.yaml",
        "base: base.yaml\ntrain: {patience: null}\naugment: {chain: null, inline: {stages: []}}\n",
    )
    config = load_config(row)
    assert (config.train.patience, config.eval.max_seconds) == (None, 4.0)
    assert (config.augment.chain, config.augment.inline) == (None, {"stages": []})


def test_a_bad_key_in_a_base_names_the_file_and_its_bases(tmp_path):
    base = write(tmp_path / "base.yaml", "optim: {lrr: 1.0}\n")
    row = write(tmp_path / "row.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match="did you mean 'lr'") as error:
        load_config(row)
    assert (error.value.key, error.value.source) == ("optim.lrr", f"{row} (over {base})")


@pytest.mark.parametrize(
    "files, problem",
    [
        ({"row.yaml": "base: nowhere.yaml\n"}, "'nowhere.yaml': no such file"),
        ({"row.yaml": "base: row.yaml\n"}, "a cycle of bases: {row} -> {row}"),
        (
            {"row.yaml": "base: a.yaml\n", "a.yaml": "base: row.yaml\n"},
            "a cycle of bases: {row} -> {a} -> {row}",
        ),
        ({"row.yaml": "base: 3\n"}, "expected a path or a list of paths, found 3"),
        ({"row.yaml": "base: [a.yaml, {b: 1}]\n"}, "expected a path or a list of paths"),
        ({"row.yaml": "base: null\n"}, "expected a path or a list of paths, found None"),
    ],
    ids=["missing", "self-cycle", "cycle", "number", "list-of-non-strings", "null"],
)
def test_a_bad_base_is_refused_naming_the_file_and_key(tmp_path, files, problem):
    for name, text in files.items():
        write(tmp_path / name, text)
    row, a = tmp_path / "row.yaml", tmp_path / "a.yaml"
    with pytest.raises(ConfigError, match=re.escape(problem.format(row=row, a=a))) as error:
        load_config(row)
    assert error.value.key == "base"
    assert error.value.source == (f"{a} (base of {row})" if "a.yaml" in files else str(row))


def test_a_base_that_is_not_a_mapping_is_refused_naming_it_and_its_file(tmp_path):
    write(tmp_path / "list.yaml", "[1, 2]\n")
    row = write(tmp_path / "row.yaml", "base: list.yaml\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections") as error:
        load_config(row)
    assert error.value.source == f"{tmp_path / 'list.yaml'} (base of {row})"


def test_a_run_folder_keeps_the_merged_config_without_base(tmp_path):
    write(tmp_path / "parts" / "base.yaml", "seed: 3\noptim: {lr: 1.0e-4}\n")
    config = load_config(write(tmp_path / "row.yaml", "base: parts/base.yaml\nname: row\n"))
    saved = tmp_path / "runs" / "row" / "config.yaml"
    save_config(config, saved)
    assert "base" not in yaml.safe_load(saved.read_text(encoding="utf-8"))
    (tmp_path / "parts" / "base.yaml").unlink()  # the run folder needs no other file
    assert load_config(saved) == config


# ---------------------------------------------------------------------------------------------
# Models, aligners and augmentation chains: each distinct one once


def tiny_model(model: dict[str, Any]) -> dict[str, Any]:
    """``model`` with a tiny random SSL front-end in place of a pretrained ``source``."""
    if "ssl" not in model:
        return dict(model)
    ssl = {k: v for k, v in model["ssl"].items() if k not in ("source", "revision", "local_files_only")}
    return {**model, "ssl": {**ssl, "tiny": "wav2vec2"}}


def crop_lengths(model: dict[str, Any]) -> list[int]:
    """The training crop lengths of the configs with this model section."""
    return sorted(
        {
            section(p, "data", {}).get("crop_length", 66800)
            for p in ALL_FILES
            if key_of(section(p, "model", {})) == key_of(model)
        }
    )


MODELS = unique(
    [(key_of(section(p, "model", {})), pytest.param(section(p, "model", {}), id=rel(p))) for p in ALL_FILES]
)


@pytest.mark.parametrize("model", MODELS)
def test_model_builds_and_scores_audio(model):
    torch.manual_seed(0)
    detector = build(tiny_model(model)).eval()
    shortest = min(crop_lengths(model))
    assert shortest >= getattr(detector, "min_samples", 0)
    with torch.no_grad():  # one second: the options make a working network
        _, logits = detector(0.1 * torch.randn(1, min(shortest, 16000)))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


ALIGNERS = unique([(key_of(section(p, "dualpath", {})), pytest.param(p, id=rel(p))) for p in ALL_FILES])


@pytest.mark.parametrize("path", ALIGNERS)
def test_aligner_builds(path):
    dualpath = load(path).dualpath
    aligner = make_aligner(dualpath.aligner, grouping=dualpath.grouping, **dualpath.aligner_options)
    assert aligner.grouping == dualpath.grouping


CHAINS = unique([(key_of(section(p, "augment", {})), pytest.param(p, id=rel(p))) for p in ALL_FILES])


@pytest.mark.parametrize("path", CHAINS)
def test_augmentation_chain_exists_and_builds(path, tmp_path):
    augment = load(path).augment
    if augment.chain is None:
        config = augment.inline
        chain_path = tmp_path / "inline.yaml"
        chain_path.write_text(yaml.safe_dump(config))
    else:
        chain_path = ROOT / augment.chain
        assert chain_path.is_file(), f"{augment.chain} not found"
    overrides = dict(augment.overrides)
    for key, value in overrides.items():  # placeholder data folders: tiny synthetic ones
        if isinstance(value, str) and value.startswith("/data/"):
            if key.endswith(".root"):
                overrides[key] = str(write_musan(tmp_path / "musan"))
            elif key.endswith(".folder"):
                overrides[key] = str(write_rirs(tmp_path / "rirs"))
    chain = load_chain(chain_path, overrides)
    assert len(chain.stages) >= 1
