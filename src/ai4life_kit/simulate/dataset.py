"""A simulated dataset on disk: ``gt/``, ``noisy/`` (and ``noisy2/``) TIFFs and ``simulation.json``.

Sizes, memory and disk are checked before anything is written, and the folder is written under a
temporary name and renamed when complete. :func:`simulate_dataset` derives one independent random
stream per image and purpose from its seed, so the first image is the same whatever ``n`` is, and
turning ``pairs`` on does not change the first noisy realisation.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.errors import OutputExistsError, UserInputError
from ai4life_kit.simulate.images import (
    _UINT16_MAX,
    DEFAULT_OFFSET,
    _check_noise_args,
    _check_peak,
    _check_shape,
    add_noise,
    column_pattern,
    simulate_ground_truth,
    structured_noise_std,
)

__all__ = ["MARKER_FILE", "MIN_SIDE", "simulate_dataset"]

MARKER_FILE = "simulation.json"
MIN_SIDE = 8
"""Smallest Y and X: below it the ground truth can be a constant image, whose PSNR is undefined."""
PEAK_BYTES_PER_PIXEL = 48
"""Peak memory of simulating one image per pixel: about 40 measured (float64 blurs, the noisy copies), plus margin."""


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def _check_resources(shape: tuple[int, ...], n: int, pairs: bool, out_dir: Path) -> None:
    """Refuse, before writing anything, a simulation that cannot fit in memory or on disk."""
    from ai4life_kit.fileio import check_location, mount_point

    if min(shape[-2:]) < MIN_SIDE:
        raise UserInputError(
            f"shape {shape!r}: Y and X must be at least {MIN_SIDE} pixels (smaller images hold no structure to denoise)"
        )
    check_location(out_dir, folder=True)
    pixels = math.prod(shape)
    text = "x".join(str(d) for d in shape)
    need_memory = pixels * PEAK_BYTES_PER_PIXEL
    available = _available_memory()
    if available is not None and need_memory > available:
        raise UserInputError(
            f"simulating a {text} image needs about {_gib(need_memory)} of memory and "
            f"{_gib(available)} is available: choose a smaller --shape"
        )
    need_disk = n * pixels * (4 + 2 + (2 if pairs else 0))  # float32 ground truth, uint16 noisy images
    free = shutil.disk_usage(mount_point(out_dir)).free
    if need_disk > free:
        raise UserInputError(
            f"{n} simulated {text} image(s) need {_gib(need_disk)} on {mount_point(out_dir)} and "
            f"{_gib(free)} is free: choose a smaller --shape or --n, or another folder"
        )


def _write_uint16(path: Path, data: np.ndarray, axes: str) -> None:
    """Write a uint16 TIFF with axes metadata, atomically (camera-like raw data)."""
    from ai4life_kit.data.tiff_io import write_image

    write_image(path, data, axes, overwrite=False, dtype=np.uint16)


def check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder that holds anything, unless ``overwrite`` and a simulation wrote it."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out_dir} already exists (use --overwrite to replace it)")
        if not _is_simulation(out_dir):
            raise OutputExistsError(f"{out_dir} exists and was not created by ai4life-kit; refusing to delete it")


def _is_simulation(path: Path) -> bool:
    return (path / MARKER_FILE).is_file()


def simulate_dataset(
    out_dir: Path,
    shape: tuple[int, ...] = (512, 512),
    n: int = 1,
    peak: float = 20.0,
    read_noise: float = 2.0,
    structured_noise: str = "none",
    pairs: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    offset: float = DEFAULT_OFFSET,
) -> dict[str, Any]:
    """Write ``n`` simulated images with their ground truth under ``out_dir``.

    Layout::

        out_dir/gt/img_000.tif       float32, lam + offset (same units as noisy)
        out_dir/noisy/img_000.tif    uint16
        out_dir/noisy2/img_000.tif   uint16, independent realisation (only with ``pairs``)
        out_dir/simulation.json      parameters and input PSNR

    Parameters
    ----------
    out_dir
        Output folder; must be empty or absent unless ``overwrite`` (which only deletes a
        folder created by this function).
    shape
        ``(Y, X)`` or ``(Z, Y, X)``.
    n
        Number of images (>= 1).
    peak
        Photons at the brightest ground-truth pixel; lower means noisier.
    read_noise
        Gaussian read-noise std in counts.
    structured_noise
        ``"none"``, ``"row"`` or ``"column"`` (see :func:`add_noise`).
    pairs
        Also write a second, independent noisy realisation (Noise2Noise pairs).
    seed
        Non-negative integer; the same seed gives byte-identical images.
    overwrite
        Replace an existing simulation folder.
    offset
        Camera offset in counts.

    Returns
    -------
    dict
        ``out_dir``, ``axes``, lists of paths ``gt``, ``noisy``, ``noisy2`` (empty without
        ``pairs``), ``input_psnr`` (PSNR of each noisy image against its ground truth, data
        range of the ground truth) and ``mean_input_psnr``.
    """
    from ai4life_kit.fileio import atomic_folder

    shape = _check_shape(shape)
    peak = _check_peak(peak)
    _check_noise_args(float(read_noise), structured_noise, float(offset))
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise UserInputError(f"number of images {n} must be an integer >= 1")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise UserInputError(f"seed {seed} must be a non-negative integer")
    if peak + offset > 0.9 * _UINT16_MAX:
        raise UserInputError(f"peak {peak} + offset {offset} would saturate 16-bit images; use a lower peak")
    n, seed = int(n), int(seed)
    out_dir = Path(out_dir)
    _check_resources(shape, n, pairs, out_dir)
    check_replaceable(out_dir, overwrite)
    # Written under a temporary name and renamed when complete: a failure, Ctrl-C or kill at any
    # moment leaves no half-made folder (and, with --overwrite, the old simulation in place).
    with atomic_folder(out_dir, overwrite=True) as staging:
        result = _simulate_into(staging, out_dir, shape, n, peak, read_noise, structured_noise, offset, pairs, seed)
    return result


def _simulate_into(
    staging: Path,
    out_dir: Path,
    shape: tuple[int, ...],
    n: int,
    peak: float,
    read_noise: float,
    structured_noise: str,
    offset: float,
    pairs: bool,
    seed: int,
) -> dict[str, Any]:
    """Write the images and ``simulation.json`` into ``staging``; paths in the result name ``out_dir``."""
    from ai4life_kit.data.tiff_io import write_image
    from ai4life_kit.fileio import atomic_write_text
    from ai4life_kit.metrics import psnr

    axes = "ZYX" if len(shape) == 3 else "YX"
    params: dict[str, Any] = {
        "shape": list(shape),
        "axes": axes,
        "n": n,
        "peak": peak,
        "read_noise": float(read_noise),
        "structured_noise": structured_noise,
        "offset": float(offset),
        "pairs": pairs,
        "seed": seed,
    }

    # One independent stream per purpose, and per image inside each purpose.
    gt_seq, noise_seq, noise2_seq, pattern_seq = np.random.SeedSequence(seed).spawn(4)
    gt_rngs = [np.random.default_rng(s) for s in gt_seq.spawn(n)]
    noise_rngs = [np.random.default_rng(s) for s in noise_seq.spawn(n)]
    noise2_rngs = [np.random.default_rng(s) for s in noise2_seq.spawn(n)]
    pattern_rng = np.random.default_rng(pattern_seq)

    result: dict[str, Any] = {"out_dir": out_dir, "axes": axes, "gt": [], "noisy": [], "noisy2": [], "input_psnr": []}
    columns = None
    for i in range(n):
        name = f"img_{i:03d}.tif"
        lam = simulate_ground_truth(shape, gt_rngs[i], peak)
        if structured_noise == "column" and columns is None:
            # Fixed pattern of the camera: drawn once (from the first image's level), reused.
            columns = column_pattern(shape[-1], pattern_rng, structured_noise_std(lam))
        gt = lam + np.float32(offset)
        noisy = add_noise(lam, noise_rngs[i], read_noise, structured_noise, offset, columns)
        write_image(staging / "gt" / name, gt, axes)
        _write_uint16(staging / "noisy" / name, noisy, axes)
        result["gt"].append(out_dir / "gt" / name)
        result["noisy"].append(out_dir / "noisy" / name)
        if pairs:
            noisy2 = add_noise(lam, noise2_rngs[i], read_noise, structured_noise, offset, columns)
            _write_uint16(staging / "noisy2" / name, noisy2, axes)
            result["noisy2"].append(out_dir / "noisy2" / name)
        result["input_psnr"].append(float(psnr(gt, noisy)))
    result["mean_input_psnr"] = float(np.mean(result["input_psnr"]))

    summary = {"parameters": params, "complete": True, "input_psnr": result["input_psnr"]}
    summary["mean_input_psnr"] = result["mean_input_psnr"]
    atomic_write_text(staging / MARKER_FILE, json.dumps(summary, indent=2))
    return result
