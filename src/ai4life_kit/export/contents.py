"""The files of a package, written into a scratch folder: test and sample tensors, weights, README, cover.

:func:`write_package_files` is the export step of :func:`ai4life_kit.export.build.package_run`;
what the files are called inside the zip is :func:`package_paths`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.export.cover import write_cover
from ai4life_kit.export.docs import write_documentation
from ai4life_kit.export.rundir import RunInfo
from ai4life_kit.export.testdata import TestInput

__all__ = ["PackageInputs", "package_paths", "write_package_files"]


@dataclass
class PackageInputs:
    """What a package is made of: the run, its network, name, description and test tensors (raw)."""

    run: RunInfo
    model: Any
    name: str
    description: str
    test_in: TestInput
    test_out: np.ndarray
    notes: list[str]
    """For the user (e.g. that the test tensors are synthetic); the format check's warnings join them."""


def package_paths(tmp: Path) -> dict[str, Path]:
    """Where each file of the package is written in the scratch folder ``tmp`` (ONNX added when exported)."""
    return {
        "test_input": tmp / "test_input.npy",
        "test_output": tmp / "test_output.npy",
        "sample_input": tmp / "sample_input.tif",
        "sample_output": tmp / "sample_output.tif",
        "state_dict": tmp / "weights.pt",
        "architecture": tmp / "unet.py",
        "torchscript": tmp / "weights_torchscript.pt",
        "documentation": tmp / "README.md",
        "cover": tmp / "cover.png",
        "training_spec": tmp / "training_spec.yaml",
    }


def _write_tiff(path: Path, array: np.ndarray) -> None:
    """Sample tensor TIFF in tensor axis order (batch dropped), ImageJ hyperstack when possible."""
    import tifffile

    data = np.ascontiguousarray(array[0], dtype=np.float32)  # c, (z), y, x
    if data.ndim == 3:  # c, y, x
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX"})
    elif data.shape[0] == 1:  # 1, z, y, x
        tifffile.imwrite(path, data[0], imagej=True, metadata={"axes": "ZYX"})
    else:  # c, z, y, x: ImageJ wants ZCYX, keep the tensor order instead
        tifffile.imwrite(path, data, metadata={"axes": "CZYX"})


def _export_weights(run: RunInfo, model, files: dict[str, Path], tmp: Path, onnx: bool) -> list[str]:
    """State dict, architecture file, TorchScript and (with ``onnx``) ONNX; the weight formats written."""
    from ai4life_kit.export import weights

    weights.write_state_dict(run.model_state, files["state_dict"])
    weights.write_architecture(files["architecture"])
    weights.export_torchscript(model, files["torchscript"])
    formats = ["pytorch_state_dict", "torchscript"]
    if onnx:
        import torch

        files["onnx"] = tmp / "weights.onnx"
        example = torch.from_numpy(np.zeros((1, run.in_channels, *(a.min for a in run.package_axes)), np.float32))
        if run.isotropic:
            # Tracing would unroll the loop over slice batches for the example's size only: one call for all.
            model = copy.deepcopy(model)
            model.slice_batch = 0
        weights.export_onnx(model, files["onnx"], example)
        formats.append("onnx")
    return formats


def write_package_files(
    inputs: PackageInputs, tmp: Path, *, onnx: bool, say: Callable[[str], None], timings: dict[str, float]
) -> tuple[dict[str, Path], list[str]]:
    """Write every file of the package into ``tmp``: tensors, weights, training spec, README, cover.

    Returns the files by role (see :func:`package_paths`) and the weight formats written;
    ``timings["export_weights"]`` is how long the weights took.
    """
    run, test_in, test_out = inputs.run, inputs.test_in, inputs.test_out
    files = package_paths(tmp)
    np.save(files["test_input"], test_in.array)
    np.save(files["test_output"], test_out)
    _write_tiff(files["sample_input"], test_in.array)
    _write_tiff(files["sample_output"], test_out)

    t = time.perf_counter()
    say("exporting weights (state dict, TorchScript" + (", ONNX)" if onnx else ")"))
    formats = _export_weights(run, inputs.model, files, tmp, onnx)
    timings["export_weights"] = time.perf_counter() - t

    (files["training_spec"]).write_bytes((run.run_dir / "spec.yaml").read_bytes())
    write_documentation(
        files["documentation"],
        run,
        name=inputs.name,
        description=inputs.description,
        test_source=test_in.source,
        weight_formats=formats,
        synthetic_test=test_in.synthetic,
    )
    # The cover compares input and output: a probabilistic model's scales are no image of the sample.
    label = {
        "super_resolution": f"output ({run.upsample_factor}x super-resolution)",
        "deconvolution": "output (deconvolved)",
        "isotropic": "output (isotropic)",
    }
    write_cover(
        files["cover"],
        test_in.array,
        test_out[:, : run.out_channels],
        labels=("input" + (" (XZ)" if run.isotropic else ""), label.get(run.spec.task.kind, "output (denoised)")),
        # Isotropic: an XZ section shows what the model changed; the input's planes are drawn factor times as tall.
        axial_factor=run.spec.task.factor if run.isotropic else None,
    )
    return files, formats
