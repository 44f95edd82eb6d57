"""A package opened for the consumer probes, and what each probe gets: reference cases, a blockwise image.

deepImageJ's check compares the sample input, run through the weights, with the test output; the
other sizes get reference outputs computed here from the packaged architecture file + state dict
(this environment's torch), pre- and post-processed as the rdf says. ilastik's check gets an image
just over one of its smallest blocks per axis, mirrored from the test input.
"""

from __future__ import annotations

import functools
import importlib.util
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.errors import Ai4LifeKitError

__all__ = [
    "ILASTIK_MIN_BLOCK",
    "PROBE",
    "PackageView",
    "blockwise_job",
    "engine_cases",
    "load_probe",
    "numpy_processing",
    "open_package",
    "read_sample_tensor",
    "source",
]

PROBE = Path(__file__).with_name("_consumer_probe.py")
# ilastik's smallest tiles; its blockwise prediction must match the whole image at these sizes.
ILASTIK_MIN_BLOCK = {2: 512, 3: 64}


@dataclass
class PackageView:
    zip: Path
    root: Path
    rdf: dict[str, Any]

    @property
    def input(self) -> dict[str, Any]:
        return self.rdf["inputs"][0]

    @property
    def output(self) -> dict[str, Any]:
        return self.rdf["outputs"][0]

    def axis_ids(self, tensor: dict[str, Any]) -> list[str]:
        return [str(a.get("id", a.get("type"))) for a in tensor["axes"]]

    @property
    def spatial(self) -> list[str]:
        return [a for a in self.axis_ids(self.input) if a in ("z", "y", "x")]

    def file(self, source: str) -> Path:
        return self.root / source

    @property
    def weights(self) -> dict[str, Any]:
        return {k: v for k, v in (self.rdf.get("weights") or {}).items() if v}


def open_package(path: Path, root: Path) -> PackageView:
    from ai4life_kit.export.validate import inspect_zip

    rdf = inspect_zip(path)
    with zipfile.ZipFile(path) as zf:
        zf.extractall(root)
    return PackageView(Path(path), root, rdf)


def source(entry: Any) -> str:
    return entry["source"] if isinstance(entry, dict) else str(entry)


def read_sample_tensor(pkg: PackageView, tensor: dict[str, Any]) -> np.ndarray:
    """The tensor's ``sample_tensor`` TIFF as deepImageJ reads it: by its axes, into the rdf's order."""
    import tifffile

    path = pkg.file(source(tensor["sample_tensor"]))
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes.upper()
    letters = {"batch": "B", "channel": "C", "z": "Z", "y": "Y", "x": "X"}
    wanted = [letters[a] for a in pkg.axis_ids(tensor)]
    for i in reversed(range(len(axes))):  # drop singleton axes the tensor does not have (ImageJ's Q, S...)
        if axes[i] not in wanted and data.shape[i] == 1:
            data = data.squeeze(i)
            axes = axes[:i] + axes[i + 1 :]
    unknown = [a for a in axes if a not in wanted]
    if unknown:
        raise Ai4LifeKitError(f"sample tensor {path.name} has axes {axes!r} that the rdf tensor does not have")
    for a in wanted:
        if a not in axes:
            data = data[np.newaxis]
            axes = a + axes
    return np.ascontiguousarray(np.transpose(data, [axes.index(a) for a in wanted]), dtype=np.float32)


def numpy_processing(pkg: PackageView, steps_key: str, tensor: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(s) for s in tensor.get(steps_key, []) or []]


def _state_dict_model(pkg: PackageView):
    """The packaged architecture file + state dict, in this environment's torch (the reference)."""
    import torch

    w = pkg.weights["pytorch_state_dict"]
    arch = w["architecture"]
    spec = importlib.util.spec_from_file_location("_packaged_architecture", pkg.file(source(arch)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    model = getattr(module, arch["callable"])(**(arch.get("kwargs") or {}))
    state = torch.load(pkg.file(source(w)), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


@functools.cache
def load_probe():
    """The probe module (run by path in the runtimes) loaded here too, for its processing maths."""
    spec = importlib.util.spec_from_file_location("_ai4life_kit_consumer_probe", PROBE)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)  # type: ignore[union-attr]
    return probe


def _apply_processing(steps: list[dict[str, Any]], x: np.ndarray, axes: list[str]) -> np.ndarray:
    return load_probe()._apply(steps, x, axes)


def _valid_sizes(pkg: PackageView) -> dict[str, tuple[int, int]]:
    """``axis -> (min, step)`` of the input's parameterized spatial sizes."""
    out = {}
    for a in pkg.input["axes"]:
        if a.get("id") in ("z", "y", "x"):
            size = a["size"]
            out[a["id"]] = (int(size["min"]), int(size["step"])) if isinstance(size, dict) else (int(size), 0)
    return out


def _resize(x: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Crop (centre) or mirror-pad the trailing spatial axes of ``x`` to ``sizes``."""
    nd = len(sizes)
    for i, s in enumerate(sizes):
        axis = x.ndim - nd + i
        n = x.shape[axis]
        if n > s:
            start = (n - s) // 2
            x = np.take(x, range(start, start + s), axis=axis)
        elif n < s:
            pad = [(0, 0)] * x.ndim
            pad[axis] = ((s - n) // 2, s - n - (s - n) // 2)
            x = np.pad(x, pad, mode="symmetric")
    return np.ascontiguousarray(x, dtype=np.float32)


def engine_cases(pkg: PackageView, work: Path) -> list[dict[str, Any]]:
    """deepImageJ's sample-in / test-out case plus other valid sizes with reference outputs.

    The reference outputs of the other sizes come from the packaged architecture + state dict in
    this environment, pre- and post-processed as the rdf says.
    """
    import torch

    sample = read_sample_tensor(pkg, pkg.input)
    test_out = np.load(pkg.file(source(pkg.output["test_tensor"])))
    np.save(work / "sample.npy", sample)
    np.save(work / "test_output.npy", test_out.astype(np.float32))
    cases = [
        {
            "name": "sample input -> test output",
            "input": str(work / "sample.npy"),
            "expected": str(work / "test_output.npy"),
        }
    ]
    sizes = _valid_sizes(pkg)
    spatial = pkg.spatial
    in_axes, out_axes = pkg.axis_ids(pkg.input), pkg.axis_ids(pkg.output)
    model = _state_dict_model(pkg)
    shapes = {
        "smallest valid size": [sizes[a][0] for a in spatial],
        "larger, not square": [sizes[a][0] + (i + 1) * 2 * sizes[a][1] for i, a in enumerate(spatial)],
    }
    for label, shape in shapes.items():
        x = _resize(sample, shape)
        pre = _apply_processing(pkg.input.get("preprocessing") or [], x, in_axes)
        with torch.no_grad():
            y = model(torch.from_numpy(pre)).numpy()
        y = _apply_processing(pkg.output.get("postprocessing") or [], y, out_axes)
        stem = label.replace(" ", "_").replace(",", "")
        np.save(work / f"{stem}_in.npy", x)
        np.save(work / f"{stem}_out.npy", y)
        cases.append({"name": label, "input": str(work / f"{stem}_in.npy"), "expected": str(work / f"{stem}_out.npy")})
    return cases


def blockwise_job(pkg: PackageView, work: Path) -> dict[str, Any]:
    """An image over two of ilastik's smallest blocks per axis, made by mirroring the test input."""
    test_in = np.load(pkg.file(source(pkg.input["test_tensor"]))).astype(np.float32)
    sizes = _valid_sizes(pkg)
    dims = len(pkg.spatial)

    def valid_at_least(axis: str, n: int) -> int:
        lo, step = sizes[axis]
        return lo if n <= lo or step == 0 else lo + -(-(n - lo) // step) * step

    block = {a: valid_at_least(a, ILASTIK_MIN_BLOCK[dims]) for a in pkg.spatial}
    # Two steps more than a block: every axis gets a seam, and a 3D check stays within memory.
    image = [block[a] + 2 * max(sizes[a][1], 1) for a in pkg.spatial]
    x = _resize(test_in, image)
    np.save(work / "blockwise_image.npy", x)
    shape = {"batch": 1, "channel": int(x.shape[1]), **block}
    out_axes = [a for a in pkg.output["axes"] if a.get("id") in ("z", "y", "x")]
    in_scale = {a.get("id"): float(a.get("scale", 1.0)) for a in pkg.input["axes"]}
    crop = [int(a.get("halo", 0)) for a in out_axes]
    # The whole-image reference pads the input by the halo in *input* pixels: a super-resolution
    # output (scale 1/f) has f output pixels per input pixel, so its halo is f times the input's.
    halo = [
        round(h * float(a.get("scale", 1.0)) / in_scale.get(a.get("id"), 1.0))
        for h, a in zip(crop, out_axes, strict=True)
    ]
    return {
        "zip": str(pkg.zip),
        "image": str(work / "blockwise_image.npy"),
        "block_shape": shape,
        "halo": halo,
        "crop": crop,
    }
