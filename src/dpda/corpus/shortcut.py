"""The shortcut check: can trivial signal statistics tell bona fide from spoofed utterances?

A logistic regression on duration, RMS level, spectral roll-off, spectral bandwidth and
silence ratio is fitted on train and scored on dev and eval. A corpus whose classes differ in
such statistics (level, padding, bandwidth, length) would let a detector score well without
listening to the speech; its EER must stay near chance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize

from dpda.corpus.signal import SAMPLE_RATE, active_frames
from dpda.evaluate import eer

FEATURES = ("duration_s", "rms_db", "rolloff_hz", "bandwidth_hz", "silence_ratio")
#: The EER below which the corpus is considered to have a shortcut.
MIN_EER = 0.35
_FFT = 512


def features(audio: np.ndarray) -> np.ndarray:
    """The five trivial statistics of one int16 (or float) 16 kHz utterance."""
    x = np.asarray(audio, dtype=np.float64)
    if np.issubdtype(np.asarray(audio).dtype, np.integer):
        x = x / 32768.0
    count = max(1, len(x) // _FFT)
    frames = np.pad(x, (0, max(0, count * _FFT - len(x))))[: count * _FFT].reshape(count, _FFT)
    power = np.abs(np.fft.rfft(frames * np.hanning(_FFT), axis=1)) ** 2
    freqs = np.fft.rfftfreq(_FFT, 1 / SAMPLE_RATE)
    total = power.sum(axis=1) + 1e-20
    rolloff = freqs[np.argmax(np.cumsum(power, axis=1) >= 0.85 * total[:, None], axis=1)]
    centroid = power @ freqs / total
    bandwidth = np.sqrt((power * (freqs[None, :] - centroid[:, None]) ** 2).sum(axis=1) / total)
    weights = total / total.sum()  # loud frames dominate, as in a spectrum of the whole file
    active = active_frames(x, SAMPLE_RATE)
    return np.array(
        [
            len(x) / SAMPLE_RATE,
            10 * np.log10(np.mean(x**2) + 1e-12),
            float(rolloff @ weights),
            float(bandwidth @ weights),
            1.0 - float(active.mean()) if active.size else 1.0,
        ]
    )


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights of an L2-regularised logistic regression on standardised features, with the
    standardisation (mean, scale) to apply to new data."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-12
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    sign = np.where(y == 1, 1.0, -1.0)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        margin = sign * (z @ w)
        value = np.logaddexp(0, -margin).mean() + l2 * w[:-1] @ w[:-1]
        grad = -(z * (sign / (1 + np.exp(margin)))[:, None]).mean(axis=0)
        grad[:-1] += 2 * l2 * w[:-1]
        return value, grad

    result = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B")
    return result.x, mean, scale


def shortcut_check(
    train: tuple[np.ndarray, np.ndarray], tests: Sequence[tuple[str, np.ndarray, np.ndarray]]
) -> dict[str, object]:
    """Fit on ``train`` (features, labels with 1 = bona fide); the EER on each named test set."""
    weights, mean, scale = fit_logistic(*train)
    report: dict[str, object] = {
        "features": list(FEATURES),
        "min_eer": MIN_EER,
        "weights": dict(zip(FEATURES, np.round(weights[:-1], 4).tolist())),
    }
    for name, x, y in tests:
        scores = ((x - mean) / scale) @ weights[:-1] + weights[-1]
        report[f"eer_{name}"] = round(float(eer(scores[y == 1], scores[y == 0])[0]), 4)
    return report
