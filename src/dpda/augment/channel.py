"""Channel effects on the batch's device: band-limiting, speed perturbation and gain."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import Tensor

from dpda.augment.base import Augmentation, Augmented, check_batch
from dpda.augment.ops import apply_by_group, check_list, check_range, crop_or_pad, draw_uniform, working_dtype
from dpda.augment.resample import ROLLOFF, resample

#: Speed factors are realised as fractions with at most this denominator (the resampling ratio).
MAX_SPEED_DENOMINATOR = 100


class BandLimit(Augmentation):
    """Resample down to a drawn rate and back up: the bandwidth of a narrow-band channel.

    ``rates_hz`` are the intermediate sample rates, one drawn per utterance; the band above
    ``cutoff_hz`` (95 % of ``rate / 2``, see ``resample``) is removed, as by a transmission or a
    recording at that rate.
    """

    name = "bandlimit"

    def __init__(self, rates_hz: Sequence[int] = (8000,), sample_rate: int = 16000) -> None:
        super().__init__()
        for rate in check_list("rates_hz", rates_hz, "a list of sample rates in Hz"):
            if not 0 < rate < sample_rate or int(rate) != rate:
                raise ValueError(
                    f"rates_hz: {rate} Hz must be a whole number of Hz below sample_rate {sample_rate} Hz "
                    f"(its cutoff {rate / 2} Hz must be below the input's Nyquist frequency {sample_rate / 2} Hz)"
                )
        self.rates_hz = [int(rate) for rate in rates_hz]
        self.sample_rate = sample_rate

    def param_names(self) -> tuple[str, ...]:
        return ("rate_hz", "cutoff_hz")

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Augmented:
        check_batch(x, generator)
        batch, length = x.shape
        choice = torch.randint(len(self.rates_hz), (batch,), generator=generator, device=x.device)
        rates = torch.tensor(self.rates_hz, device=x.device)[choice]

        def band_limit(index: int, audio: Tensor) -> Tensor:
            narrow = resample(audio, self.sample_rate, self.rates_hz[index])
            return crop_or_pad(resample(narrow, self.rates_hz[index], self.sample_rate), length)

        audio = apply_by_group(x, choice, band_limit)
        return Augmented(audio, {"rate_hz": rates.float(), "cutoff_hz": ROLLOFF * rates.float() / 2})


class Speed(Augmentation):
    """Speed perturbation: play the utterance ``speed`` times faster (pitch and tempo together).

    A factor is realised by resampling with the ratio ``1 / speed`` (as a fraction with a
    denominator up to 100; ``speed`` records the realised factor), so a tone of ``f`` Hz becomes
    ``speed * f`` Hz and the duration ``T / speed``. The result is cut back to T samples: slowed
    utterances lose their end, sped-up ones are zero-padded at the end (silence, not a repeat,
    so no artificial discontinuity).
    """

    name = "speed"

    def __init__(self, factors: Sequence[float] = (0.9, 1.0, 1.1)) -> None:
        super().__init__()
        factors = check_list("factors", factors, "a list of speed factors")
        self.ratios = [Fraction(f).limit_denominator(MAX_SPEED_DENOMINATOR) if math.isfinite(f) else 0 for f in factors]
        if any(ratio <= 0 for ratio in self.ratios):
            raise ValueError(
                f"factors: speed factors must be finite and at least {1 / MAX_SPEED_DENOMINATOR}, got {factors}"
            )

    def param_names(self) -> tuple[str, ...]:
        return ("speed",)

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Augmented:
        check_batch(x, generator)
        batch, length = x.shape
        choice = torch.randint(len(self.ratios), (batch,), generator=generator, device=x.device)
        realised = torch.tensor([float(ratio) for ratio in self.ratios], device=x.device)[choice]

        def perturb(index: int, audio: Tensor) -> Tensor:
            ratio = self.ratios[index]
            return crop_or_pad(resample(audio, ratio.numerator, ratio.denominator), length)

        return Augmented(apply_by_group(x, choice, perturb), {"speed": realised})


class Gain(Augmentation):
    """Multiply each utterance by a gain drawn uniformly in ``gain_db`` (in dB: ``10 ** (g / 20)``)."""

    name = "gain"

    def __init__(self, gain_db: Sequence[float] = (-6.0, 6.0)) -> None:
        super().__init__()
        self.gain_db = check_range("gain_db", gain_db)

    def param_names(self) -> tuple[str, ...]:
        return ("gain_db",)

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Augmented:
        check_batch(x, generator)
        gain_db = draw_uniform(*self.gain_db, x.shape[0], generator, x.device)
        factor = torch.pow(10.0, gain_db / 20).to(working_dtype(x))
        return Augmented((x * factor[:, None]).to(x.dtype), {"gain_db": gain_db})
