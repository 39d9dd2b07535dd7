"""The data layer: protocols, audio, validation, datasets and loaders."""

from dpda.data.errors import AudioValidationError, ProtocolError
from dpda.data.records import BONAFIDE, SPOOF, Utterance

__all__ = ["BONAFIDE", "SPOOF", "AudioValidationError", "ProtocolError", "Utterance"]
