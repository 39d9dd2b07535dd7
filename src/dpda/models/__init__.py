"""Detectors: (B, T) float32 audio at 16 kHz in, ``(embedding, logits)`` out, logits (B, 2) with
index 1 = bona fide. ``build(config)`` makes any of them by name."""

from dpda.models.registry import MODEL_NAMES, UntrustedCodeError, architecture, build, self_contained

__all__ = ["MODEL_NAMES", "UntrustedCodeError", "architecture", "build", "self_contained"]
