"""Per-channel normalisation: statistics computed once over the training data, and the arithmetic.

The arithmetic is what the packages declare and bioimage.io consumers compute: the input's
``fixed_zero_mean_unit_variance`` is ``(x - mean) / (std + eps)`` with bioimageio.core's ``eps``
(:data:`PACKAGE_EPS`), the output's ``scale_linear`` is ``y * std + mean``, each computed in
float64 and rounded once to float32, as bioimageio.core does. Prediction from a run directory,
prediction from a package and a package's test output all go through :func:`normalise` and
:func:`denormalise`, so they give the consumers' float32 numbers. Training (in memory and lazy)
normalises with ``eps=0``, the definition of its statistics; both paths give the same numbers.
Runs whose std is tiny (:func:`input_eps`) use ``eps=0`` everywhere, declared as ``scale_linear``.

:func:`read_normalization` is the one validated reader of a run directory's
``normalization.json``, shared by ``predict`` and ``package`` (numpy only: no torch, no bioimageio).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.errors import DataError, ModelLoadError

__all__ = [
    "PACKAGE_EPS",
    "TINY_STD",
    "Normalization",
    "channel_stats",
    "check_channel_values",
    "denormalise",
    "input_eps",
    "normalise",
    "read_json_object",
    "read_normalization",
]

PACKAGE_EPS = 1e-6
"""``eps`` of bioimageio.core's ``fixed_zero_mean_unit_variance``: ``(x - mean) / (std + eps)``.

The bioimage.io format has no field for it (the kwargs are only ``mean`` and ``std``), so every
consumer uses this default; the kit's own predictions must use it too to agree with theirs.
"""

TINY_STD = 1e-3
"""Below this std (any channel), ``eps`` would shift the normalised input by more than 0.1 %."""


def input_eps(std: Sequence[float]) -> float:
    """The ``eps`` of a run's input normalisation ``(x - mean) / (std + eps)`` outside training.

    :data:`PACKAGE_EPS`, as consumers compute ``fixed_zero_mean_unit_variance``, unless a channel's
    std is below :data:`TINY_STD` (float data in small units, e.g. 1e-9): there eps would swamp
    the std (and the format rejects ``std < 1e-6``), so such runs are packaged with ``scale_linear``
    (gain ``1/std``, offset ``-mean/std``) and normalise with ``eps = 0``, exactly as in training.
    """
    return 0.0 if min(float(s) for s in std) < TINY_STD else PACKAGE_EPS


# Elements per float64 temporary (32 MiB): normalising a large image in memory needs little
# more than its float32 input and output.
_CHUNK = 2**22

# Elements per float64 temporary of the statistics (8 MiB): computing them needs next to no
# memory beside the images, however large those are.
_STATS_CHUNK = 2**20


class ChannelMoments:
    """Per-channel count, mean and sum of squared deviations, merged chunk by chunk.

    Each chunk's own mean and squared deviations are computed in float64 and merged with Chan et
    al.'s pairwise update: no sum of squares minus squared sum, so no cancellation when the mean
    is large against the spread. Also keeps each channel's minimum and maximum, so that a
    constant channel is told exactly (its std from floating-point sums need not be exactly 0).
    """

    def __init__(self, n_channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)
        self.lo = np.full(n_channels, np.inf)
        self.hi = np.full(n_channels, -np.inf)

    def add(self, chunk: np.ndarray) -> None:
        """Merge ``chunk`` of shape ``(C, ...)``, any dtype (its float64 copy is the one temporary)."""
        x = chunk.astype(np.float64, order="C").reshape(len(chunk), -1)
        if x.shape[1] == 0:
            return
        self.lo = np.minimum(self.lo, x.min(axis=1))
        self.hi = np.maximum(self.hi, x.max(axis=1))
        mean = x.mean(axis=1)
        x -= mean[:, None]
        self._merge(x.shape[1], mean, np.square(x, out=x).sum(axis=1))

    def merge(self, other: ChannelMoments) -> None:
        """Merge the moments of other data (another file)."""
        self.lo = np.minimum(self.lo, other.lo)
        self.hi = np.maximum(self.hi, other.hi)
        if other.count:
            self._merge(other.count, other.mean, other.m2)

    def _merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def constant_channel(self) -> int | None:
        """The first channel whose values are all equal, or None."""
        same = self.lo == self.hi
        return int(np.argmax(same)) if same.any() else None

    def result(self) -> tuple[list[float], list[float]]:
        """Mean and (population) standard deviation per channel."""
        return self.mean.tolist(), np.sqrt(self.m2 / self.count).tolist()


def _stat_chunks(img: np.ndarray, max_elements: int = _STATS_CHUNK):
    """``img`` (``(S, C, *spatial)``) as ``(C, ...)`` views of about ``max_elements``: whole samples, or rows of one."""
    n_samples, n_channels, *spatial = img.shape
    per_sample = n_channels * math.prod(spatial)
    if per_sample <= max_elements:
        step = max(1, max_elements // max(1, per_sample))
        pieces = (img[s : s + step] for s in range(0, n_samples, step))
    else:
        rows = max(1, max_elements // (per_sample // spatial[0]))
        pieces = (img[s : s + 1, :, r : r + rows] for s in range(n_samples) for r in range(0, spatial[0], rows))
    for piece in pieces:
        yield np.moveaxis(piece, 1, 0)


def channel_stats(images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> tuple[list[float], list[float]]:
    """Mean and standard deviation per channel of canonical ``(S, C, *spatial)`` arrays.

    Accumulated in float64 (sums of millions of uint16-range values lose precision in float32), a
    few MiB at a time (:class:`ChannelMoments`): no temporary the size of an image.
    A constant channel has no contrast to learn from and would divide by zero: it is an error.
    """
    n_channels = images[0].shape[1]
    total = ChannelMoments(n_channels)
    for i, img in enumerate(images):
        moments = ChannelMoments(n_channels)
        for piece in _stat_chunks(img):
            moments.add(piece)
        constant = moments.constant_channel()
        if constant is not None:
            name = names[i] if names is not None else f"image {i}"
            raise DataError(f"{name} is constant in channel {constant}: nothing to learn from")
        total.merge(moments)
    return total.result()


def normalise_in_place(x: np.ndarray, mean: Sequence[float], std: Sequence[float], spatial_ndim: int) -> None:
    """Overwrite the float32 array ``x`` with :func:`normalise`'s ``(x - mean[c]) / std[c]`` (``eps=0``, training's).

    The same numbers as :func:`normalise`, without a second image-sized array: training in
    memory normalises its loaded images where they are, and samples patches from them. The one
    temporary is a float64 slab of at most ``_STATS_CHUNK`` elements.
    """
    n = x.shape[x.ndim - spatial_ndim - 1]
    m, d = _per_channel(mean, n, "mean"), _per_channel(std, n, "std")

    def op(v: np.ndarray, c: int) -> np.ndarray:
        v -= m[c]  # v is a float64 copy: the same arithmetic as (v - m) / d, in place
        v /= d[c]
        return v

    first = x.ndim - spatial_ndim
    rows = max(1, _STATS_CHUNK // max(1, math.prod(x.shape[first + 1 :])))
    for start in range(0, x.shape[first], rows):
        part = x[(slice(None),) * first + (slice(start, start + rows),)]
        _apply_per_channel(part, spatial_ndim, op, out=part)


def _per_channel(values: Sequence[float], n_channels: int, what: str) -> list[float]:
    """``values`` as ``n_channels`` floats (one value stands for every channel)."""
    out = [float(v) for v in np.asarray(values, np.float64).reshape(-1)]
    if len(out) == 1:
        return out * n_channels
    if len(out) != n_channels:
        raise ValueError(f"{len(out)} {what} values for {n_channels} channels")
    return out


def _apply_per_channel(
    x: np.ndarray,
    spatial_ndim: int,
    op: Callable[[np.ndarray, int], np.ndarray],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``out[..., c, *spatial] = op(x[..., c, *spatial] as float64, c)``, rounded once to float32.

    A few rows at a time (float64 temporaries of at most ``_CHUNK`` elements), without copying
    ``x`` when it is a strided view (a transposed image, a tile's core).
    """
    if out is None:
        out = np.empty(x.shape, np.float32)
    spatial = x.shape[x.ndim - spatial_ndim :]
    rows = max(1, _CHUNK // max(1, math.prod(spatial[1:])))
    for index in np.ndindex(*x.shape[: x.ndim - spatial_ndim]):
        src, dst = x[index], out[index]
        for start in range(0, spatial[0], rows):
            dst[start : start + rows] = op(src[start : start + rows].astype(np.float64), index[-1])
    return out


def normalise(
    x: np.ndarray, mean: Sequence[float], std: Sequence[float], spatial_ndim: int, eps: float = 0.0
) -> np.ndarray:
    """``(x - mean[c]) / (std[c] + eps)`` as a new float32 array, for arrays whose last axes are ``(C, *spatial)``.

    Computed in float64 and rounded once to float32, like bioimageio.core's
    ``fixed_zero_mean_unit_variance`` (prediction passes ``eps=PACKAGE_EPS``).
    """
    x = np.asarray(x)
    n = x.shape[x.ndim - spatial_ndim - 1]
    m = _per_channel(mean, n, "mean")
    d = [s + eps for s in _per_channel(std, n, "std")]
    return _apply_per_channel(x, spatial_ndim, lambda v, c: (v - m[c]) / d[c])


def denormalise(y: np.ndarray, mean: Sequence[float], std: Sequence[float], spatial_ndim: int) -> np.ndarray:
    """``y * std[c] + mean[c]`` as float32 (``scale_linear`` with gain ``std`` and offset ``mean``).

    Computed in float64 and rounded once, like bioimageio.core's ``scale_linear``. A float32
    ``y`` is overwritten and returned (no second image-sized buffer); any other dtype gives a
    new array.
    """
    n = y.shape[y.ndim - spatial_ndim - 1]
    m, s = _per_channel(mean, n, "mean"), _per_channel(std, n, "std")
    out = y if y.dtype == np.float32 and y.flags.writeable else None
    return _apply_per_channel(y, spatial_ndim, lambda v, c: v * s[c] + m[c], out=out)


# -- normalization.json ------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalization:
    """A run's statistics: input ``mean``/``std`` and output ``target_mean``/``target_std`` per channel."""

    mean: list[float]
    std: list[float]
    target_mean: list[float]
    target_std: list[float]


def check_channel_values(
    value: Any, key: str, source: Path | str, n: int | None = None, positive: bool | None = None
) -> list[float]:
    """Validate per-channel statistics: a non-empty list of finite numbers; a ``*std`` is positive.

    A zero or NaN std would divide every pixel into NaN or Inf, so it is refused here, naming
    ``source`` and ``key``, instead of writing all-NaN images (the same rule for
    ``normalization.json`` and for a package's rdf).

    Parameters
    ----------
    value
        A number or a list of numbers.
    key
        Its name in ``source`` (for the message).
    source
        The file (and place in it) the values come from.
    n
        How many values there must be, when known.
    positive
        Whether the values must be positive; default: when ``key`` ends with ``std``.

    Raises
    ------
    ModelLoadError
        The values are unusable, or there are not ``n`` of them.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ModelLoadError(f"{source}: {key!r} must be a list of numbers, got {value!r}")
    values = [float(v) for v in value]
    if not all(math.isfinite(v) for v in values):
        raise ModelLoadError(f"{source}: {key!r} contains NaN or Inf: {values}")
    if (key.endswith("std") if positive is None else positive) and min(values) <= 0:
        raise ModelLoadError(f"{source}: {key!r} must be positive, got {values}")
    if n is not None and len(values) != n:
        raise ModelLoadError(f"{source}: {key!r} has {len(values)} values but the model has {n} channels")
    return values


def read_json_object(path: Path, required: bool = True) -> dict[str, Any]:
    """A JSON object from ``path`` (``{}`` for a missing optional file); :class:`ModelLoadError` naming it."""
    path = Path(path)
    if not path.is_file():
        if required:
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ModelLoadError(f"{path} {what} (is {path.parent} a finished run directory?)")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_normalization(path: Path, n_in: int | None = None, n_out: int | None = None) -> Normalization:
    """Read and validate a run directory's ``normalization.json``.

    Parameters
    ----------
    path
        The file.
    n_in, n_out
        The model's input and output channels, when known: the statistics must have as many values.
        Without ``target_mean``/``target_std`` (self-supervised runs) the input statistics are used.

    Raises
    ------
    ModelLoadError
        The file is missing, not JSON, or its statistics are unusable; the message names the file.
    """
    path = Path(path)
    norm = read_json_object(path, required=True)
    mean = check_channel_values(norm.get("mean"), "mean", path, n_in)
    std = check_channel_values(norm.get("std"), "std", path, n_in if n_in is not None else len(mean))
    n_out = n_out if n_out is not None else len(mean)
    target_mean = (
        check_channel_values(norm["target_mean"], "target_mean", path, n_out) if "target_mean" in norm else mean
    )
    target_std = check_channel_values(norm["target_std"], "target_std", path, n_out) if "target_std" in norm else std
    if len(target_mean) != n_out or len(target_std) != n_out:
        raise ModelLoadError(f"{path}: target statistics must have {n_out} values (one per output channel)")
    return Normalization(mean=list(mean), std=list(std), target_mean=list(target_mean), target_std=list(target_std))
