"""Batched augmentations on the device of the batch (RawBoost, noise, reverberation, codecs, ...)."""

from dpda.augment.base import Augmentation, Augmented

__all__ = ["Augmentation", "Augmented"]
