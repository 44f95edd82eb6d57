"""Synthetic two-photon calcium-imaging videos (``T x Y x X``) with a known ground truth.

Made for the tests and the demo of the AI4Life Calcium Imaging Denoising Challenge 2025 (CIDC25)
track, whose inputs are int16 two-photon videos of neurons. The expected photon count ``lam`` of
every pixel and frame is::

    lam(t, y, x) = peak * b(t) * [ sum_n F0_n m_n(y, x) (1 + dff_n(t))  +  neuropil * S(y, x) (1 + c a(t)) ]

and the detector turns it into counts (``gain`` counts per photon, read noise in counts)::

    noisy = clip(round(gain * Poisson(lam) + N(0, read_noise**2) + offset), -32768, 32767)   (int16)
    clean = gain * lam + offset                                                                (float32)

so ``clean`` is the expectation of ``noisy`` (up to rounding) in the same units, and
``Var(noisy - clean) = gain * (clean - offset) + read_noise**2 + 1/12`` (the last term is rounding).

Model, with the default values (typical of GCaMP6s in mouse cortex, 30 Hz resonant scanning):

* **neurons** ``m_n``: ``n_neurons`` somata (default: one per 1500 px of field of view, i.e. 44 in
  256 x 256), soft-edged ellipses with radius ``radius`` = 4-8 px (a 10-15 um soma at 1-2 um per
  pixel), axis ratio up to 1.3, random orientation, edge softened over ~2 px (the two-photon PSF
  and the out-of-focus part of the soma). ``m_n`` is 1 inside and falls to 0 over the edge.
  Centres are placed by random sequential adsorption: a candidate is kept only if the circle
  around its long axis overlaps no kept neuron's, so neighbouring cells may touch (their soft
  edges overlap) but their cores (``m_n > 0.5``) never do.
* **baseline** ``F0_n``: uniform in [0.3, 1] of the brightest one (GCaMP expression varies from
  cell to cell); ``peak`` is the expected photon count at the centre of the brightest neuron at
  rest (default 20, a low-SNR two-photon recording: a few to tens of photons per pixel and frame).
* **activity** ``dff_n``: a Poisson spike train per neuron (mean rate ``spike_rate`` = 0.5 Hz,
  each neuron's own rate uniform in [0.5, 1.5] x that: sparse cortical firing) convolved with the
  GCaMP kernel ``h(t) = (1 - exp(-t / tau_rise)) exp(-t / tau_decay)``, normalised to a maximum of
  1, ``tau_rise`` = 50 ms and ``tau_decay`` = 1 s (GCaMP6s; about 0.3-0.5 s for GCaMP6f or 8f).
  Each neuron's dF/F per spike is uniform in ``amplitude`` = (0.5, 2). A spike falls at a uniform
  moment inside its frame, so ``h`` is sampled half a frame after the frame's start: the spike's
  own frame already shows a third of the rise and the peak comes ``tau_rise ln(1 + tau_decay /
  tau_rise)`` (150 ms, 4-5 frames) later. The recording starts with every neuron at rest.
* **neuropil** ``S``: white noise low-pass filtered with a Gaussian of sigma 16 px (neuropil varies
  over tens of um, more than a soma), rescaled to [0.5, 1]; its level ``neuropil`` = 0.15 of the
  brightest soma at rest is weak on purpose (real neuropil is often brighter; it is there to be
  a smooth, structured background, not to dominate). It fluctuates slowly with the population:
  ``a(t)`` is the mean dF/F of the neurons low-pass filtered with a Gaussian of 1 s, and the
  coupling ``c`` = ``neuropil_coupling`` = 0.5 (neuropil is axons and dendrites of the same
  circuit, so its dF/F follows the population's, diluted).
* **drift** ``b(t) = (1 - bleaching) ** (t / (T - 1))``: exponential photobleaching that loses
  ``bleaching`` = 10 % of the signal by the last frame (a long time constant compared with the
  transients; it multiplies neurons and neuropil alike, as it acts on all fluorophores).
* **detector**: Poisson shot noise on the photons, then ``gain`` = 1 count per photon (real PMT
  digitisers give tens), Gaussian read noise ``read_noise`` = 2 counts, ``offset`` = 100 counts,
  rounded and clipped to int16. Two-photon systems often store offset-subtracted data, where
  dark pixels go below zero: ``offset=0`` reproduces that, and int16 keeps the negative values.

Randomness comes from one ``np.random.SeedSequence`` split into independent streams for the
layout (positions, shapes, brightness), the spikes, the neuropil and the noise, so that changing
the noise level does not move the neurons, and the same seed gives identical videos. Only numpy
and scipy are used and every step is vectorised over pixels (a 500 x 256 x 256 video takes a few
seconds). A dataset of such videos on disk is :func:`simulate_calcium_dataset`.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy import signal

from ai4life_kit.errors import UserInputError
from ai4life_kit.simulate.dataset import MARKER_FILE, MIN_SIDE, _available_memory, _gib, check_replaceable
from ai4life_kit.simulate.images import DEFAULT_OFFSET, parse_shape

__all__ = [
    "CALCIUM_AXES",
    "CalciumVideo",
    "calcium_kernel",
    "parse_video_shape",
    "simulate_calcium",
    "simulate_calcium_dataset",
]

CALCIUM_AXES = "TYX"
"""Axes of the simulated videos (and of the CIDC25 inputs)."""
_INT16_MIN, _INT16_MAX = -32768, 32767
# Default density of somata: one per this many pixels of field of view (44 in 256 x 256).
_PIXELS_PER_NEURON = 1500
# Width of the soft edge of a soma, in pixels.
_EDGE_PX = 2.0
# Largest axis ratio of the elliptical somata.
_MAX_ELONGATION = 1.3
# Spatial scale of the neuropil (Gaussian sigma, px) and temporal scale of its fluctuation (s).
_NEUROPIL_SIGMA_PX = 16.0
_NEUROPIL_LOWPASS_S = 1.0
# Pixels of noise drawn at once: bounds the int64 Poisson temporaries (32 MiB) whatever the video size.
_NOISE_CHUNK_PIXELS = 2**22
# Peak memory of simulating one video, per pixel: float32 lam/clean, int16 noisy, float32 copy for the
# PSNR, plus the per-neuron masks (counted separately); measured about 14, margin included.
_BYTES_PER_PIXEL = 24


@dataclass(frozen=True)
class CalciumVideo:
    """A simulated calcium-imaging video with everything that made it.

    Attributes
    ----------
    clean
        float32 ``(T, Y, X)``: expected detector counts before noise, ``gain * lam + offset``.
    noisy
        int16 ``(T, Y, X)``: one noisy realisation, in the same units as ``clean``.
    spikes
        int32 ``(N, T)``: number of spikes of each neuron in each frame.
    masks
        float32 ``(N, Y, X)``: footprint of each neuron, 1 inside, soft edge down to 0.
    dff
        float32 ``(N, T)``: the dF/F trace of each neuron (0 at rest).
    baseline
        float32 ``(N,)``: resting brightness ``F0`` relative to the brightest neuron (max 1).
    centers
        float64 ``(N, 2)``: ``(y, x)`` centre of each neuron, in pixels.
    params
        The parameters actually used (JSON-serialisable), defaults resolved.
    """

    clean: np.ndarray
    noisy: np.ndarray
    spikes: np.ndarray
    masks: np.ndarray
    dff: np.ndarray
    baseline: np.ndarray
    centers: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
_SHAPE_HELP = "must be 3 positive integers T,Y,X (e.g. 500,256,256)"


def parse_video_shape(text: str) -> tuple[int, int, int]:
    """Parse ``"T,Y,X"`` (``x`` also accepted as separator) into a validated video shape."""
    try:
        shape = parse_shape(text)
    except UserInputError:
        # Same splitting rules as the image simulator, but an error message about videos.
        raise UserInputError(f"shape {text!r} {_SHAPE_HELP}") from None
    return _check_video_shape(shape, text)


def _check_video_shape(shape: Any, text: str | None = None) -> tuple[int, int, int]:
    shown = repr(text) if text is not None else repr(shape)
    try:
        dims = tuple(int(s) for s in shape)
        integral = all(int(s) == s for s in shape)
    except (TypeError, ValueError):
        raise UserInputError(f"shape {shown} {_SHAPE_HELP}") from None
    if len(dims) != 3 or not integral or any(d < 1 for d in dims):
        raise UserInputError(f"shape {shown} {_SHAPE_HELP}")
    if dims[0] < 2:
        raise UserInputError(f"shape {shown}: a video needs at least T = 2 frames")
    if min(dims[1:]) < MIN_SIDE:
        raise UserInputError(f"shape {shown}: Y and X must be at least {MIN_SIDE} pixels")
    return dims  # type: ignore[return-value]


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise UserInputError(f"{name} {value} must be a positive number")
    return value


def _non_negative(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise UserInputError(f"{name} {value} must be >= 0")
    return value


def _range(name: str, value: Any, minimum: float) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} {value!r} must be a pair (low, high)") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not minimum <= lo <= hi:
        raise UserInputError(f"{name} {value!r} must satisfy {minimum} <= low <= high")
    return lo, hi


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or int(value) != value:
        raise UserInputError(f"{name} {value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise UserInputError(f"{name} {value} must be an integer >= {minimum}")
    return int(value)


def _resolve_params(
    shape: Any,
    *,
    n_neurons: int | None,
    frame_rate: float,
    tau_rise: float,
    tau_decay: float,
    spike_rate: float,
    amplitude: tuple[float, float],
    radius: tuple[float, float],
    peak: float,
    gain: float,
    read_noise: float,
    offset: float,
    neuropil: float,
    neuropil_coupling: float,
    bleaching: float,
) -> dict[str, Any]:
    """Check every parameter of :func:`simulate_calcium`; the JSON-serialisable values, defaults resolved."""
    t_len, height, width = _check_video_shape(shape)
    bleaching = float(bleaching)
    if not math.isfinite(bleaching) or not 0 <= bleaching < 1:
        raise UserInputError(f"bleaching {bleaching} must be in [0, 1)")
    offset = float(offset)
    if not math.isfinite(offset) or not _INT16_MIN <= offset < _INT16_MAX:
        raise UserInputError(f"detector offset {offset} must be in [{_INT16_MIN}, {_INT16_MAX})")
    read_noise = _non_negative("read noise", read_noise)
    if offset - 5 * read_noise < _INT16_MIN:
        # Dark pixels would be clipped at the bottom of int16, biasing the noise: not what a detector is set to.
        raise UserInputError(f"detector offset {offset} with read noise {read_noise} would clip below {_INT16_MIN}")
    if n_neurons is None:
        n_neurons = max(1, round(height * width / _PIXELS_PER_NEURON))
    return {
        "shape": [t_len, height, width],
        "axes": CALCIUM_AXES,
        "n_neurons": _count("number of neurons", n_neurons, 0),
        "frame_rate": _positive("frame rate", frame_rate),
        "tau_rise": _positive("tau_rise", tau_rise),
        "tau_decay": _positive("tau_decay", tau_decay),
        "spike_rate": _non_negative("spike rate", spike_rate),
        "amplitude": list(_range("amplitude", amplitude, 0.0)),
        "radius": list(_range("radius", radius, 1.0)),
        "peak": _positive("peak", peak),
        "gain": _positive("gain", gain),
        "read_noise": read_noise,
        "offset": offset,
        "neuropil": _non_negative("neuropil", neuropil),
        "neuropil_coupling": _non_negative("neuropil coupling", neuropil_coupling),
        "bleaching": bleaching,
    }


def _seed_sequence(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(_count("seed", seed, 0))


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
def calcium_kernel(n_frames: int, frame_rate: float, tau_rise: float, tau_decay: float) -> np.ndarray:
    """The GCaMP response to one spike, sampled at frames ``0 .. n_frames - 1`` after it.

    ``h(t) = (1 - exp(-t / tau_rise)) exp(-t / tau_decay)`` at ``t = (k + 1/2) / frame_rate``
    (a spike falls, on average, half a frame before the middle of its frame), divided by the
    continuous maximum of ``h`` so that an amplitude is the peak dF/F of one spike.

    Parameters
    ----------
    n_frames
        Number of samples.
    frame_rate
        Frames per second.
    tau_rise, tau_decay
        Rise and decay time constants in seconds.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_frames,)``, in ``[0, 1]``.
    """
    t = (np.arange(n_frames) + 0.5) / frame_rate
    return -np.expm1(-t / tau_rise) * np.exp(-t / tau_decay) / _kernel_max(tau_rise, tau_decay)


def _kernel_max(tau_rise: float, tau_decay: float) -> float:
    """Maximum of ``(1 - exp(-t / tau_rise)) exp(-t / tau_decay)``, at ``t = tau_rise ln(1 + tau_decay / tau_rise)``."""
    t_peak = tau_rise * math.log1p(tau_decay / tau_rise)
    return -math.expm1(-t_peak / tau_rise) * math.exp(-t_peak / tau_decay)


def _dff_traces(spikes: np.ndarray, frame_rate: float, tau_rise: float, tau_decay: float) -> np.ndarray:
    """``spikes (N, T)`` convolved with :func:`calcium_kernel`, exactly and in O(N T).

    The kernel is a difference of two exponentials, ``exp(-t / tau_decay) - exp(-t / tau_fast)``
    with ``1 / tau_fast = 1 / tau_rise + 1 / tau_decay``, and each exponential is a first-order
    recursive filter: no truncation of the long decay and no FFT round-off below zero.
    """
    tau_fast = 1.0 / (1.0 / tau_rise + 1.0 / tau_decay)
    dt = 1.0 / frame_rate
    out = np.zeros(spikes.shape, np.float64)
    if out.size == 0:  # no neurons
        return out
    x = spikes.astype(np.float64)
    for tau, sign in ((tau_decay, 1.0), (tau_fast, -1.0)):
        decay = math.exp(-dt / tau)
        # y[t] = x[t] + decay * y[t-1] is the sum over past spikes of decay**(t - s); the half-frame
        # shift of the sampling times is the constant factor exp(-dt / (2 tau)).
        out += sign * math.exp(-0.5 * dt / tau) * signal.lfilter([1.0], [1.0, -decay], x, axis=1)
    return np.clip(out / _kernel_max(tau_rise, tau_decay), 0.0, None)


def _place_neurons(
    yx: tuple[int, int], n: int, radius: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres ``(n, 2)``, radii ``(n,)`` and axis ratios ``(n,)`` by random sequential adsorption.

    Two neurons are at least the sum of their semi-major axes apart: their cores cannot overlap.
    """
    height, width = yx
    # A soma larger than a quarter of the field would not leave room for others (tiny test videos).
    cap = max(1.0, min(yx) / 4)
    lo, hi = min(radius[0], cap), min(radius[1], cap)
    centers = np.zeros((n, 2))
    radii, elongation, reach = np.zeros(n), np.zeros(n), np.zeros(n)
    placed = 0
    # Candidates come in batches (vectorised distance test); 100 per neuron is plenty below the
    # jamming density of random sequential adsorption (~50 % coverage), far above the default 7 %.
    for _ in range(100):
        if placed == n:
            break
        cand_r = rng.uniform(lo, hi, size=4 * n)
        cand_e = rng.uniform(1.0, _MAX_ELONGATION, size=4 * n)
        cand = rng.uniform(0, 1, size=(4 * n, 2)) * np.array([height - 1, width - 1])
        for c, r, e in zip(cand, cand_r, cand_e, strict=True):
            if placed == n:
                break
            d = np.hypot(*(centers[:placed] - c).T)
            a = r * math.sqrt(e)  # semi-major axis of an ellipse with the area of the disc of radius r
            if np.all(d >= reach[:placed] + a):
                centers[placed], radii[placed], elongation[placed], reach[placed] = c, r, e, a
                placed += 1
    if placed < n:
        raise UserInputError(
            f"{n} neurons of radius {lo:g}-{hi:g} px do not fit in {height}x{width} pixels without overlapping "
            f"(placed {placed}): use fewer neurons, a smaller radius or a larger field of view"
        )
    return centers, radii, elongation


def _neuron_masks(
    yx: tuple[int, int], centers: np.ndarray, radii: np.ndarray, elongation: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Soft-edged elliptical footprints ``(N, Y, X)``, 1 inside, smoothstep to 0 over ``_EDGE_PX``."""
    n = len(radii)
    masks = np.zeros((n, *yx), np.float32)
    angle = rng.uniform(0, np.pi, size=n)
    for i in range(n):
        # Semi-axes with the same area as the disc of radius r; computed in the bounding box only.
        a, b = radii[i] * math.sqrt(elongation[i]), radii[i] / math.sqrt(elongation[i])
        reach = a + _EDGE_PX
        lo = np.maximum(np.floor(centers[i] - reach), 0).astype(int)
        hi = np.minimum(np.ceil(centers[i] + reach) + 1, yx).astype(int)
        yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1]]
        dy, dx = yy - centers[i, 0], xx - centers[i, 1]
        u = dy * math.cos(angle[i]) + dx * math.sin(angle[i])
        v = -dy * math.sin(angle[i]) + dx * math.cos(angle[i])
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        # Distance inside the boundary in pixels (approximately, along the local radius) -> [0, 1].
        inside = np.clip((1.0 - rho) * math.sqrt(a * b) / _EDGE_PX + 0.5, 0.0, 1.0)
        masks[i, lo[0] : hi[0], lo[1] : hi[1]] = inside * inside * (3 - 2 * inside)
    return masks


def _neuropil_field(yx: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Spatially smooth field in ``[0.5, 1]``: white noise low-passed over ``_NEUROPIL_SIGMA_PX``."""
    sigma = min(_NEUROPIL_SIGMA_PX, min(yx) / 4)
    smooth = ndi.gaussian_filter(rng.standard_normal(yx), sigma, mode="wrap")
    span = float(smooth.max() - smooth.min())
    unit = (smooth - smooth.min()) / span if span > 0 else np.ones(yx)
    return (0.5 + 0.5 * unit).astype(np.float32)


def _add_detector_noise(
    lam: np.ndarray, rng: np.random.Generator, gain: float, read_noise: float, offset: float
) -> np.ndarray:
    """``clip(round(gain * Poisson(lam) + N(0, read_noise**2) + offset))`` as int16, in frame chunks."""
    noisy = np.empty(lam.shape, np.int16)
    frames = max(1, _NOISE_CHUNK_PIXELS // math.prod(lam.shape[1:]))
    for start in range(0, lam.shape[0], frames):
        part = slice(start, start + frames)
        counts = rng.poisson(lam[part]).astype(np.float32)
        counts *= np.float32(gain)
        if read_noise > 0:
            counts += rng.standard_normal(counts.shape, dtype=np.float32) * np.float32(read_noise)
        counts += np.float32(offset)
        noisy[part] = np.clip(np.rint(counts), _INT16_MIN, _INT16_MAX)
    return noisy


def simulate_calcium(
    shape: tuple[int, int, int] = (500, 256, 256),
    n_neurons: int | None = None,
    frame_rate: float = 30.0,
    tau_rise: float = 0.05,
    tau_decay: float = 1.0,
    spike_rate: float = 0.5,
    amplitude: tuple[float, float] = (0.5, 2.0),
    radius: tuple[float, float] = (4.0, 8.0),
    peak: float = 20.0,
    gain: float = 1.0,
    read_noise: float = 2.0,
    offset: float = DEFAULT_OFFSET,
    neuropil: float = 0.15,
    neuropil_coupling: float = 0.5,
    bleaching: float = 0.1,
    seed: int | np.random.SeedSequence = 0,
) -> CalciumVideo:
    """Simulate a two-photon calcium-imaging video of neurons with its noise-free expectation.

    The model and the meaning of the defaults are in the module docstring.

    Parameters
    ----------
    shape
        ``(T, Y, X)``: frames (>= 2) and field of view (each side >= 8 px).
    n_neurons
        Number of somata; ``None`` gives one per 1500 px of field of view (at least 1).
    frame_rate
        Frames per second.
    tau_rise, tau_decay
        Rise and decay time constants of the calcium indicator, in seconds.
    spike_rate
        Mean firing rate in Hz (each neuron's rate is uniform in [0.5, 1.5] x this); 0 for no activity.
    amplitude
        Range of the per-neuron peak dF/F of one spike.
    radius
        Range of the soma radii in pixels.
    peak
        Expected photons at the centre of the brightest neuron at rest (sets the SNR).
    gain
        Detector counts per photon.
    read_noise
        Std of the Gaussian read noise, in counts.
    offset
        Detector offset in counts (may be 0 or negative: int16 keeps values below zero).
    neuropil
        Brightness of the neuropil background relative to the brightest soma at rest.
    neuropil_coupling
        How much of the population's (low-passed) mean dF/F the neuropil follows.
    bleaching
        Fraction of the signal lost to photobleaching by the last frame, in ``[0, 1)``.
    seed
        Non-negative integer or a ``numpy.random.SeedSequence``; the same seed gives identical videos.

    Returns
    -------
    CalciumVideo
        ``clean`` (float32), ``noisy`` (int16), ``spikes``, ``masks``, ``dff``, ``baseline``, ``centers``, ``params``.

    Raises
    ------
    UserInputError
        On an impossible parameter, neurons that do not fit, or a video that would saturate int16.
    """
    p = _resolve_params(
        shape,
        n_neurons=n_neurons,
        frame_rate=frame_rate,
        tau_rise=tau_rise,
        tau_decay=tau_decay,
        spike_rate=spike_rate,
        amplitude=amplitude,
        radius=radius,
        peak=peak,
        gain=gain,
        read_noise=read_noise,
        offset=offset,
        neuropil=neuropil,
        neuropil_coupling=neuropil_coupling,
        bleaching=bleaching,
    )
    t_len, height, width = p["shape"]
    yx = (height, width)
    n_neurons, frame_rate, gain, offset = p["n_neurons"], p["frame_rate"], p["gain"], p["offset"]
    _check_memory((t_len, height, width), n_neurons)

    layout_seq, spike_seq, neuropil_seq, noise_seq = _seed_sequence(seed).spawn(4)
    layout_rng = np.random.default_rng(layout_seq)
    spike_rng = np.random.default_rng(spike_seq)

    centers, radii, elongation = _place_neurons(yx, n_neurons, p["radius"], layout_rng)
    masks = _neuron_masks(yx, centers, radii, elongation, layout_rng)
    baseline = layout_rng.uniform(0.3, 1.0, size=n_neurons)
    if n_neurons:
        baseline /= baseline.max()  # so that `peak` is exactly the brightest resting soma
    amplitudes = layout_rng.uniform(*p["amplitude"], size=n_neurons)
    rates = p["spike_rate"] * layout_rng.uniform(0.5, 1.5, size=n_neurons)

    # Drawn as (T, N) so that the first frames' spikes do not depend on the video's length.
    spikes = spike_rng.poisson(rates / frame_rate, size=(t_len, n_neurons)).T.astype(np.int32)
    dff = _dff_traces(spikes, frame_rate, p["tau_rise"], p["tau_decay"]) * amplitudes[:, None]

    # lam = peak b(t) [static + dynamic + neuropil], built in place in one float32 (T, Y, X) buffer.
    flat_masks = masks.reshape(n_neurons, -1)
    static = (baseline.astype(np.float32) @ flat_masks).reshape(yx)
    active = (dff * baseline[:, None]).T.astype(np.float32)  # (T, N): F0_n dff_n(t)
    lam = (active @ flat_masks).reshape(t_len, height, width)
    lam += static
    if p["neuropil"] > 0:
        field_ = _neuropil_field(yx, np.random.default_rng(neuropil_seq)) * np.float32(p["neuropil"])
        mean_dff = dff.mean(axis=0) if n_neurons else np.zeros(t_len)
        population = ndi.gaussian_filter1d(mean_dff, _NEUROPIL_LOWPASS_S * frame_rate, mode="nearest")
        lam += field_ * (1 + p["neuropil_coupling"] * population).astype(np.float32)[:, None, None]
    drift = (1.0 - p["bleaching"]) ** (np.arange(t_len) / (t_len - 1))
    lam *= (p["peak"] * drift).astype(np.float32)[:, None, None]

    top = gain * float(lam.max()) + offset
    if top > 0.9 * _INT16_MAX:
        raise UserInputError(
            f"the brightest expected value {top:.0f} would saturate int16 (max {_INT16_MAX}): "
            "use a lower peak or gain, or fewer or weaker spikes"
        )
    noisy = _add_detector_noise(lam, np.random.default_rng(noise_seq), gain, p["read_noise"], offset)
    lam *= np.float32(gain)
    lam += np.float32(offset)

    params = dict(p)
    if not isinstance(seed, np.random.SeedSequence):
        params["seed"] = int(seed)
    return CalciumVideo(
        clean=lam,
        noisy=noisy,
        spikes=spikes,
        masks=masks,
        dff=dff.astype(np.float32),
        baseline=baseline.astype(np.float32),
        centers=centers,
        params=params,
    )


def _check_memory(shape: tuple[int, int, int], n_neurons: int) -> None:
    """Refuse, before allocating, a video (and its neuron masks) that cannot fit in memory."""
    need = math.prod(shape) * _BYTES_PER_PIXEL + n_neurons * math.prod(shape[1:]) * 4
    available = _available_memory()
    if available is not None and need > available:
        text = "x".join(str(d) for d in shape)
        raise UserInputError(
            f"simulating a {text} video needs about {_gib(need)} of memory and {_gib(available)} is available: "
            "choose a smaller --shape"
        )


# ---------------------------------------------------------------------------------------------
# dataset on disk
# ---------------------------------------------------------------------------------------------
def simulate_calcium_dataset(
    out_dir: Path,
    n: int = 1,
    shape: tuple[int, int, int] = (500, 256, 256),
    seed: int = 0,
    overwrite: bool = False,
    **params: Any,
) -> dict[str, Any]:
    """Write ``n`` simulated calcium videos with their ground truth under ``out_dir``.

    Layout (as :func:`~ai4life_kit.simulate.dataset.simulate_dataset`, so ``evaluate`` pairs them)::

        out_dir/gt/img_000.tif       float32, TYX, the clean video (same units as noisy)
        out_dir/noisy/img_000.tif    int16, TYX, as the CIDC25 inputs
        out_dir/simulation.json      parameters (with "kind": "calcium") and input PSNR

    Video ``i`` uses the ``i``-th child of ``SeedSequence(seed)``, so the first video is the
    same whatever ``n`` is. The folder is written under a temporary name and renamed when
    complete; ``overwrite`` only replaces a folder that a simulation wrote.

    Parameters
    ----------
    out_dir
        Output folder; must be empty or absent unless ``overwrite``.
    n
        Number of videos (>= 1).
    shape
        ``(T, Y, X)``.
    seed
        Non-negative integer; the same seed gives byte-identical files.
    overwrite
        Replace an existing simulation folder.
    **params
        Any other keyword of :func:`simulate_calcium` (``n_neurons``, ``peak``, ``read_noise``, ...).

    Returns
    -------
    dict
        ``out_dir``, ``axes``, lists of paths ``gt`` and ``noisy``, ``input_psnr`` (PSNR of each
        noisy video against its clean one, data range of the clean one) and ``mean_input_psnr``.
    """
    from ai4life_kit.fileio import atomic_folder, check_location, mount_point

    unknown = sorted(set(params) - set(_DEFAULTS))
    if unknown:
        raise UserInputError(f"unknown calcium simulation parameter(s): {', '.join(unknown)}")
    # Every parameter is checked before the folder is created: a bad value is one error line, no output.
    resolved = _resolve_params(shape, **{**_DEFAULTS, **params})
    shape = tuple(resolved["shape"])
    n = _count("number of videos", n, 1)
    seed = _count("seed", seed, 0)
    out_dir = Path(out_dir)
    check_location(out_dir, folder=True)
    _check_memory(shape, resolved["n_neurons"])
    need_disk = n * math.prod(shape) * (4 + 2)  # float32 clean, int16 noisy
    free = shutil.disk_usage(mount_point(out_dir)).free
    if need_disk > free:
        raise UserInputError(
            f"{n} simulated {'x'.join(map(str, shape))} video(s) need {_gib(need_disk)} on {mount_point(out_dir)} "
            f"and {_gib(free)} is free: choose a smaller --shape or --n, or another folder"
        )
    check_replaceable(out_dir, overwrite)
    # Written under a temporary name and renamed when complete: a failure, Ctrl-C or kill leaves no
    # half-made folder (and, with overwrite, the old simulation in place).
    with atomic_folder(out_dir, overwrite=True) as staging:
        result = _simulate_calcium_into(staging, out_dir, n, shape, seed, params)
    return result


def _simulate_calcium_into(
    staging: Path, out_dir: Path, n: int, shape: tuple[int, int, int], seed: int, params: dict[str, Any]
) -> dict[str, Any]:
    """Write the videos and ``simulation.json`` into ``staging``; paths in the result name ``out_dir``."""
    from ai4life_kit.data.tiff_io import write_image
    from ai4life_kit.fileio import atomic_write_text
    from ai4life_kit.metrics import psnr

    result: dict[str, Any] = {"out_dir": out_dir, "axes": CALCIUM_AXES, "gt": [], "noisy": [], "input_psnr": []}
    used: dict[str, Any] = {}
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        name = f"img_{i:03d}.tif"
        video = simulate_calcium(shape, seed=child, **params)
        used = video.params
        write_image(staging / "gt" / name, video.clean, CALCIUM_AXES)
        write_image(staging / "noisy" / name, video.noisy, CALCIUM_AXES, dtype=np.int16)
        result["gt"].append(out_dir / "gt" / name)
        result["noisy"].append(out_dir / "noisy" / name)
        result["input_psnr"].append(float(psnr(video.clean, video.noisy)))
    result["mean_input_psnr"] = float(np.mean(result["input_psnr"]))
    parameters = {"kind": "calcium", **used, "n": n, "seed": seed}
    summary = {"parameters": parameters, "complete": True, "input_psnr": result["input_psnr"]}
    summary["mean_input_psnr"] = result["mean_input_psnr"]
    atomic_write_text(staging / MARKER_FILE, json.dumps(summary, indent=2))
    return result


# The keyword defaults of simulate_calcium (all but shape and seed): what **params may name.
_DEFAULTS: dict[str, Any] = {
    name: prm.default
    for name, prm in inspect.signature(simulate_calcium).parameters.items()
    if name not in ("shape", "seed")
}
