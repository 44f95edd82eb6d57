"""The Laplace distribution of probabilistic restoration (Weigert et al. 2018, CSBDeep).

A probabilistic network predicts, per pixel, the location ``mu`` and the scale ``b`` of a
Laplace distribution, ``p(y) = exp(-|y - mu| / b) / (2 b)``. Training minimises its negative
log-likelihood; prediction turns the scale into central intervals, and evaluation checks how
often the truth falls inside them (coverage).
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import torch

__all__ = [
    "LEVELS",
    "laplace_nll",
    "FAMILIES",
    "interval_halfwidth",
    "expected_abs_error",
    "coverage",
    "reliability",
    "calibration",
    "ensemble_disagreement",
    "ensemble_scale",
]

# The central intervals whose coverage the kit reports.
LEVELS = (0.5, 0.9)


def laplace_nll(mean: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``y`` under Laplace(``mean``, ``scale``).

    ``|y - mu| / b + log(2 b)`` averaged over every element: the loss CSBDeep's probabilistic
    CARE trains with, including its constant ``log 2`` so the value is the true NLL.
    """
    return ((y - mean).abs() / scale + torch.log(2 * scale)).mean()


FAMILIES = ("laplace", "normal")
"""What an uncertainty map holds: a Laplace scale ``b`` (probabilistic networks) or a normal
standard deviation (the spread of a deterministic ensemble's members)."""


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"uncertainty family {family!r}: one of {', '.join(FAMILIES)}")


def interval_halfwidth(scale: np.ndarray | float, level: float, family: str = "laplace") -> np.ndarray | float:
    """Half-width of the central interval holding ``level`` of the distribution's mass.

    Laplace: ``b * ln(1 / (1 - level))``, since ``P(|Y - mu| <= t) = 1 - exp(-t / b)``; the 50 %
    interval is ``mu +- b ln 2`` and the 90 % one ``mu +- b ln 10``. Normal: ``sigma *
    Phi^-1((1 + level) / 2)`` (``+-0.674 sigma`` and ``+-1.645 sigma``).
    """
    if not 0 < level < 1:
        raise ValueError(f"interval level must be between 0 and 1, got {level}")
    _check_family(family)
    if family == "normal":
        return scale * statistics.NormalDist().inv_cdf((1 + level) / 2)
    return scale * math.log(1 / (1 - level))


def expected_abs_error(scale: np.ndarray | float, family: str = "laplace") -> np.ndarray | float:
    """``E|Y - mu|``: ``b`` for a Laplace, ``sigma sqrt(2 / pi)`` for a normal distribution."""
    _check_family(family)
    return scale * math.sqrt(2 / math.pi) if family == "normal" else scale


def coverage(truth: np.ndarray, mean: np.ndarray, scale: np.ndarray, level: float, family: str = "laplace") -> float:
    """Share of ``truth`` pixels inside the predicted central ``level`` intervals (nominal: ``level``)."""
    half = interval_halfwidth(np.asarray(scale, np.float64), level, family)
    return float(np.mean(np.abs(np.asarray(truth, np.float64) - np.asarray(mean, np.float64)) <= half))


def reliability(scale: np.ndarray, error: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Pixels binned by predicted scale (equal-count bins): mean scale and mean absolute error per bin.

    A calibrated Laplace has ``E|error| = b`` in every bin: the points lie on the diagonal.
    """
    scale, error = np.ravel(scale), np.ravel(error)
    edges = np.quantile(scale, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, scale, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    sum_b = np.bincount(which, weights=scale, minlength=bins)
    sum_e = np.bincount(which, weights=error, minlength=bins)
    return [
        {"mean_b": float(sum_b[k] / counts[k]), "mean_abs_error": float(sum_e[k] / counts[k]), "pixels": int(counts[k])}
        for k in range(bins)
        if counts[k]
    ]


def calibration(
    truth: np.ndarray, mean: np.ndarray, scale: np.ndarray, bins: int = 10, family: str = "laplace"
) -> dict[str, object]:
    """How honest predicted scales (Laplace ``b``, or normal ``sigma``: ``family``) are about the errors.

    Returns
    -------
    dict
        ``coverage50`` / ``coverage90`` (nominal 0.5 / 0.9), ``spearman`` (rank correlation of
        the scale with the absolute error: does the map point at the errors?),
        ``error_over_scale`` (mean |error| / mean predicted |error|, :func:`expected_abs_error`;
        1 when calibrated, and the factor that would calibrate the scales on average), and
        ``reliability`` (:func:`reliability` of the predicted mean |error|).
    """
    from scipy.stats import spearmanr

    truth, mean, scale = (np.asarray(a, np.float64).ravel() for a in (truth, mean, scale))
    error = np.abs(truth - mean)
    out: dict[str, object] = {
        f"coverage{round(level * 100)}": coverage(truth, mean, scale, level, family) for level in LEVELS
    }
    predicted = expected_abs_error(scale, family)
    out["family"] = family
    out["spearman"] = float(spearmanr(scale, error).statistic)
    out["error_over_scale"] = float(error.mean() / predicted.mean())
    out["pixels"] = int(error.size)
    out["reliability"] = reliability(predicted, error, bins)
    return out


# -- ensembles of probabilistic networks ------------------------------------------------------

# Quadrature of the mixture's entropy. The integrand is smooth between member means (no member has
# its kink there) and decays away from each mean like exp(-|y - mu_k| / b_k): each half of every gap
# between sorted means is cut, from its mean outwards, at 0.5, 1.5, 3.5, ... 31.5 scales of that
# mean's member (pieces that double in width, as the decay flattens) with Gauss-Legendre on each
# piece; the two tails are cut the same way, and beyond their last edge Gauss-Laguerre takes over.
# Against brute-force integration: within 1e-6 bits (tests/test_ensemble.py), members 0.1 to 300
# scales apart, scales 0.1 to 5 mixed.
_PIECE_EDGES = np.array([0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, np.inf])
_LEGENDRE_NODES = 6
_LAGUERRE_NODES = 16
_PIXELS_PER_CHUNK = 8192


def _log_mixture(y: np.ndarray, means: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``ln p_bar(y)`` of the equal-weight Laplace mixture, for ``y`` of shape ``(Q, N)`` and members ``(K, N)``."""
    logp = -np.abs(y[None] - means[:, None]) / scales[:, None] - np.log(2 * scales)[:, None]  # (K, Q, N)
    top = logp.max(axis=0)
    return top + np.log(np.exp(logp - top).mean(axis=0))


def _mixture_entropy(means: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``H(p_bar) = -int p_bar ln p_bar`` (nats) per pixel, members ``(K, N)``."""
    k = means.shape[0]
    order = np.argsort(means, axis=0)
    m, b = np.take_along_axis(means, order, axis=0), np.take_along_axis(scales, order, axis=0)
    x, wx = np.polynomial.legendre.leggauss(_LEGENDRE_NODES)
    x, wx = ((x + 1) / 2)[:, None], (wx / 2)[:, None]  # on [0, 1]
    t, wt = np.polynomial.laguerre.laggauss(_LAGUERRE_NODES)
    t, wt = t[:, None], (wt * np.exp(t))[:, None]  # int_0^inf f = int e^-t (e^t f) dt
    widest = scales.max(axis=0)  # the slowest decay, far out in the tails
    ys, ws = [], []
    halves = [(m[i], b[i], 1.0, (m[i + 1] - m[i]) / 2) for i in range(k - 1)]
    halves += [(m[i + 1], b[i + 1], -1.0, (m[i + 1] - m[i]) / 2) for i in range(k - 1)]
    halves += [(m[0], b[0], -1.0, np.inf), (m[-1], b[-1], 1.0, np.inf)]  # the tails
    for start, tau, sign, half in halves:
        edges = np.minimum(half, tau * _PIECE_EDGES[:, None])  # (pieces + 1, N), empty pieces weigh 0
        for lo, hi in itertools.pairwise(edges[:-1]):
            ys.append(start + sign * (lo + x * (hi - lo)))
            ws.append(wx * (hi - lo))
        if np.isinf(half).all():  # a tail: beyond the last edge, Gauss-Laguerre
            ys.append(start + sign * (edges[-2] + t * widest))
            ws.append(wt * widest)
        else:
            lo, hi = edges[-2], edges[-1]
            ys.append(start + sign * (lo + x * (hi - lo)))
            ws.append(wx * (hi - lo))
    y, w = np.concatenate(ys), np.concatenate(ws)
    logp = _log_mixture(y, means, scales)
    return -(w * np.exp(logp) * logp).sum(axis=0)


def ensemble_disagreement(means: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Per-pixel disagreement ``D`` (bits) of K Laplace predictions, members along axis 0.

    ``D = 1/K sum_k KL(p_k || p_bar)`` with ``p_bar = 1/K sum_k p_k`` the ensemble's mixture: the
    generalised Jensen-Shannon divergence, which equals ``H(p_bar) - 1/K sum_k H(p_k)``. It is 0
    where the members predict the same distribution and at most ``log2 K`` bits where they do not
    overlap at all. This is how we read the ensemble disagreement of Weigert et al., "Content-aware
    image restoration", Nature Methods 15, 1090 (2018) (the average KL divergence of each member's
    distribution from the ensemble's, in bits); we could not re-check the paper's exact formula
    offline, so the definition above is the contract.

    ``H(p_k) = 1 + ln(2 b_k)`` is closed form; ``H(p_bar)`` is integrated numerically
    (:func:`_mixture_entropy`).
    """
    means = np.asarray(means, np.float64)
    scales = np.asarray(scales, np.float64)
    if means.shape != scales.shape or means.ndim < 1 or means.shape[0] < 2:
        raise ValueError(f"need K >= 2 members of equal shapes, got means {means.shape}, scales {scales.shape}")
    k, shape = means.shape[0], means.shape[1:]
    mu, b = means.reshape(k, -1), scales.reshape(k, -1)
    out = np.empty(mu.shape[1], np.float64)
    for start in range(0, mu.shape[1], _PIXELS_PER_CHUNK):
        part = slice(start, start + _PIXELS_PER_CHUNK)
        h_members = (1 + np.log(2 * b[:, part])).mean(axis=0)
        out[part] = np.maximum(_mixture_entropy(mu[:, part], b[:, part]) - h_members, 0.0) / math.log(2)
    return out.reshape(shape).astype(np.float32)


def ensemble_scale(means: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The Laplace scale with the mixture's mean absolute deviation about the ensemble mean.

    ``b_ens = 1/K sum_k (|d_k| + b_k exp(-|d_k| / b_k))``, ``d_k = mu_k - mu_bar``, since
    ``E|Y - c| = |mu - c| + b exp(-|mu - c| / b)`` for ``Y ~ Laplace(mu, b)``: the members' own
    uncertainty plus their disagreement, in the same units and with the same interval rule as a
    single network's scale (what calibration checks).
    """
    means = np.asarray(means, np.float64)
    scales = np.asarray(scales, np.float64)
    d = np.abs(means - means.mean(axis=0))
    return (d + scales * np.exp(-d / scales)).mean(axis=0).astype(np.float32)
