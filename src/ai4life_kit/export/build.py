"""Build, write and test a bioimage.io model package from a run directory.

The description is built by :mod:`ai4life_kit.export.descr`; the zip is written by
:mod:`ai4life_kit.export.package_zip`, which says why the rdf is written as format 0.5.4.

The zip is written under a temporary name next to ``out``, tested with bioimageio.core, and
only renamed to ``out`` when the test passed.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.errors import Ai4LifeKitError, UserInputError
from ai4life_kit.export.descr import build_checked, build_model_descr, default_description, default_name, package_tags
from ai4life_kit.export.package_zip import COMPAT_FORMAT_VERSION, RDF_NAME, write_zip
from ai4life_kit.export.rundir import RunInfo, load_run
from ai4life_kit.export.testdata import TestInput, make_test_input, min_size
from ai4life_kit.fileio import (
    apply_umask_mode,
    check_writable,
    remove_stale_temporaries,
    scratch_dir,
    temp_prefix,
    write_failure,
)

__all__ = [
    "COMPAT_FORMAT_VERSION",
    "RDF_NAME",
    "PackageResult",
    "build_model_descr",
    "compute_test_output",
    "package_run",
]


@dataclass
class PackageResult:
    """What :func:`package_run` produced."""

    path: Path
    seconds: float
    size_bytes: int
    weight_formats: list[str]
    test_source: str
    report: Any = None
    """The :class:`~ai4life_kit.export.validate.TestReport` of the package test (None if skipped)."""
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_dependencies(onnx: bool = True, run_test: bool = True) -> None:
    """Fail before any work when the ``[bioimageio]`` extra is not installed.

    Packaging needs bioimageio.spec (the description), bioimageio.core (the test), onnx (the
    ONNX export) and onnxruntime (testing the ONNX weights); without this check a missing one is
    found minutes later, deep in an export, with a message that names no fix.

    Raises
    ------
    UserInputError
        One line naming the missing modules and ``pip install 'ai4life-kit[bioimageio]'``.
    """
    import importlib

    needed = ["bioimageio.spec"] + (["bioimageio.core"] if run_test else [])
    if onnx:
        needed += ["onnx"] + (["onnxruntime"] if run_test else [])
    missing = []
    for module in needed:
        try:
            importlib.import_module(module)
        except ImportError:  # not installed, or a broken install: the same fix
            missing.append(module)
    if missing:
        hint = " (or leave out the ONNX weights with --no-onnx)" if set(missing) <= {"onnx", "onnxruntime"} else ""
        raise UserInputError(
            f"packaging needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install 'ai4life-kit[bioimageio]'{hint}"
        )


TESTABLE_MAGNITUDE = 1e-4
"""bioimageio.spec rejects a test tensor whose values all lie in (-1e-4, 1e-4): too small to test."""


def _check_testable_range(what: str, tensor: np.ndarray, source: str) -> None:
    """Say before any export that bioimage.io cannot test tensors of tiny values (e.g. 1e-9 units)."""
    peak = float(np.max(np.abs(tensor)))
    if peak < TESTABLE_MAGNITUDE:
        raise UserInputError(
            f"the package's {what} (from {source}) has no value of magnitude {TESTABLE_MAGNITUDE:g} or more "
            f"(largest {peak:.3g}), and bioimage.io rejects such test tensors as too small to test: "
            "rescale the images to larger units (e.g. multiply by 1e6) and train on those; predict works as it is"
        )


def compute_test_output(run: RunInfo, model, array: np.ndarray) -> np.ndarray:
    """The package's output for a raw ``array``: normalise, run the network, map back to raw.

    With the rdf's processing as bioimageio.core runs it (``(x - mean) / (std + eps)`` in,
    ``y * gain + offset`` out, float64 rounded to float32), the arithmetic ``predict`` uses too.
    """
    import torch

    from ai4life_kit.data.normalization import denormalise, input_eps, normalise

    x = normalise(np.asarray(array, np.float32), run.mean, run.std, run.dims, eps=input_eps(run.std))
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    return denormalise(np.ascontiguousarray(y, np.float32), run.target_mean, run.target_std, run.dims)


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


def failed_package_path(out: Path) -> Path:
    """Where a package that failed its test is kept for inspection: ``NAME.failed.bioimageio.zip``."""
    name = out.name
    for suffix in (".bioimageio.zip", ".zip"):
        if name.endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".failed" + suffix)
    return out.with_name(name + ".failed.zip")


def package_run(
    run_dir: Path,
    out: Path,
    *,
    name: str | None = None,
    authors: list[str] | None = None,
    github_user: str | None = None,
    license: str = "MIT",
    description: str | None = None,
    version: str = "0.1.0",
    onnx: bool = True,
    overwrite: bool = False,
    test_image: Path | None = None,
    test_axes: str | None = None,
    synthetic_test_data: bool = False,
    run_test: bool = True,
    log: Callable[[str], None] | None = None,
) -> PackageResult:
    """Package a run directory as a tested bioimage.io model zip at ``out``.

    The test and sample tensors (and the cover) are a crop of ``test_image``, else of the run's
    training data; synthetic noise only with ``synthetic_test_data`` (the README then says so).

    Raises
    ------
    UserInputError
        The ``[bioimageio]`` extra is missing (checked first, see :func:`check_dependencies`).
    OutputExistsError
        ``out`` exists and ``overwrite`` is false.
    DataError
        No ``test_image`` is given, no training file of the run can be read any more, and
        ``synthetic_test_data`` is false.
    ModelLoadError
        The run directory is not usable (no finished checkpoint, missing normalisation...).
    Ai4LifeKitError
        The package failed its bioimageio.core test (the message names the failing check);
        the failing package is kept next to ``out`` as ``*.failed.bioimageio.zip``.
    """
    check_dependencies(onnx=onnx, run_test=run_test)  # before any work: fail in a second, not minutes
    from ai4life_kit.export import docs, weights
    from ai4life_kit.export.cover import write_cover
    from ai4life_kit.export.validate import TestReport, check_format, run_package_test

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    say = log or (lambda _msg: None)
    out = Path(out)
    if not out.name.endswith(".zip"):
        raise UserInputError(f"--out {out} must end with .zip (e.g. model.bioimageio.zip)")
    if out.exists() and out.is_dir():
        raise UserInputError(f"--out {out} is a directory; give a file name ending with .bioimageio.zip")
    check_writable(out, overwrite)
    authors = [a.strip() for a in (authors or []) if a and a.strip()]
    if not authors:
        raise UserInputError("at least one --author is required (bioimage.io packages name their authors)")
    bad = [a for a in authors if "/" in a]
    if bad:
        raise UserInputError(f"author name {bad[0]!r} must not contain '/'")
    if github_user is not None and (not github_user.strip() or "/" in github_user or " " in github_user.strip()):
        raise UserInputError(f"--github-user {github_user!r} is not a GitHub user name")

    run = load_run(Path(run_dir))
    model = run.build_model()
    name = (name or default_name(run)).strip()
    description = (description or default_description(run)).strip()
    test_in: TestInput = make_test_input(run, test_image, test_axes, synthetic=synthetic_test_data)
    notes = []
    if test_in.synthetic:
        notes.append(
            "--synthetic-test-data: the test and sample tensors and the cover are synthetic noise, not microscopy "
            "data (the README says so; bioimage.io's reviewers may ask for real ones)"
        )
    test_out = compute_test_output(run, model, test_in.array)
    for what, tensor in (("test input", test_in.array), ("test output", test_out)):
        _check_testable_range(what, tensor, test_in.source)
    timings["load_and_test_tensors"] = time.perf_counter() - t0

    with scratch_dir("package") as tmp_name:
        tmp = Path(tmp_name)
        files: dict[str, Path] = {
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
        np.save(files["test_input"], test_in.array)
        np.save(files["test_output"], test_out)
        _write_tiff(files["sample_input"], test_in.array)
        _write_tiff(files["sample_output"], test_out)

        t = time.perf_counter()
        say("exporting weights (state dict, TorchScript" + (", ONNX)" if onnx else ")"))
        weights.write_state_dict(run.model_state, files["state_dict"])
        weights.write_architecture(files["architecture"])
        weights.export_torchscript(model, files["torchscript"])
        formats = ["pytorch_state_dict", "torchscript"]
        if onnx:
            import torch

            files["onnx"] = tmp / "weights.onnx"
            example = torch.from_numpy(
                np.zeros((1, run.in_channels) + (min_size(run.halo, run.step),) * run.dims, np.float32)
            )
            weights.export_onnx(model, files["onnx"], example)
            formats.append("onnx")
        timings["export_weights"] = time.perf_counter() - t

        (files["training_spec"]).write_bytes((run.run_dir / "spec.yaml").read_bytes())
        docs.write_documentation(
            files["documentation"],
            run,
            name=name,
            description=description,
            test_source=test_in.source,
            weight_formats=formats,
            synthetic_test=test_in.synthetic,
        )
        write_cover(files["cover"], test_in.array, test_out)

        t = time.perf_counter()
        say("building the bioimage.io description")
        tags = package_tags(run)
        descr = build_checked(
            run,
            files,
            name=name,
            description=description,
            authors=authors,
            github_user=github_user,
            license=license,
            version=version,
            tags=tags,
            root=tmp,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)  # of a package run that a kill -9 cut short
        fd, tmp_zip_name = tempfile.mkstemp(prefix=temp_prefix(out), suffix=".tmp.zip", dir=out.parent)
        os.close(fd)
        tmp_zip = Path(tmp_zip_name)
        try:
            try:
                write_zip(descr, tmp_zip)
            except Exception as exc:
                failure = write_failure(exc, out)
                if failure is None:
                    raise
                raise failure from None
            timings["build_and_zip"] = time.perf_counter() - t
            t = time.perf_counter()
            fmt = check_format(tmp_zip, extra_github_users=[github_user] if github_user else [])
            if not fmt.passed:
                raise Ai4LifeKitError(f"the written package is not a valid bioimage.io description: {fmt.one_line()}")
            notes += fmt.warnings
            timings["validate_format"] = time.perf_counter() - t
            report: TestReport | None = None
            if run_test:
                t = time.perf_counter()
                say("testing the package with bioimageio.core (every weight format)")
                report = run_package_test(tmp_zip, extra_github_users=[github_user] if github_user else [])
                timings["bioimageio_test"] = time.perf_counter() - t
                if not report.passed:
                    kept = failed_package_path(out)
                    apply_umask_mode(tmp_zip)
                    os.replace(tmp_zip, kept)
                    raise Ai4LifeKitError(
                        f"the package failed its bioimageio.core test: {report.one_line()} "
                        f"(the failing package was kept at {kept}; run `ai4life-kit validate {kept}` for details)"
                    )
            check_writable(out, overwrite)
            apply_umask_mode(tmp_zip)  # mkstemp made it 0600
            os.replace(tmp_zip, out)
            if report is not None:
                report.source = str(out)  # the report names the file the user gets, not the temporary one
        finally:
            if tmp_zip.exists():
                tmp_zip.unlink()

    return PackageResult(
        path=out,
        seconds=time.perf_counter() - t0,
        size_bytes=out.stat().st_size,
        weight_formats=formats,
        test_source=test_in.source,
        report=report,
        timings=timings,
        notes=notes,
    )
