"""The bioimage.io description (``bioimageio.spec.model.v0_5.ModelDescr``) of a package.

:func:`build_model_descr` assembles it from the run and the package's files: the input and
output tensors (axes, processing), the weights, the people and citations, and the config.
:func:`build_checked` builds it inside a validation context and turns pydantic's errors into
one message that names the command-line options. Writing and testing the package is
:mod:`ai4life_kit.export.build`'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.errors import UserInputError
from ai4life_kit.export._testrun import collect_leaked_files, register_github_users
from ai4life_kit.export.docs import algorithm_info
from ai4life_kit.export.rundir import RunInfo

__all__ = ["build_checked", "build_model_descr", "default_description", "default_name", "package_tags"]

_TAGS_BASE = ["denoising", "pytorch", "unet", "fluorescence-light-microscopy"]
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")


def _task_noun(run: RunInfo) -> str:
    task = run.spec.task
    return {
        "super_resolution": f"{task.factor}x super-resolution",
        "isotropic": f"isotropic reconstruction ({task.factor}x in z)",
        "deconvolution": "deconvolution",
    }.get(task.kind, "denoiser")


def default_name(run: RunInfo) -> str:
    """The spec's name or ``<algorithm> <dims>D denoiser (<run folder>)``, in bioimage.io's characters."""
    if run.spec.name:
        name = run.spec.name
    else:
        algo = algorithm_info(run)[0].tag.upper()
        name = f"{algo} {run.package_dims}D {_task_noun(run)} ({run.run_dir.resolve().name})"
    name = "".join(c if c in _NAME_CHARS else "-" for c in name).strip()
    if len(name) < 5:
        name = f"{name} denoiser"
    return name[:64].strip()


def default_description(run: RunInfo) -> str:
    """``<algorithm> denoiser for fluorescence microscopy <2D images|3D stacks> (<n> channels), ...``."""
    algo = algorithm_info(run)[0]
    kind = "3D stacks" if run.package_dims == 3 else "2D images"
    return (
        f"{algo.title} {_task_noun(run)} for fluorescence microscopy {kind} "
        f"({run.in_channels} channel{'s' if run.in_channels > 1 else ''}), trained with ai4life-kit."
    )


def package_tags(run: RunInfo) -> list[str]:
    """bioimage.io tags: denoising, framework, network, modality, ``2d``/``3d``, the credited algorithms."""
    return [*_TAGS_BASE, f"{run.package_dims}d", *dict.fromkeys(i.tag for i in algorithm_info(run))]


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


def _version(v: str) -> str:
    return v.split("+")[0]


def _channel_axis(n: int, names: list[str] | None = None):
    from bioimageio.spec.model import v0_5 as m

    return m.ChannelAxis(channel_names=[m.Identifier(c) for c in (names or [f"channel{i}" for i in range(n)])])


def _tensor_fields(role: str, files: dict[str, Path]) -> dict[str, Any]:
    """What the input and output tensors have in common: id ``role``, test and sample tensor, float32."""
    from bioimageio.spec.generic.v0_3 import FileDescr
    from bioimageio.spec.model import v0_5 as m

    return {
        "id": m.TensorId(role),
        "test_tensor": FileDescr(source=files[f"test_{role}"]),
        "sample_tensor": FileDescr(source=files[f"sample_{role}"]),
        "data": m.IntervalOrRatioDataDescr(type="float32"),
    }


def _input_descr(run: RunInfo, files: dict[str, Path]):
    """The input tensor: ``b, c, (z), y, x`` of sizes ``min + n * step``, normalised as in training."""
    from bioimageio.spec.model import v0_5 as m

    axes: list[Any] = [m.BatchAxis(), _channel_axis(run.in_channels)]
    axes += [
        m.SpaceInputAxis(id=m.AxisId(a.id), size=m.ParameterizedSize(min=a.min, step=a.step)) for a in run.package_axes
    ]
    return m.InputTensorDescr(
        **_tensor_fields("input", files),
        description="raw noisy image (any intensity range; normalised inside the model)",
        axes=axes,
        preprocessing=[_input_normalisation(run)],
    )


def _output_descr(run: RunInfo, files: dict[str, Path]):
    """The output tensor: the input's spatial sizes with the halo, mapped back to raw intensities."""
    from bioimageio.spec.model import v0_5 as m

    axes: list[Any] = [m.BatchAxis(), _channel_axis(run.n_outputs, run.output_channel_names)]
    # Super-resolution (y, x) and isotropic reconstruction (z): the axis is `factor` times finer
    # (scale: the size of a pixel), so its size is the input's times the factor (bioimage.io:
    # reference size * its scale / this scale).
    f = run.upsample_factor
    for a in run.package_axes:
        size = m.SizeReference(tensor_id=m.TensorId("input"), axis_id=m.AxisId(a.id))
        if a.halo:
            axes.append(m.SpaceOutputAxisWithHalo(id=m.AxisId(a.id), halo=a.halo, size=size, scale=1.0 / a.factor))
        else:  # an isotropic package for volumes too thin for a z halo (RunInfo.package_axes)
            axes.append(m.SpaceOutputAxis(id=m.AxisId(a.id), size=size, scale=1.0 / a.factor))
    if run.isotropic:
        k = run.spec.task.factor
        what = f"isotropic volume: {k}x the input's z planes (the last {k - 1} past it)"
    elif f > 1:
        what = f"restored image {f}x larger in y and x, in the input's intensity range"
    else:
        what = "restored (denoised) image in the input's intensity range"
    return m.OutputTensorDescr(
        **_tensor_fields("output", files),
        # at most 128 characters (bioimageio.spec); the README says the rest
        description="Laplace means (the denoised image, input's intensity range), then their scales b in the same units"
        if run.probabilistic
        else what,
        axes=axes,
        postprocessing=[
            m.ScaleLinearDescr(
                kwargs=m.ScaleLinearAlongAxisKwargs(
                    axis=m.AxisId("channel"), gain=run.output_gain, offset=run.output_offset
                )
            )
        ],
    )


def _weights_descr(run: RunInfo, files: dict[str, Path]):
    """State dict (with its architecture file), TorchScript and, when exported, ONNX."""
    import torch
    from bioimageio.spec.model import v0_5 as m

    pytorch_version = m.Version(_version(torch.__version__))
    weights: dict[str, Any] = {
        "pytorch_state_dict": m.PytorchStateDictWeightsDescr(
            source=files["state_dict"],
            architecture=m.ArchitectureFromFileDescr(
                source=files["architecture"],
                callable=m.Identifier(run.architecture_callable),
                kwargs=run.package_model_args,
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
    return m.WeightsDescr(**weights)


def _people(authors: list[str], github_user: str | None) -> dict[str, Any]:
    """``authors`` (the first with ``github_user``) and ``maintainers`` (the first author, with a user)."""
    from bioimageio.spec.model import v0_5 as m

    if github_user:
        register_github_users([github_user])
    author_list = [
        m.Author(name=a, **({"github_user": github_user} if (github_user and i == 0) else {}))
        for i, a in enumerate(authors)
    ]
    maintainers = [m.Maintainer(name=authors[0], github_user=github_user)] if github_user else []
    return {"authors": author_list, "maintainers": maintainers}


def _citations(run: RunInfo) -> list[Any]:
    """One ``cite`` entry per credited algorithm, by DOI where it has one, else by URL."""
    from bioimageio.spec.model import v0_5 as m

    cites = []
    for info in algorithm_info(run):
        if info.doi:
            cites.append(m.CiteEntry(text=info.cite_text, doi=m.Doi(info.doi)))
        else:
            cites.append(m.CiteEntry(text=info.cite_text, url=m.HttpUrl(info.url)))
    return cites


def _config(run: RunInfo):
    """``config``: bioimage.io's architecture and training details, deepImageJ's tiling, our own."""
    from bioimageio.spec.model import v0_5 as m

    n_params = sum(int(np.prod(t.shape)) for t in run.model_state.values() if hasattr(t, "shape"))
    t = run.spec.training
    algo = run.spec.algorithm.name
    loss = getattr(run.spec.algorithm, "loss", "mse")
    return m.Config(
        bioimageio=m.BioimageioConfig(
            architecture_type=f"{run.dims}D U-Net" + (" on XZ and YZ slices" if run.isotropic else ""),
            architecture_description=(
                f"U-Net, depth {run.depth}, width {run.model_args.get('width')}"
                + (", N2V2 variant (max-blur pooling, no top skip connection)" if run.model_args.get("n2v2") else "")
            ),
            modality="fluorescence light microscopy",
            task={
                "super_resolution": "super-resolution",
                "deconvolution": "deconvolution",
                "isotropic": "isotropic reconstruction",
            }.get(run.spec.task.kind, "denoising"),
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
            "model_args": run.package_model_args,
            "depth": run.depth,
            "halo": run.halo,
            "spec_version": run.spec.version,
        },
    )


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
    from bioimageio.spec.generic.v0_3 import FileDescr
    from bioimageio.spec.model import v0_5 as m

    inp = _input_descr(run, files)
    out = _output_descr(run, files)
    weights = _weights_descr(run, files)
    people = _people(authors, github_user)
    cites = _citations(run)
    config = _config(run)
    return m.ModelDescr(
        name=name,
        description=description,
        **people,
        cite=cites,
        license=license,
        tags=tags,
        version=version,
        documentation=FileDescr(source=files["documentation"]),
        covers=[FileDescr(source=files["cover"])],
        attachments=[FileDescr(source=files["training_spec"])],
        inputs=[inp],
        outputs=[out],
        weights=weights,
        config=config,
    )


_OPTIONS = {
    "name": "--name",
    "license": "--license",
    "version": "--version",
    "description": "--description",
    "authors": "--author",
    "maintainers": "--github-user",
}


def _error_part(err: dict[str, Any]) -> str:
    """One pydantic error as the command-line option it came from and what is wrong with it."""
    loc = ".".join(str(p) for p in err["loc"])
    head = str(err["loc"][0]) if err["loc"] else ""
    value = err.get("input")
    if head == "name" and "restricted to" in err["msg"]:
        return f"--name {value!r}: use only letters, digits, spaces and _+-() (5 to 128 characters)"
    if head == "license":
        return f"--license {value!r} is not an SPDX license identifier (e.g. MIT, Apache-2.0, CC-BY-4.0)"
    shown = f" {value!r}" if head in _OPTIONS and not isinstance(value, (dict, list)) else ""
    msg = err["msg"] if len(err["msg"]) < 200 else err["msg"][:200] + "..."
    return f"{_OPTIONS.get(head, loc)}{shown}: {msg}"


def build_checked(run: RunInfo, files: dict[str, Path], *, root: Path, **kwargs: Any):
    """Build the description inside a validation context; turn pydantic errors into one message.

    Raises
    ------
    UserInputError
        ``invalid package metadata: ...``, one part per distinct error, naming the option.
    """
    from bioimageio.spec import ValidationContext
    from pydantic import ValidationError

    try:
        with collect_leaked_files(), ValidationContext(root=root, perform_io_checks=True, log_warnings=False):
            return build_model_descr(run, files, **kwargs)
    except ValidationError as exc:
        parts: list[str] = []
        for err in exc.errors():
            part = _error_part(err)
            if part not in parts:
                parts.append(part)
        raise UserInputError("invalid package metadata: " + "; ".join(parts)) from None
