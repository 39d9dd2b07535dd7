"""RawBoost (Tak et al., ICASSP 2022) on a whole batch on its device, with the random model of the
paper's ``RawBoost.py``: every utterance draws its own filters, noise level and impulse positions.

The three noises:
  LnL  linear and non-linear convolutive noise: powers 1..``n_orders`` of the signal, each through
       its own cascade of ``n_bands`` random band-stop FIR filters, summed, mean removed;
  ISD  impulsive signal-dependent noise: a random ``[0, max_isd_percent)`` % of the samples are
       multiplied by ``1 + isd_gain * u1 * u2`` with ``u1, u2 ~ U[-1, 1)``;
  SSI  stationary signal-independent noise: white Gaussian noise through a random band-stop
       cascade, added at an SNR drawn from ``[min_snr_db, max_snr_db]`` (relative to the stage input).
LnL and ISD end, like the reference, by dividing the output by its peak when the peak exceeds 1.

Filtering is FFT convolution in overlapping blocks (overlap-save) over the batch and the orders,
so that a random filter's response is needed on one short block's bins only. The output
alignment is the reference's: its FIR filters are symmetric (zero phase after a delay of
``(L - 1) / 2``) and it keeps the causal output from sample ``(L + 1) / 2`` on, so the result is
the zero-phase filtered signal advanced by one sample. That shift is kept: it is immaterial for
augmentation but makes outputs comparable with the reference's sample by sample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dpda.augment.base import Augmentation, Augmented, check_batch
from dpda.augment.ops import working_dtype

#: The algorithms, numbered as in the paper and its code.
ALGORITHMS: dict[int, str] = {
    1: "LnL convolutive noise",
    2: "ISD impulsive signal-dependent noise",
    3: "SSI stationary coloured additive noise",
    4: "LnL, ISD, SSI in series",
    5: "LnL, ISD in series",
    6: "LnL, SSI in series",
    7: "ISD, SSI in series",
    8: "LnL and ISD in parallel (summed, peak-limited)",
}
_SERIES: dict[int, tuple[str, ...]] = {
    1: ("lnl",),
    2: ("isd",),
    3: ("ssi",),
    4: ("lnl", "isd", "ssi"),
    5: ("lnl", "isd"),
    6: ("lnl", "ssi"),
    7: ("isd", "ssi"),
}

#: Points of ``scipy.signal.freqz``'s default grid (0 to Nyquist, Nyquist excluded): the reference
#: scales each filter cascade to its peak gain on this grid.
FREQZ_POINTS = 512

#: How far the reference keeps band edges inside (0, Nyquist), in Hz.
_EDGE_MARGIN_HZ = 1e-3


def bandstop_taps(low: Tensor, high: Tensor, taps: Tensor, length: int) -> Tensor:
    """Hamming-windowed-sinc band-stop FIR filters, as ``scipy.signal.firwin(taps, [low, high],
    window="hamming")`` designs them (cutoffs as fractions of Nyquist, DC gain 1), in torch so that
    a whole batch of designs runs on the device.

    ``low``, ``high`` and ``taps`` (odd counts) share a shape S; the result is (*S, length) with each
    filter centred in ``length`` (odd, >= every count) samples, so filters of different lengths
    stack with a common zero-phase centre.
    """
    half = (length - 1) // 2
    m = torch.arange(-half, half + 1, device=low.device, dtype=low.dtype)
    low, high = low[..., None], high[..., None]
    alpha = ((taps - 1) / 2).to(low.dtype)[..., None]
    ideal = low * torch.sinc(low * m) + torch.sinc(m) - high * torch.sinc(high * m)
    window = 0.54 + 0.46 * torch.cos(torch.pi * m / alpha.clamp_min(1))  # a one-tap window is 1
    h = torch.where(m.abs() <= alpha, ideal * window, 0)
    dc = h.sum(-1, keepdim=True)  # firwin scales the gain at DC to 1 (a zero there stays unscaled)
    return h / torch.where(dc == 0, 1, dc)


def _peak(x: Tensor) -> Tensor:
    """Per-row max |x| (B, 1), without forming |x| (torch's abs of a whole batch is slow on CPU)."""
    return torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg())


def _limit_peak_(y: Tensor) -> Tensor:
    """Divide each row, in place, by its peak where the peak exceeds 1 (the reference's final
    normalisation of LnL and ISD)."""
    return y.div_(_peak(y).clamp_min(1))


def _norm(x: Tensor) -> Tensor:
    """Per-row L2 norm (B, 1), computed on the peak-scaled rows so that it neither overflows nor
    underflows for very loud or very quiet audio."""
    peak = _peak(x).clamp_min(torch.finfo(x.dtype).tiny)
    return peak * (x / peak).norm(dim=-1, keepdim=True)


class RawBoost(Augmentation):
    """RawBoost algorithm ``algo`` (1-8, see ``ALGORITHMS``; 4, all three noises in series, is the
    paper code's default) with the reference's default parameters.

    The keywords and the reference's names (``RawBoost.py``, ``main.py``) for them:

    - ``n_bands`` (nBands): band-stop filters per cascade;
    - ``min_freq``, ``max_freq`` (minF, maxF): range of the band centres, Hz;
    - ``min_bandwidth``, ``max_bandwidth`` (minBW, maxBW): range of the band widths, Hz;
    - ``min_taps``, ``max_taps`` (minCoeff, maxCoeff): FIR length, an integer drawn from
      ``[min_taps, max_taps)`` and made odd by adding 1 to even draws;
    - ``min_gain_db``, ``max_gain_db`` (minG, maxG): peak gain of the order-1 LnL cascade;
    - ``min_bias_db``, ``max_bias_db`` (minBiasLinNonLin, maxBiasLinNonLin): the higher orders'
      peak gain is drawn between ``min_gain_db - min_bias_db`` and ``max_gain_db - max_bias_db``
      (one shift for all orders 2..n_orders, as in the reference, not one per order);
    - ``n_orders`` (N_f): LnL non-linearity orders, the powers 1..n_orders of the signal;
    - ``max_isd_percent`` (P): ISD touches ``floor(T * beta / 100)`` samples, ``beta ~ U[0, P)``;
    - ``isd_gain`` (g_sd): ISD impulse gain;
    - ``min_snr_db``, ``max_snr_db`` (SNRmin, SNRmax): range of the SSI signal-to-noise ratio, dB.

    The SSI filter's gain is not drawn: the noise is rescaled to the drawn SNR, so it would have
    no effect. For a silent utterance SSI adds nothing (an SNR relative to silence would need an
    infinitely quiet noise), and every algorithm leaves silence silent.

    ``augment`` records, per utterance (NaN for the stages ``algo`` does not run):
    ``lnl_center_hz``, ``lnl_bandwidth_hz``, ``lnl_taps`` (B, n_orders, n_bands), ``lnl_gain_db``
    (B, n_orders), ``isd_fraction`` (B,) of samples touched, ``ssi_snr_db`` (B,), and
    ``ssi_center_hz``, ``ssi_bandwidth_hz``, ``ssi_taps`` (B, n_bands).
    """

    name = "rawboost"

    def __init__(
        self,
        algo: int = 4,
        sample_rate: int = 16000,
        *,
        n_bands: int = 5,
        min_freq: float = 20,
        max_freq: float = 8000,
        min_bandwidth: float = 100,
        max_bandwidth: float = 1000,
        min_taps: int = 10,
        max_taps: int = 100,
        min_gain_db: float = 0,
        max_gain_db: float = 0,
        min_bias_db: float = 5,
        max_bias_db: float = 20,
        n_orders: int = 5,
        max_isd_percent: float = 10,
        isd_gain: float = 2,
        min_snr_db: float = 10,
        max_snr_db: float = 40,
    ) -> None:
        super().__init__()
        if algo not in ALGORITHMS:
            raise ValueError(f"RawBoost: algo must be one of 1-8 ({_describe_algorithms()}), got {algo!r}")
        for key, value in (
            ("sample_rate", sample_rate),
            ("n_bands", n_bands),
            ("min_taps", min_taps),
            ("max_taps", max_taps),
            ("n_orders", n_orders),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RawBoost: {key} must be a positive integer, got {value!r}")
        for low_key, low, high_key, high in (
            ("min_freq", min_freq, "max_freq", max_freq),
            ("min_bandwidth", min_bandwidth, "max_bandwidth", max_bandwidth),
            ("min_taps", min_taps, "max_taps", max_taps),
            ("min_gain_db", min_gain_db, "max_gain_db", max_gain_db),
            ("min_bias_db", min_bias_db, "max_bias_db", max_bias_db),
            ("min_snr_db", min_snr_db, "max_snr_db", max_snr_db),
        ):
            if low > high:
                raise ValueError(f"RawBoost: {low_key} must be <= {high_key}, got {low} > {high}")
        for key, hertz in (("min_freq", min_freq), ("min_bandwidth", min_bandwidth)):
            if hertz < 0:
                raise ValueError(f"RawBoost: {key} must be >= 0 Hz, got {hertz}")
        if max_freq > sample_rate / 2:
            raise ValueError(
                f"RawBoost: max_freq must be <= sample_rate / 2 = {sample_rate / 2} Hz (Nyquist), got {max_freq}"
            )
        if not 0 <= max_isd_percent <= 100:
            raise ValueError(f"RawBoost: max_isd_percent must be in [0, 100], got {max_isd_percent}")
        self.algo, self.sample_rate = algo, sample_rate
        self.n_bands, self.min_freq, self.max_freq = n_bands, float(min_freq), float(max_freq)
        self.min_bandwidth, self.max_bandwidth = float(min_bandwidth), float(max_bandwidth)
        self.min_taps, self.max_taps = min_taps, max_taps
        self.min_gain_db, self.max_gain_db = float(min_gain_db), float(max_gain_db)
        self.min_bias_db, self.max_bias_db = float(min_bias_db), float(max_bias_db)
        self.n_orders, self.max_isd_percent, self.isd_gain = n_orders, float(max_isd_percent), float(isd_gain)
        self.min_snr_db, self.max_snr_db = float(min_snr_db), float(max_snr_db)
        # Band filters are centred in band_length taps (the longest draw), so a cascade spans
        # 2 * reach - 1 taps: an output sample depends on the reach - 1 input samples either side,
        # and one more for the one-sample advance. The block size is a multiple of the freqz
        # grid's FFT size, so the grid is a subset of its bins, and 16 reaches long, so that
        # blocks overlap by 1/8 at most. Cascades are designed on design_size bins (no aliasing).
        self.band_length = (max_taps - 1 if max_taps > min_taps else min_taps) | 1
        self.reach = n_bands * (self.band_length - 1) // 2 + 1
        self.design_size = 2 ** math.ceil(math.log2(max(2 * FREQZ_POINTS, 2 * self.reach)))
        self.block_size = 2 ** math.ceil(math.log2(max(2 * FREQZ_POINTS, 16 * self.reach)))

    def extra_repr(self) -> str:
        return f"algo={self.algo} ({ALGORITHMS[self.algo]}), sample_rate={self.sample_rate}"

    def param_names(self) -> tuple[str, ...]:
        """All nine whatever ``algo``: the noises it does not run are NaN."""
        return tuple(self.param_shapes())

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each recorded parameter's shape after the batch dimension."""
        orders, bands = self.n_orders, self.n_bands
        return {
            "lnl_center_hz": (orders, bands),
            "lnl_bandwidth_hz": (orders, bands),
            "lnl_taps": (orders, bands),
            "lnl_gain_db": (orders,),
            "isd_fraction": (),
            "ssi_snr_db": (),
            "ssi_center_hz": (bands,),
            "ssi_bandwidth_hz": (bands,),
            "ssi_taps": (bands,),
        }

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Augmented:
        check_batch(x, generator)
        work = x.to(working_dtype(x))  # FFTs and filter designs need at least float32
        params = {name: work.new_full((len(x), *shape), math.nan) for name, shape in self.param_shapes().items()}
        stages = {"lnl": self._lnl, "isd": self._isd, "ssi": self._ssi}
        if self.algo == 8:
            convolved, lnl_params = self._lnl(work, generator)
            impulsive, isd_params = self._isd(work, generator)
            y = _limit_peak_(convolved + impulsive)
            params |= lnl_params | isd_params
        else:
            y = work
            for stage in _SERIES[self.algo]:
                y, drawn = stages[stage](y, generator)
                params.update(drawn)
        return Augmented(y.to(x.dtype), params)

    # --- the three noises: (B, T) in, (B, T) out with the parameters drawn -----------------

    def _lnl(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        batch, length = x.shape
        orders = self.n_orders
        centre, bandwidth, taps = self._draw_bands((batch, orders), x, generator)
        low = torch.tensor(
            [self.min_gain_db] + [self.min_gain_db - self.min_bias_db] * (orders - 1), device=x.device, dtype=x.dtype
        )
        high = torch.tensor(
            [self.max_gain_db] + [self.max_gain_db - self.max_bias_db] * (orders - 1), device=x.device, dtype=x.dtype
        )
        gain_db = low + (high - low) * self._uniform((batch, orders), x, generator)
        response = self._cascade_response(centre, bandwidth, taps, gain_db)
        # x**k overflows float32 for loud audio: filter (x / a)**k with a = max(peak, 1) and weight
        # order k by a**(k - K). The result is the reference's y / a**K, and limiting its peak at
        # a**-K instead of 1 gives the same output without ever forming y.
        scale = _peak(x).clamp_min(1)
        response = response * scale[..., None] ** torch.arange(1 - orders, 1, device=x.device)[:, None]
        blocks = self._blocks(x / scale)
        power = blocks.contiguous()
        spectrum = torch.fft.rfft(power).mul_(response[:, :1])
        for k in range(1, orders):  # in place: batch-sized temporaries are slow on CPU
            spectrum.addcmul_(torch.fft.rfft(power.mul_(blocks)), response[:, k : k + 1])
        y = self._unblock(spectrum, length)
        y = y.sub_(y.mean(-1, keepdim=True))
        limit = torch.maximum(_peak(y), scale**-orders).clamp_min(torch.finfo(x.dtype).tiny)
        return y.div_(limit), {
            "lnl_center_hz": centre,
            "lnl_bandwidth_hz": bandwidth,
            "lnl_taps": taps.to(x.dtype),
            "lnl_gain_db": gain_db,
        }

    def _isd(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        batch, length = x.shape
        percent = self.max_isd_percent * self._uniform((batch,), x, generator)
        count = (length * percent / 100).floor().long()
        where, touched = _sample_without_replacement(count, length, int(length * self.max_isd_percent / 100), generator)
        u1, u2 = (2 * self._uniform(where.shape, x, generator) - 1 for _ in range(2))
        change = self.isd_gain * x.gather(1, where) * u1 * u2 * touched  # repeated draws add 0
        return _limit_peak_(x.scatter_add(1, where, change)), {"isd_fraction": count / length}

    def _ssi(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        batch, length = x.shape
        noise = torch.randn((batch, length), generator=generator, device=x.device, dtype=x.dtype)
        centre, bandwidth, taps = self._draw_bands((batch,), x, generator)
        response = self._cascade_response(centre, bandwidth, taps, x.new_zeros(batch))
        coloured = self._unblock(torch.fft.rfft(self._blocks(noise)).mul_(response[:, None]), length)
        snr_db = self.min_snr_db + (self.max_snr_db - self.min_snr_db) * self._uniform((batch,), x, generator)
        noise_norm = _norm(x) / 10 ** (snr_db[:, None] / 20)
        coloured_norm = coloured.norm(dim=-1, keepdim=True)  # unit-scale noise: no over- or underflow
        y = torch.addcmul(x, coloured, noise_norm / coloured_norm.clamp_min(torch.finfo(x.dtype).tiny))
        return y, {
            "ssi_snr_db": snr_db,
            "ssi_center_hz": centre,
            "ssi_bandwidth_hz": bandwidth,
            "ssi_taps": taps.to(x.dtype),
        }

    # --- random band-stop cascades and FFT filtering -----------------------------------------

    @staticmethod
    def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)

    def _draw_bands(
        self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Centre (Hz), width (Hz) and odd tap count of ``n_bands`` bands per cascade in ``shape``."""
        shape = (*shape, self.n_bands)
        centre = self.min_freq + (self.max_freq - self.min_freq) * self._uniform(shape, like, generator)
        width = self._uniform(shape, like, generator)
        bandwidth = self.min_bandwidth + (self.max_bandwidth - self.min_bandwidth) * width
        taps = (
            torch.randint(
                self.min_taps, max(self.max_taps, self.min_taps + 1), shape, generator=generator, device=like.device
            )
            | 1
        )
        return centre, bandwidth, taps

    def _cascade_response(self, centre: Tensor, bandwidth: Tensor, taps: Tensor, gain_db: Tensor) -> Tensor:
        """Frequency response (rfft bins of a block) of each cascade of band-stop filters (bands on
        the last dim), scaled to a peak gain of ``gain_db`` on the freqz grid, with the reference's
        one-sample advance."""
        nyquist = self.sample_rate / 2
        low = centre - bandwidth / 2
        high = centre + bandwidth / 2
        low = torch.where(low <= 0, _EDGE_MARGIN_HZ, low) / nyquist
        high = torch.where(high >= nyquist, nyquist - _EDGE_MARGIN_HZ, high) / nyquist
        bands = bandstop_taps(low, high, taps, self.band_length)
        half, size = (self.band_length - 1) // 2, self.design_size
        bands = torch.nn.functional.pad(bands, (0, size - self.band_length)).roll(-half, dims=-1)  # centre at 0
        response = torch.fft.rfft(bands).real.prod(dim=-2)  # symmetric filters: real spectra
        peak = response[..., : size // 2 : size // (2 * FREQZ_POINTS)].abs().amax(-1, keepdim=True)
        response = response * (10 ** (gain_db[..., None] / 20) / peak.clamp_min(torch.finfo(peak.dtype).tiny))
        cascade = torch.fft.irfft(response, n=size).roll(-1, dims=-1)  # tap m at m - 1: the advance
        reach, advanced = self.reach, cascade.new_zeros(*cascade.shape[:-1], self.block_size)
        advanced[..., :reach], advanced[..., -reach:] = cascade[..., :reach], cascade[..., -reach:]
        return torch.fft.rfft(advanced)

    def _blocks(self, x: Tensor) -> Tensor:
        """(B, T) -> (B, n, block_size) overlapping blocks (a view): block j makes the outputs
        from j * hop on, hop = block_size - 2 * reach."""
        hop = self.block_size - 2 * self.reach
        count = -(-x.shape[-1] // hop)
        padded = torch.nn.functional.pad(x, (self.reach, count * hop + self.reach - x.shape[-1]))
        return padded.unfold(-1, self.block_size, hop)

    def _unblock(self, spectrum: Tensor, length: int) -> Tensor:
        """Block spectra (B, n, bins), filtered, back to the (B, length) output."""
        reach = self.reach
        blocks = torch.fft.irfft(spectrum, n=self.block_size)[..., reach : self.block_size - reach]
        return blocks.reshape(len(blocks), -1)[:, :length]


def _sample_without_replacement(
    count: Tensor, length: int, most: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Positions drawn uniformly with replacement (B, m) and the mask of the first ``count[b]``
    distinct ones in each row, ``count <= most``.

    The first occurrences of i.i.d. uniform draws are a sample without replacement, so the masked
    positions are a uniformly random set of exactly ``count`` samples; this costs a few passes
    over the draws, where ranking a random key per sample (topk) sorts the whole batch. Rows that
    saw too few distinct positions (about never for most <= length / 2) draw more; checking that
    waits for the device once.
    """
    batch, device = len(count), count.device
    step = most + most * most // length + 64  # twice the expected repeats, ~most**2 / (2 length)
    draws = torch.empty((batch, 0), dtype=torch.long, device=device)
    while True:
        more = torch.randint(length, (batch, step), generator=generator, device=device)
        draws = torch.cat([draws, more], dim=1)
        order = torch.arange(draws.shape[1], dtype=torch.int32, device=device).expand_as(draws)
        first_draw = torch.full((batch, length), draws.shape[1], dtype=torch.int32, device=device)
        first = first_draw.scatter_reduce_(1, draws, order, "amin").gather(1, draws) == order
        rank = first.cumsum(dim=1)
        if bool((rank[:, -1] >= count).all()):
            return draws, first & (rank <= count[:, None])


def _describe_algorithms() -> str:
    return "; ".join(f"{k}: {name}" for k, name in ALGORITHMS.items())
