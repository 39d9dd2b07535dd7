"""dpda: dual-path data-augmented training with gradient alignment for speech deepfake detection."""

__version__ = "0.1.0"
