"""Helpers shared by the challenge tests (this module holds no tests).

- :class:`FakeModel`: the runner's model protocol without torch (``n_channels``, ``predict``).
- :func:`make_package`: a small bioimage.io zip as ai4life-kit's loader reads it (rdf.yaml format
  0.5, TorchScript weights of :class:`ai4life_kit.models.unet.UNet`, fixed mean/std in and
  ``scale_linear`` out), assembled directly so the tests do not need a training run.
- :func:`write_stack`: a TIFF as challenge inputs come (no axes metadata, any dtype).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import tifffile
import yaml


class FakeModel:
    """Predicts ``0.5 * x + offset`` and records every call (shape, axes, options)."""

    def __init__(self, n_channels: int = 1, offset: float = 1.0, fail_on_shape: tuple[int, ...] | None = None):
        self.n_channels = n_channels
        self.spatial_ndim = 2
        self.offset = offset
        self.fail_on_shape = fail_on_shape
        self.calls: list[tuple[tuple[int, ...], str, dict]] = []

    def predict(self, array: np.ndarray, axes: str, **options) -> np.ndarray:
        self.calls.append((array.shape, axes, options))
        if "C" in axes:
            assert array.shape[axes.index("C")] == self.n_channels
        if self.fail_on_shape is not None and array.shape[-2:] == self.fail_on_shape:
            raise RuntimeError("simulated model failure")
        return (array.astype(np.float32) * 0.5 + self.offset).astype(np.float32)


def write_stack(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data)
    return path


def make_package(
    path: Path,
    n_channels: int = 1,
    depth: int = 2,
    width: int = 8,
    mean: float = 1000.0,
    std: float = 300.0,
    seed: int = 0,
    dims: int = 2,
) -> Path:
    """Write a bioimage.io zip with a randomly initialised (seeded) U-Net (2D or 3D); returns ``path``."""
    import torch

    from ai4life_kit.models.unet import UNet, receptive_field_radius

    torch.manual_seed(seed)
    net = UNet(dims=dims, in_channels=n_channels, out_channels=n_channels, depth=depth, width=width).eval()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buf)
    weights = buf.getvalue()
    step = 2**depth
    halo = -(-receptive_field_radius(depth) // step) * step
    names = [f"c{i}" for i in range(n_channels)]

    def axes(kind: str) -> list[dict]:
        size = {"min": 2 * halo + step, "step": step}
        letters = "zyx"[-dims:]
        space = [{"type": "space", "id": a, "size": size} for a in letters]
        if kind == "output":
            space = [
                {"type": "space", "id": a, "halo": halo, "size": {"tensor_id": "input", "axis_id": a}} for a in letters
            ]
        return [{"type": "batch"}, {"type": "channel", "channel_names": names}, *space]

    rdf = {
        "type": "model",
        "format_version": "0.5.4",
        "name": f"test unet {n_channels}ch",
        "description": "random weights, for tests",
        "inputs": [
            {
                "id": "input",
                "axes": axes("input"),
                "preprocessing": [
                    {
                        "id": "fixed_zero_mean_unit_variance",
                        "kwargs": {"mean": [mean] * n_channels, "std": [std] * n_channels, "axis": "channel"},
                    }
                ],
            }
        ],
        "outputs": [
            {
                "id": "output",
                "axes": axes("output"),
                "postprocessing": [
                    {
                        "id": "scale_linear",
                        "kwargs": {"gain": [std] * n_channels, "offset": [mean] * n_channels, "axis": "channel"},
                    }
                ],
            }
        ],
        "weights": {
            "torchscript": {
                "source": "weights.pt",
                "sha256": hashlib.sha256(weights).hexdigest(),
                "pytorch_version": torch.__version__.split("+")[0],
            }
        },
        "config": {"ai4life_kit": {"depth": depth}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump(rdf, sort_keys=False))
        zf.writestr("weights.pt", weights)
    return path
