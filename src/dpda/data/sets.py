"""From a config's data sets to checked records and loaders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from dpda.config import DataSet
from dpda.data import (
    AudioValidationError,
    ProtocolError,
    Utterance,
    read_protocol,
    validate,
)
from dpda.errors import DpdaError
from dpda.paths import file_name_problem


class DataError(DpdaError, ValueError):
    """A data set that cannot be used: unreadable protocol, missing or bad audio, one class only."""


def dataset_root(dataset: DataSet) -> Path:
    """Where the protocol's audio paths start: ``root``, else the built-in corpus' folder (the
    protocol's grandparent), else the protocol's folder (or the protocol itself for folders)."""
    if dataset.root:
        return Path(dataset.root)
    protocol = Path(dataset.protocol)
    if dataset.kind == "builtin":
        return protocol.parent.parent
    return protocol if protocol.is_dir() else protocol.parent


def dataset_name(dataset: DataSet) -> str:
    """The set's label in logs and the name of its score file (``scores/<name>.txt``): a plain
    file name, refused otherwise, since it may come from a checkpoint or run folder of anyone's."""
    if dataset.name is not None:
        problem = file_name_problem(dataset.name)
        if problem is not None:
            raise DataError(f"data set name {dataset.name!r} ({dataset.protocol}): not a plain file name: {problem}")
        return dataset.name
    protocol = Path(dataset.protocol)
    return f"{protocol.parent.parent.name}-{protocol.stem}" if dataset.kind == "builtin" else protocol.stem


def read_dataset(
    dataset: DataSet, role: str, check: str = "header", *, need_both_classes: bool = True, progress: bool = True
) -> list[Utterance]:
    """The protocol's records, with every audio file checked (``check``: header, decode or off)
    before any training starts; errors name the role (train, dev, eval set) and the files."""
    kind = "asvspoof2019" if dataset.kind == "builtin" else dataset.kind
    try:
        records = read_protocol(kind, dataset.protocol, **dataset.options)
    except (ProtocolError, OSError, TypeError, ValueError) as error:
        raise DataError(f"{role} data: {error}") from error
    if not records:
        raise DataError(f"{role} data: {dataset.protocol} lists no utterances")
    labels = Counter(record.label for record in records)
    if need_both_classes and len(labels) < 2:
        only = "bona fide" if 1 in labels else "spoof"
        raise DataError(
            f"{role} data: {dataset.protocol} has only {only} utterances; training and early stopping need both classes"
        )
    if check != "off":
        try:
            validate(records, dataset_root(dataset), decode=check == "decode", progress=progress)
        except AudioValidationError as error:
            raise DataError(f"{role} data: {error}") from error
    return records
