"""Build, write and test a bioimage.io model package from a run directory.

The description is built with ``bioimageio.spec.model.v0_5`` (never as hand-written YAML);
the serialised rdf is then written as ``format_version: 0.5.4`` with plain-string
``documentation`` and ``covers``, which the current bioimageio stack and the older one that
ilastik ships (bioimageio.spec 0.5.9.1, bioimageio.core 0.10.2) both accept; spec >= 0.5.11
would write ``{source, sha256}`` mappings that the older stack and deepImageJ reject.

The zip is written under a temporary name next to ``out``, tested with bioimageio.core, and
only renamed to ``out`` when the test passed.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.errors import Ai4LifeKitError, UserInputError
from ai4life_kit.export._testrun import collect_leaked_files, register_github_users
from ai4life_kit.export.rundir import RunInfo, load_run
from ai4life_kit.export.testdata import TestInput, make_test_input, min_size
from ai4life_kit.fileio import (
    apply_umask_mode,
    check_writable,
    remove_stale_temporaries,
    scratch_dir,
    temp_prefix,
    umask_file_mode,
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

RDF_NAME = "rdf.yaml"
COMPAT_FORMAT_VERSION = "0.5.4"
_TAGS_BASE = ["denoising", "pytorch", "unet", "fluorescence-light-microscopy"]


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


def _input_normalisation(run: RunInfo):
    """The input's pre-processing step: ``(x - mean) / (std + eps)``, as training normalised.

    ``fixed_zero_mean_unit_variance`` in general. Data with a tiny intensity scale (a std below
    :data:`~ai4life_kit.data.normalization.TINY_STD`, e.g. float images in metres or moles)
    get the same arithmetic without eps as ``scale_linear`` (gain ``1/std``, offset
    ``-mean/std``): consumers' ``eps`` of 1e-6 would swamp such a std, and the format requires
    ``std >= 1e-6`` anyway.
    """
    from bioimageio.spec.model import v0_5 as m

    from ai4life_kit.data.normalization import input_eps

    if input_eps(run.std) > 0:
        return m.FixedZeroMeanUnitVarianceDescr(
            kwargs=m.FixedZeroMeanUnitVarianceAlongAxisKwargs(
                mean=list(run.mean), std=list(run.std), axis=m.AxisId("channel")
            )
        )
    return m.ScaleLinearDescr(
        kwargs=m.ScaleLinearAlongAxisKwargs(
            axis=m.AxisId("channel"),
            gain=[1.0 / s for s in run.std],
            offset=[-mu / s for mu, s in zip(run.mean, run.std, strict=True)],
        )
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


def _version(v: str) -> str:
    return v.split("+")[0]


def build_model_descr(
    run: RunInfo,
    files: dict[str, Path],
    *,
    name: str,
    description: str,
    authors: list[str],
    github_user: str | None,
    license: str,
    version: str,
    tags: list[str],
):
    """The :class:`bioimageio.spec.model.v0_5.ModelDescr` of a package whose files are in ``files``."""
    import torch
    from bioimageio.spec.generic.v0_3 import FileDescr
    from bioimageio.spec.model import v0_5 as m

    from ai4life_kit.export.docs import algorithm_info

    halo, step = run.halo, run.step
    smallest = min_size(halo, step)
    space = ["z", "y", "x"][-run.dims :]
    ch_in = [f"channel{i}" for i in range(run.in_channels)]
    ch_out = [f"channel{i}" for i in range(run.out_channels)]

    input_axes: list[Any] = [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier(c) for c in ch_in])]
    input_axes += [m.SpaceInputAxis(id=m.AxisId(a), size=m.ParameterizedSize(min=smallest, step=step)) for a in space]
    output_axes: list[Any] = [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier(c) for c in ch_out])]
    output_axes += [
        m.SpaceOutputAxisWithHalo(
            id=m.AxisId(a), halo=halo, size=m.SizeReference(tensor_id=m.TensorId("input"), axis_id=m.AxisId(a))
        )
        for a in space
    ]
    inp = m.InputTensorDescr(
        id=m.TensorId("input"),
        description="raw noisy image (any intensity range; normalised inside the model)",
        axes=input_axes,
        test_tensor=FileDescr(source=files["test_input"]),
        sample_tensor=FileDescr(source=files["sample_input"]),
        data=m.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[_input_normalisation(run)],
    )
    out = m.OutputTensorDescr(
        id=m.TensorId("output"),
        description="denoised image in the input's intensity range",
        axes=output_axes,
        test_tensor=FileDescr(source=files["test_output"]),
        sample_tensor=FileDescr(source=files["sample_output"]),
        data=m.IntervalOrRatioDataDescr(type="float32"),
        postprocessing=[
            m.ScaleLinearDescr(
                kwargs=m.ScaleLinearAlongAxisKwargs(
                    axis=m.AxisId("channel"), gain=list(run.target_std), offset=list(run.target_mean)
                )
            )
        ],
    )

    pytorch_version = m.Version(_version(torch.__version__))
    weights: dict[str, Any] = {
        "pytorch_state_dict": m.PytorchStateDictWeightsDescr(
            source=files["state_dict"],
            architecture=m.ArchitectureFromFileDescr(
                source=files["architecture"], callable=m.Identifier("UNet"), kwargs=dict(run.model_args)
            ),
            pytorch_version=pytorch_version,
        ),
        "torchscript": m.TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=pytorch_version, parent="pytorch_state_dict"
        ),
    }
    if "onnx" in files:
        from ai4life_kit.export.weights import ONNX_OPSET

        weights["onnx"] = m.OnnxWeightsDescr(
            source=files["onnx"], opset_version=ONNX_OPSET, parent="pytorch_state_dict"
        )

    if github_user:
        register_github_users([github_user])
    author_list = [
        m.Author(name=a, **({"github_user": github_user} if (github_user and i == 0) else {}))
        for i, a in enumerate(authors)
    ]
    maintainers = [m.Maintainer(name=authors[0], github_user=github_user)] if github_user else []
    cites = []
    for info in algorithm_info(run):
        if info.doi:
            cites.append(m.CiteEntry(text=info.cite_text, doi=m.Doi(info.doi)))
        else:
            cites.append(m.CiteEntry(text=info.cite_text, url=m.HttpUrl(info.url)))

    n_params = sum(int(np.prod(t.shape)) for t in run.model_state.values() if hasattr(t, "shape"))
    t = run.spec.training
    algo = run.spec.algorithm.name
    loss = getattr(run.spec.algorithm, "loss", "mse")
    config = m.Config(
        bioimageio=m.BioimageioConfig(
            architecture_type=f"{run.dims}D U-Net",
            architecture_description=(
                f"U-Net, depth {run.depth}, width {run.model_args.get('width')}"
                + (", N2V2 variant (max-blur pooling, no top skip connection)" if run.model_args.get("n2v2") else "")
            ),
            modality="fluorescence light microscopy",
            task="denoising",
            model_parameter_count=n_params,
            training=m.TrainingDetails(
                training_preprocessing="zero-mean unit-variance normalisation with the training data statistics",
                training_epochs=float(t.epochs),
                training_batch_size=float(t.batch_size),
                initial_learning_rate=t.learning_rate,
                learning_rate_schedule=t.lr_schedule,
                loss_function=f"{loss.upper()} on masked pixels" if run.spec.is_self_supervised else loss.upper(),
                optimizer="Adam",
            ),
        ),
        # deepImageJ switches tiling off unless this says true.
        deepimagej={"allow_tiling": True, "pyramidal_model": False},
        ai4life_kit={
            "algorithm": algo,
            "model_args": dict(run.model_args),
            "depth": run.depth,
            "halo": halo,
            "spec_version": run.spec.version,
        },
    )
    return m.ModelDescr(
        name=name,
        description=description,
        authors=author_list,
        maintainers=maintainers,
        cite=cites,
        license=license,
        tags=tags,
        version=version,
        documentation=FileDescr(source=files["documentation"]),
        covers=[FileDescr(source=files["cover"])],
        attachments=[FileDescr(source=files["training_spec"])],
        inputs=[inp],
        outputs=[out],
        weights=m.WeightsDescr(**weights),
        config=config,
    )


def _patch_rdf_for_old_consumers(rdf: dict[str, Any]) -> dict[str, Any]:
    """Write 0.5.4 with plain-string documentation and covers (see the module docstring)."""
    rdf = dict(rdf)
    rdf["format_version"] = COMPAT_FORMAT_VERSION
    doc = rdf.get("documentation")
    if isinstance(doc, dict):
        rdf["documentation"] = doc["source"]
    covers = rdf.get("covers")
    if isinstance(covers, list):
        rdf["covers"] = [c["source"] if isinstance(c, dict) else c for c in covers]
    # bioimageio.spec inserts `ensure_dtype` around every processing list and re-inserts it on
    # load; written out they turn our one pre-processing step into three, which consumers that
    # accept a single step (BiaPy) reject. Drop the ones that only restate the tensor's dtype.
    for key, proc_key in (("inputs", "preprocessing"), ("outputs", "postprocessing")):
        tensors = []
        for tensor in rdf.get(key, []):
            tensor = dict(tensor)
            dtype = (tensor.get("data") or {}).get("type", "float32") if isinstance(tensor.get("data"), dict) else None
            steps = tensor.get(proc_key)
            if dtype is not None and isinstance(steps, list):
                tensor[proc_key] = [
                    p
                    for p in steps
                    if not (p.get("id") == "ensure_dtype" and p.get("kwargs", {}).get("dtype") == dtype)
                ]
                if not tensor[proc_key]:
                    del tensor[proc_key]
            tensors.append(tensor)
        if tensors:
            rdf[key] = tensors
    return rdf


def _write_zip(descr, zip_path: Path) -> None:
    """Serialise ``descr`` with bioimageio.spec and write the package zip (rdf patched).

    The zip is written with :mod:`zipfile` from local paths (bioimageio.spec's ``write_zip``
    leaves a file handle open per packaged file).
    """
    from zipfile import ZIP_DEFLATED, ZipFile, ZipInfo

    from bioimageio.spec._internal.io_utils import write_yaml
    from bioimageio.spec._package import get_package_content

    rdf: dict[str, Any] | None = None
    files: dict[str, Path] = {}
    with collect_leaked_files():
        content = get_package_content(descr, bioimageio_yaml_file_name=RDF_NAME)
        for fname, value in content.items():
            if isinstance(value, dict):
                rdf = _patch_rdf_for_old_consumers(value)
            else:  # every file of ours is local
                files[fname] = Path(value.source.absolute())
        del content
    if rdf is None:  # pragma: no cover - bioimageio.spec always returns the rdf
        raise Ai4LifeKitError("bioimageio.spec returned no rdf for the package")
    text = io.StringIO()
    write_yaml(rdf, text)
    with ZipFile(zip_path, "w", compression=ZIP_DEFLATED, compresslevel=6) as zf:
        # writestr would store the rdf as 0600: unzipped, only its owner could read it
        info = ZipInfo(RDF_NAME, date_time=time.localtime()[:6])
        info.compress_type = ZIP_DEFLATED
        info.external_attr = umask_file_mode() << 16
        zf.writestr(info, text.getvalue())
        for fname, path in files.items():
            zf.write(path, arcname=fname)


_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")


def _default_name(run: RunInfo) -> str:
    """The spec's name or ``<algorithm> <dims>D denoiser (<run folder>)``, in bioimage.io's characters."""
    from ai4life_kit.export.docs import algorithm_info

    if run.spec.name:
        name = run.spec.name
    else:
        name = f"{algorithm_info(run)[0].tag.upper()} {run.dims}D denoiser ({run.run_dir.resolve().name})"
    name = "".join(c if c in _NAME_CHARS else "-" for c in name).strip()
    if len(name) < 5:
        name = f"{name} denoiser"
    return name[:64].strip()


def _default_description(run: RunInfo) -> str:
    from ai4life_kit.export.docs import algorithm_info

    algo = algorithm_info(run)[0]
    kind = "3D stacks" if run.dims == 3 else "2D images"
    return (
        f"{algo.title} denoiser for fluorescence microscopy {kind} "
        f"({run.in_channels} channel{'s' if run.in_channels > 1 else ''}), trained with ai4life-kit."
    )


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
    name = (name or _default_name(run)).strip()
    description = (description or _default_description(run)).strip()
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
        tags = [*_TAGS_BASE, f"{run.dims}d", *dict.fromkeys(i.tag for i in docs.algorithm_info(run))]
        descr = _build_checked(
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
                _write_zip(descr, tmp_zip)
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


def _build_checked(run: RunInfo, files: dict[str, Path], *, root: Path, **kwargs: Any):
    """Build the description inside a validation context; turn pydantic errors into one message."""
    from bioimageio.spec import ValidationContext
    from pydantic import ValidationError

    try:
        with collect_leaked_files(), ValidationContext(root=root, perform_io_checks=True, log_warnings=False):
            return build_model_descr(run, files, **kwargs)
    except ValidationError as exc:
        options = {
            "name": "--name",
            "license": "--license",
            "version": "--version",
            "description": "--description",
            "authors": "--author",
            "maintainers": "--github-user",
        }
        parts: list[str] = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            head = str(err["loc"][0]) if err["loc"] else ""
            value = err.get("input")
            if head == "name" and "restricted to" in err["msg"]:
                part = f"--name {value!r}: use only letters, digits, spaces and _+-() (5 to 128 characters)"
            elif head == "license":
                part = f"--license {value!r} is not an SPDX license identifier (e.g. MIT, Apache-2.0, CC-BY-4.0)"
            else:
                shown = f" {value!r}" if head in options and not isinstance(value, (dict, list)) else ""
                msg = err["msg"] if len(err["msg"]) < 200 else err["msg"][:200] + "..."
                part = f"{options.get(head, loc)}{shown}: {msg}"
            if part not in parts:
                parts.append(part)
        raise UserInputError("invalid package metadata: " + "; ".join(parts)) from None
