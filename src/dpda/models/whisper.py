"""Whisper's encoder as a waveform front-end: (B, T) 16 kHz in, (B, frames, d_model) out.

Whisper (Radford et al., 2022) reads a log-mel spectrogram, which its feature extractor computes
on the CPU in NumPy. Here it is computed in the model, in torch (:class:`WhisperLogMel`), so that
it is batched, runs on the model's device and is differentiable (a gradient reaches the
waveform, as with the wav2vec 2.0 family), with Whisper's exact recipe: 25 ms periodic Hann
window (400 samples), 10 ms hop (160), power spectrum, Slaney-style mel filter bank (0-8 kHz,
80 bins, or 128 for large-v3, as ``num_mel_bins`` says), ``log10`` after a 1e-10 floor, each
utterance's values clamped at its maximum minus 8, then ``(x + 4) / 4``. It matches
``transformers.WhisperFeatureExtractor`` on the frames of the audio (tested to 1e-4).

**30-second padding, avoided by slicing the positions.** Whisper's encoder has 1500 positional
embeddings and transformers' ``WhisperEncoder`` accepts only 3000 mel frames (30 s; audio is
zero-padded to that). :class:`WhisperAudioEncoder` runs the encoder's own modules on the real
number of frames instead and adds the first ``frames`` positional embeddings. What that means,
stated precisely (and tested):

- at 30 s (3000 mel frames) the output is ``WhisperEncoder``'s;
- the log-mel frames of a shorter input are those the feature extractor gives for it (its
  zero padding is reproduced at the end of the audio, so the last frames see zeros there too,
  and the per-utterance maximum is the same);
- the convolution + position stage (``layer=0``) equals the 30-s padded run's on every frame
  but the last (whose receptive field reaches past the audio: zeros here, padding frames there);
- the transformer layers' outputs are *not* those of the padded run: there every frame also
  attends to the ~26 s of padding the model was pre-trained with. Slicing is the usual choice
  for fine-tuning on short audio (about 7.5x less compute at 4 s) and the one taken here; a
  model that needs the padded context's features exactly gets them by padding its input to 30 s.

Frames: ``T // 160`` mel frames, then the stride-2 convolution: ``(T // 160 - 1) // 2 + 1``
encoder frames, **50 frames/s** (20 ms, 320 samples, as wav2vec 2.0); 202 for a 64,600-sample
crop (XLS-R gives 201). At most 30 s (480,000 samples, 1500 frames). The front-end never applies
SpecAugment (``apply_spec_augment`` is refused), never drops encoder layers unless
``encoder_layerdrop`` asks for it, and has no decoder: a Whisper checkpoint's decoder weights are
not loaded.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import WhisperConfig
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperPreTrainedModel

from dpda.models.ssl import SAMPLE_RATE

#: Whisper's STFT: 25 ms window, 10 ms hop at 16 kHz.
N_FFT = 400
HOP = 160
#: Whisper's input: 30 s chunks (its feature extractor zero-pads every input to this length).
CHUNK_SAMPLES = 30 * SAMPLE_RATE
#: The mel filters span 0 Hz to the Nyquist frequency.
F_MAX = SAMPLE_RATE / 2
#: Whisper's dynamic range: values below an utterance's maximum minus this (log10 units) are raised to it.
DYNAMIC_RANGE = 8.0
#: Encoder frames per second: a 10 ms mel hop and the stride-2 second convolution.
FRAME_RATE = SAMPLE_RATE / (HOP * 2)


#: The Slaney mel scale (librosa's default, Whisper's): linear to 1 kHz (15 mel), logarithmic above.
_MEL_PER_HZ = 3.0 / 200.0
_KNEE_HZ, _KNEE_MEL = 1000.0, 15.0
_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    return hz * _MEL_PER_HZ if hz < _KNEE_HZ else _KNEE_MEL + math.log(hz / _KNEE_HZ) / _LOG_STEP


def _mel_to_hz(mel: Tensor) -> Tensor:
    return torch.where(mel >= _KNEE_MEL, _KNEE_HZ * torch.exp(_LOG_STEP * (mel - _KNEE_MEL)), mel / _MEL_PER_HZ)


def slaney_mel_filters(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Triangular mel filters on the Slaney scale with Slaney (area) normalisation, 0 Hz to
    Nyquist: ``(n_mels, n_fft // 2 + 1)`` float64 on the CPU (whatever the default device, so
    that a model built on the meta device gets real values), as ``librosa.filters.mel`` and so
    Whisper compute them."""
    options: dict[str, Any] = {"dtype": torch.float64, "device": "cpu"}
    fft_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, **options)
    edges = _mel_to_hz(torch.linspace(0.0, _hz_to_mel(sample_rate / 2), n_mels + 2, **options))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - lower) / (centre - lower)
    falling = (upper - fft_hz) / (upper - centre)
    triangles = torch.minimum(rising, falling).clamp(min=0.0)
    return triangles * (2.0 / (upper - lower))


class WhisperLogMel(nn.Module):
    """Whisper's log-mel features in torch: ``(B, T)`` waveform -> ``(B, n_mels, T // 160)``.

    The feature extractor zero-pads to 30 s before its centred (reflect-padded) STFT; here only
    ``N_FFT`` zeros are appended (fewer where that would pass 30 s), a prefix of the extractor's
    padded input long enough that the centred STFT's reflection at its end reflects zeros: the
    ``T // 160`` frames of the audio get the extractor's values, and so does each utterance's
    maximum (frames of padding alone are at the 1e-10 floor). Float32, autocast off.
    """

    window: Tensor
    filters: Tensor

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.n_mels = n_mels
        # Not persistent: derived from n_mels, so neither a checkpoint nor a state dict holds them.
        self.register_buffer("window", torch.empty(N_FFT, device="cpu"), persistent=False)
        self.register_buffer("filters", torch.empty(n_mels, N_FFT // 2 + 1, device="cpu"), persistent=False)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """(Re)compute the window and the filters: transformers 5 builds a model on the meta
        device and leaves non-persistent buffers for ``_init_weights`` to fill."""
        self.window.copy_(torch.hann_window(N_FFT, device="cpu"))  # float32, as Whisper
        self.filters.copy_(slaney_mel_filters(self.n_mels).to(self.filters))

    @staticmethod
    def num_frames(samples: int) -> int:
        return samples // HOP

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(x.shape)}")
        frames = self.num_frames(x.shape[1])
        if frames < 1:
            raise ValueError(f"Whisper needs at least {HOP} samples (10 ms) for one frame, got {x.shape[1]}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            padded = F.pad(x.float(), (0, max(0, min(N_FFT, CHUNK_SAMPLES - x.shape[1]))))
            spectrum = torch.stft(
                padded, N_FFT, HOP, window=self.window.float(), center=True, pad_mode="reflect", return_complex=True
            )
            power = torch.view_as_real(spectrum).square().sum(-1)  # |X|^2 without the square root
            log_mel = torch.matmul(self.filters.float(), power).clamp(min=1e-10).log10()
            peak = log_mel.amax(dim=(1, 2), keepdim=True)
            log_mel = torch.maximum(log_mel, peak - DYNAMIC_RANGE)[..., :frames]
            return (log_mel + 4.0) / 4.0


class WhisperAudioEncoder(WhisperPreTrainedModel):
    """Whisper's encoder (transformers' ``WhisperEncoder``, under ``encoder.``) on waveforms, with
    the log-mel computed in torch and the positions sliced to the input's length (module
    docstring). ``forward(input_values (B, T), output_hidden_states)`` returns a
    ``BaseModelOutput``: ``last_hidden_state`` after the encoder's final LayerNorm, and with
    ``output_hidden_states`` the L + 1 states: the convolution + position output, then each
    layer's output (the last one before the final LayerNorm, as transformers 5 records it).

    ``from_pretrained`` reads any Whisper checkpoint (``openai/whisper-small``, a
    ``WhisperModel`` or ``WhisperForConditionalGeneration`` folder: the ``model.`` prefix goes,
    the decoder is left out) or a folder this class saved.
    """

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__(config)
        if getattr(config, "apply_spec_augment", False):
            raise ValueError(
                "apply_spec_augment: dpda's Whisper front-end does not apply SpecAugment (the other front-ends "
                "never mask either); set it false"
            )
        self.encoder = WhisperEncoder(config)
        self.log_mel = WhisperLogMel(config.num_mel_bins)
        # transformers 4's encoder layers take a (required) head mask, 5's do not
        forward = inspect.signature(type(self.encoder.layers[0]).forward).parameters if config.encoder_layers else {}
        self._layer_options = {"layer_head_mask": None} if "layer_head_mask" in forward else {}
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, WhisperLogMel):
            module.reset_buffers()

    @property
    def max_frames(self) -> int:
        return int(self.config.max_source_positions)

    @property
    def hop_samples(self) -> int:
        """Samples per encoder frame: the mel hop times the two convolutions' strides (320)."""
        return HOP * self.encoder.conv1.stride[0] * self.encoder.conv2.stride[0]

    def num_frames(self, samples: int) -> int:
        """Encoder frames of a ``samples``-long input: ``(samples // 160 - 1) // 2 + 1``."""
        return (self.log_mel.num_frames(samples) - 1) // 2 + 1

    def forward(self, input_values: Tensor, output_hidden_states: bool = False, **_: Any) -> BaseModelOutput:
        encoder = self.encoder
        samples = input_values.shape[-1]
        if self.num_frames(samples) > self.max_frames:
            limit = self.max_frames * 2 * HOP
            raise ValueError(
                f"Whisper's encoder takes at most {limit} samples ({limit / SAMPLE_RATE:g} s, {self.max_frames} "
                f"positions), got {samples} ({samples / SAMPLE_RATE:.2f} s); crop the input"
            )
        mel = self.log_mel(input_values).to(encoder.conv1.weight.dtype)
        hidden = F.gelu(encoder.conv1(mel))
        hidden = F.gelu(encoder.conv2(hidden)).transpose(1, 2)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        hidden = F.dropout(hidden, p=encoder.dropout, training=self.training)
        states = [hidden]
        for layer in encoder.layers:
            if not (self.training and encoder.layerdrop > 0 and torch.rand([]) < encoder.layerdrop):
                out = layer(hidden, None, **self._layer_options)
                hidden = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple
            states.append(hidden)
        last = encoder.layer_norm(hidden)
        return BaseModelOutput(last_hidden_state=last, hidden_states=tuple(states) if output_hidden_states else None)
