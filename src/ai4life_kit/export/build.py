"""Build, write and test a bioimage.io model package from a run directory.

:func:`package_run` is the whole sequence, one step per function: check the arguments, load
the run and compute the test tensors, write the package's files into a scratch folder, build
the description (:mod:`ai4life_kit.export.descr`), write the zip
(:mod:`ai4life_kit.export.package_zip`, which says why the rdf is written as format 0.5.4),
check its format and test it with bioimageio.core.

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
from ai4life_kit.export.contents import PackageInputs, write_package_files
from ai4life_kit.export.descr import build_checked, build_model_descr, default_description, default_name, package_tags
from ai4life_kit.export.package_zip import COMPAT_FORMAT_VERSION, RDF_NAME, write_zip
from ai4life_kit.export.rundir import RunInfo, load_run
from ai4life_kit.export.testdata import make_test_input
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

    x = normalise(np.asarray(array, np.float32), run.mean, run.std, run.package_dims, eps=input_eps(run.std))
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    # A probabilistic network's scales (channels after the means) get the gain only: run.output_offset.
    return denormalise(np.ascontiguousarray(y, np.float32), run.output_offset, run.output_gain, run.package_dims)


def failed_package_path(out: Path) -> Path:
    """Where a package that failed its test is kept for inspection: ``NAME.failed.bioimageio.zip``."""
    name = out.name
    for suffix in (".bioimageio.zip", ".zip"):
        if name.endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".failed" + suffix)
    return out.with_name(name + ".failed.zip")


def _check_arguments(
    out: Path, authors: list[str] | None, github_user: str | None, overwrite: bool
) -> tuple[Path, list[str]]:
    """The checks that need no run directory, before any work: ``out``, the authors, the GitHub user.

    Returns ``out`` as a :class:`~pathlib.Path` and the authors stripped, empty names dropped.

    Raises
    ------
    UserInputError
        ``out`` does not end with ``.zip`` or is a folder; no author; an author with ``/``; a
        GitHub user name that cannot be one.
    OutputExistsError
        ``out`` exists and ``overwrite`` is false.
    """
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
    return out, authors


def _load_run_and_test_tensors(
    run_dir: Path,
    name: str | None,
    description: str | None,
    test_image: Path | None,
    test_axes: str | None,
    synthetic: bool,
) -> PackageInputs:
    """Load the run, build its network, crop the test input and compute the test output.

    Both test tensors are checked for bioimage.io's smallest testable magnitude here, before
    any export.
    """
    run = load_run(Path(run_dir))
    model = run.build_model()
    name = (name or default_name(run)).strip()
    description = (description or default_description(run)).strip()
    test_in = make_test_input(run, test_image, test_axes, synthetic=synthetic)
    notes = []
    if test_in.synthetic:
        notes.append(
            "--synthetic-test-data: the test and sample tensors and the cover are synthetic noise, not microscopy "
            "data (the README says so; bioimage.io's reviewers may ask for real ones)"
        )
    test_out = compute_test_output(run, model, test_in.array)
    for what, tensor in (("test input", test_in.array), ("test output", test_out)):
        _check_testable_range(what, tensor, test_in.source)
    return PackageInputs(run, model, name, description, test_in, test_out, notes)


def _describe(
    inputs: PackageInputs,
    files: dict[str, Path],
    tmp: Path,
    *,
    say: Callable[[str], None],
    authors: list[str],
    github_user: str | None,
    license: str,
    version: str,
):
    """The checked description of the files in ``tmp`` (see :func:`~ai4life_kit.export.descr.build_checked`)."""
    say("building the bioimage.io description")
    return build_checked(
        inputs.run,
        files,
        name=inputs.name,
        description=inputs.description,
        authors=authors,
        github_user=github_user,
        license=license,
        version=version,
        tags=package_tags(inputs.run),
        root=tmp,
    )


def _check_written_format(tmp_zip: Path, github_user: str | None) -> list[str]:
    """``bioimageio validate-format`` of the written zip; its warnings.

    Raises
    ------
    Ai4LifeKitError
        The written package is not a valid description.
    """
    from ai4life_kit.export.validate import check_format

    fmt = check_format(tmp_zip, extra_github_users=[github_user] if github_user else [])
    if not fmt.passed:
        raise Ai4LifeKitError(f"the written package is not a valid bioimage.io description: {fmt.one_line()}")
    return fmt.warnings


def _test_package(
    tmp_zip: Path, out: Path, github_user: str | None, say: Callable[[str], None], timings: dict[str, float]
):
    """``bioimageio test`` of the written zip; its :class:`~ai4life_kit.export.validate.TestReport`.

    Raises
    ------
    Ai4LifeKitError
        The test failed; the zip is kept at :func:`failed_package_path` of ``out``.
    """
    from ai4life_kit.export.validate import run_package_test

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
    return report


def _zip_test_and_rename(
    descr,
    out: Path,
    *,
    overwrite: bool,
    github_user: str | None,
    run_test: bool,
    say: Callable[[str], None],
    timings: dict[str, float],
    notes: list[str],
    started: float,
):
    """Write the zip under a temporary name next to ``out``, check and test it, then rename it to ``out``.

    Temporaries of killed earlier runs are removed first; the temporary zip never outlives this
    call (renamed, kept as the failed package, or deleted). ``started`` is when building the
    description began (``timings["build_and_zip"]`` counts from there). Returns the test report,
    or None without ``run_test``.
    """
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
        timings["build_and_zip"] = time.perf_counter() - started
        t = time.perf_counter()
        notes += _check_written_format(tmp_zip, github_user)
        timings["validate_format"] = time.perf_counter() - t
        report = _test_package(tmp_zip, out, github_user, say, timings) if run_test else None
        check_writable(out, overwrite)
        apply_umask_mode(tmp_zip)  # mkstemp made it 0600
        os.replace(tmp_zip, out)
        if report is not None:
            report.source = str(out)  # the report names the file the user gets, not the temporary one
    finally:
        if tmp_zip.exists():
            tmp_zip.unlink()
    return report


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
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    say = log or (lambda _msg: None)
    out, authors = _check_arguments(out, authors, github_user, overwrite)
    inputs = _load_run_and_test_tensors(run_dir, name, description, test_image, test_axes, synthetic_test_data)
    timings["load_and_test_tensors"] = time.perf_counter() - t0

    with scratch_dir("package") as tmp_name:
        tmp = Path(tmp_name)
        files, formats = write_package_files(inputs, tmp, onnx=onnx, say=say, timings=timings)
        t = time.perf_counter()
        descr = _describe(
            inputs, files, tmp, say=say, authors=authors, github_user=github_user, license=license, version=version
        )
        report = _zip_test_and_rename(
            descr,
            out,
            overwrite=overwrite,
            github_user=github_user,
            run_test=run_test,
            say=say,
            timings=timings,
            notes=inputs.notes,
            started=t,
        )

    return PackageResult(
        path=out,
        seconds=time.perf_counter() - t0,
        size_bytes=out.stat().st_size,
        weight_formats=formats,
        test_source=inputs.test_in.source,
        report=report,
        timings=timings,
        notes=inputs.notes,
    )
