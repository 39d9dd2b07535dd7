"""The data layer: protocols, audio, validation, datasets and loaders."""

from dpda.data.audio import PAPER_LENGTH, SAMPLE_RATE, fit_length, load_audio
from dpda.data.dataset import AudioDataset, ResumableLoader, ResumableSampler
from dpda.data.errors import AudioValidationError, ProtocolError
from dpda.data.protocols import PROTOCOL_KINDS, read_protocol, read_trial_list
from dpda.data.records import BONAFIDE, SPOOF, Utterance
from dpda.data.validate import ValidationReport, validate

__all__ = [
    "BONAFIDE",
    "PAPER_LENGTH",
    "PROTOCOL_KINDS",
    "SAMPLE_RATE",
    "SPOOF",
    "AudioDataset",
    "AudioValidationError",
    "ProtocolError",
    "ResumableLoader",
    "ResumableSampler",
    "Utterance",
    "ValidationReport",
    "fit_length",
    "load_audio",
    "read_protocol",
    "read_trial_list",
    "validate",
]
