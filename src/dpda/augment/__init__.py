"""Batched augmentations on the device of the batch (RawBoost, noise, reverberation, codecs, ...)."""

from dpda.augment.base import Augmentation, Augmented
from dpda.augment.chain import REGISTRY, AugmentationChain, OneOf, build_chain, load_chain
from dpda.augment.channel import BandLimit, Gain, Speed
from dpda.augment.codec import Codec
from dpda.augment.noise import AdditiveNoise
from dpda.augment.rawboost import RawBoost
from dpda.augment.reverb import Reverberation

__all__ = [
    "REGISTRY",
    "AdditiveNoise",
    "Augmentation",
    "AugmentationChain",
    "Augmented",
    "BandLimit",
    "Codec",
    "Gain",
    "OneOf",
    "RawBoost",
    "Reverberation",
    "Speed",
    "build_chain",
    "load_chain",
]
