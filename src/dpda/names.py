"""The names a config, the command line and the library accept, each defined once here.

Torch-free, so that ``dpda --version`` and ``dpda --help`` start fast. Each is a ``Literal``
type for annotations and config checking, and the tuple of its values (``get_args``) for
``choices=`` and error messages.
"""

from __future__ import annotations

from typing import Literal, get_args

ProtocolKind = Literal["asvspoof2019", "asvspoof2021", "asvspoof5", "in_the_wild", "for", "csv", "folder"]
#: Protocol formats ``dpda.data.read_protocol`` reads.
PROTOCOL_KINDS: tuple[str, ...] = get_args(ProtocolKind)
#: What a config's data set may name: a protocol format, or the built-in corpus (ASVspoof 2019 form).
DATASET_KINDS: tuple[str, ...] = (*PROTOCOL_KINDS, "builtin")

CropPolicy = Literal["head", "random", "full"]
CROP_POLICIES: tuple[str, ...] = get_args(CropPolicy)

Mode = Literal["joint", "split", "concat"]
MODES: tuple[str, ...] = get_args(Mode)

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

ScoreKind = Literal["logit_diff", "bonafide_logit"]
SCORE_KINDS: tuple[str, ...] = get_args(ScoreKind)

AugmentOrder = Literal["crop_then_augment", "augment_then_crop"]
AUGMENT_ORDERS: tuple[str, ...] = get_args(AugmentOrder)

Directions = Literal["filter", "gradients"]
DIRECTIONS: tuple[str, ...] = get_args(Directions)
