"""Read a bioimage.io model zip for prediction without importing bioimageio.

Only torch, numpy, yaml and zipfile: this is what the challenge container runs. It reads
``rdf.yaml`` (format 0.5), the ``fixed_zero_mean_unit_variance`` pre-processing (mean/std per
channel, applied as bioimageio.core applies it: ``(x - mean) / (std + 1e-6)``) and
``scale_linear`` post-processing (gain/offset per channel), and loads the weights:

- ai4life-kit packages (``config.ai4life_kit`` present, architecture ``UNet``): the state dict
  into :class:`ai4life_kit.models.unet.UNet`, exactly the module a run directory uses;
- any other package with the same tensor layout: its TorchScript weights.

Every file is checked against its ``sha256`` in the rdf; anything unusable raises
:class:`~ai4life_kit.errors.ModelLoadError` naming the problem.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ai4life_kit.data.normalization import PACKAGE_EPS, check_channel_values
from ai4life_kit.errors import ModelLoadError
from ai4life_kit.package_rdf import open_model_zip, read_member, read_rdf

__all__ = ["PackageContents", "read_package"]

_WEIGHT_CHOICES = ("auto", "pytorch_state_dict", "torchscript")


@dataclass
class PackageContents:
    """What :class:`~ai4life_kit.prediction.Predictor` needs, read from a package."""

    model: torch.nn.Module
    mean: list[float]
    std: list[float]
    target_mean: list[float]
    target_std: list[float]
    spatial_ndim: int
    depth: int
    halo: int
    weights_format: str
    name: str = ""
    eps: float = PACKAGE_EPS  # input normalisation (x - mean) / (std + eps); 0 for scale_linear
    algorithm: str | None = None  # config.ai4life_kit.algorithm of ai4life-kit's packages
    rdf: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_channels(self) -> int:
        return len(self.mean)


def _rdf(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    rdf = read_rdf(zf, path)
    fv = str(rdf.get("format_version", ""))
    if not fv.startswith("0.5."):
        raise ModelLoadError(
            f"{path} uses model format {fv or '(none)'}; ai4life-kit reads format 0.5 packages "
            "(convert it with `bioimageio update-format` or run it with bioimageio.core)"
        )
    return rdf


def _source(entry: Any) -> tuple[str, str | None]:
    """``(file name, sha256)`` of a file entry written as a string or a ``{source, sha256}`` mapping."""
    if isinstance(entry, str):
        return entry, None
    if isinstance(entry, dict) and isinstance(entry.get("source"), str):
        return entry["source"], entry.get("sha256")
    raise ModelLoadError(f"unreadable file entry {entry!r}")


def _per_channel(value: Any, n: int, what: str, path: Path) -> list[float]:
    if isinstance(value, (int, float)):
        values = [float(value)] * n
    elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        values = [float(v) for v in value]
        if len(values) == 1 and n > 1:
            values = values * n
    else:
        raise ModelLoadError(f"{path}: {what} must be a number or a list of numbers, got {value!r}")
    if len(values) != n:
        raise ModelLoadError(f"{path}: {what} has {len(values)} values for {n} channels")
    if not all(math.isfinite(v) for v in values):
        raise ModelLoadError(f"{path}: {what} contains NaN or Inf")
    return values


def _check_axes(tensor: dict[str, Any], kind: str, path: Path) -> tuple[int, int]:
    """Return ``(channels, spatial_ndim)`` for axes ``batch, channel, (z), y, x``."""
    axes = tensor.get("axes")
    if not isinstance(axes, list) or not all(isinstance(a, dict) for a in axes):
        raise ModelLoadError(f"{path}: the {kind} tensor has no 0.5-style axes list")
    types = [a.get("type") for a in axes]
    ids = [str(a.get("id", a.get("type"))) for a in axes]
    ok = (
        types[:2] == ["batch", "channel"]
        and all(t == "space" for t in types[2:])
        and ids[2:] in (["y", "x"], ["z", "y", "x"])
    )
    if not ok:
        raise ModelLoadError(
            f"{path}: {kind} axes {ids} are not supported by ai4life-kit's predictor "
            "(it needs batch, channel, (z), y, x); run this model with bioimageio.core"
        )
    names = axes[1].get("channel_names")
    n_channels = len(names) if isinstance(names, list) else int(axes[1].get("size", 1))
    return n_channels, len(types) - 2


def _steps(tensor: dict[str, Any], key: str) -> list[dict[str, Any]]:
    steps = tensor.get(key) or []
    return [s for s in steps if isinstance(s, dict) and s.get("id", s.get("name")) != "ensure_dtype"]


def _input_norm(tensor: dict[str, Any], n: int, path: Path) -> tuple[list[float], list[float], float]:
    """``(mean, std, eps)``: the pre-processing is ``(x - mean) / (std + eps)``."""
    steps = _steps(tensor, "preprocessing")
    if not steps:
        return [0.0] * n, [1.0] * n, 0.0
    if len(steps) > 1:
        raise ModelLoadError(f"{path}: {len(steps)} pre-processing steps; ai4life-kit runs at most one")
    step = steps[0]
    op, kwargs = step.get("id", step.get("name")), step.get("kwargs") or {}
    if op == "fixed_zero_mean_unit_variance":
        mean = _per_channel(kwargs.get("mean"), n, "pre-processing mean", path)
        std = _per_channel(kwargs.get("std"), n, "pre-processing std", path)
        eps = PACKAGE_EPS  # not in the rdf: every consumer uses bioimageio.core's default
    elif op == "scale_linear":  # x * gain + offset == (x - mean) / std, exactly (no eps)
        gain = _per_channel(kwargs.get("gain", 1.0), n, "pre-processing gain", path)
        offset = _per_channel(kwargs.get("offset", 0.0), n, "pre-processing offset", path)
        if any(g == 0 for g in gain):
            raise ModelLoadError(f"{path}: pre-processing gain of 0")
        std = [1.0 / g for g in gain]
        mean = [-o / g for o, g in zip(offset, gain, strict=True)]
        eps = 0.0
    else:
        raise ModelLoadError(
            f"{path}: pre-processing {op!r} is not supported by ai4life-kit's predictor "
            "(fixed_zero_mean_unit_variance or scale_linear); run this model with bioimageio.core"
        )
    # The same rule as for a run directory's normalization.json: no zero, negative or NaN std.
    std = check_channel_values(std, "std", f"{path}: pre-processing {op}", n)
    return mean, std, eps


def _output_norm(tensor: dict[str, Any], n: int, path: Path) -> tuple[list[float], list[float]]:
    steps = _steps(tensor, "postprocessing")
    if not steps:
        return [0.0] * n, [1.0] * n
    step = steps[0]
    op, kwargs = step.get("id", step.get("name")), step.get("kwargs") or {}
    if len(steps) > 1 or op != "scale_linear":
        ops = [s.get("id", s.get("name")) for s in steps]
        raise ModelLoadError(
            f"{path}: post-processing {ops} is not supported by ai4life-kit's predictor (scale_linear only); "
            "run this model with bioimageio.core"
        )
    gain = _per_channel(kwargs.get("gain", 1.0), n, "post-processing gain", path)
    offset = _per_channel(kwargs.get("offset", 0.0), n, "post-processing offset", path)
    return offset, gain


def _means_of_probabilistic(offset: list[float], gain: list[float], path: Path) -> tuple[list[float], list[float]]:
    """A probabilistic network's output: C means, then C scales post-processed by the same gain and no offset.

    The predictor keeps one (mean, std) per target channel and applies the std alone to the scales.
    """
    c = len(offset) // 2
    if len(offset) != 2 * c or gain[c:] != gain[:c] or any(o != 0 for o in offset[c:]):
        raise ModelLoadError(
            f"{path}: a probabilistic network's output needs its means' gains repeated for the scales and "
            f"offsets of 0 for them; it has gain {gain}, offset {offset}"
        )
    return offset[:c], gain[:c]


def _depth_and_halo(rdf: dict[str, Any], inp: dict[str, Any], out: dict[str, Any], path: Path) -> tuple[int, int]:
    ours = (rdf.get("config") or {}).get("ai4life_kit") or {}
    halo = max([int(a.get("halo", 0)) for a in out["axes"] if isinstance(a, dict)] or [0])
    if isinstance(ours.get("depth"), int):
        return ours["depth"], halo
    steps = {int(a["size"]["step"]) for a in inp["axes"] if isinstance(a.get("size"), dict) and "step" in a["size"]}
    if len(steps) == 1:
        step = steps.pop()
        if step >= 1 and step & (step - 1) == 0:
            return int(math.log2(step)), halo
    raise ModelLoadError(f"{path}: cannot tell the network's size multiple (input sizes need a power-of-two step)")


def _algorithm(rdf: dict[str, Any]) -> str | None:
    """``config.ai4life_kit.algorithm`` (decides the test-time augmentations); ``None`` for other packages."""
    ours = (rdf.get("config") or {}).get("ai4life_kit") or {}
    algo = ours.get("algorithm") if isinstance(ours, dict) else None
    return algo.strip().lower() if isinstance(algo, str) else None


def _load_weights(zf: zipfile.ZipFile, rdf: dict[str, Any], path: Path, weights: str) -> tuple[torch.nn.Module, str]:
    entries = rdf.get("weights") or {}
    ours = (rdf.get("config") or {}).get("ai4life_kit") or {}
    sd = entries.get("pytorch_state_dict")
    can_sd = (
        isinstance(sd, dict)
        and isinstance(sd.get("architecture"), dict)
        and sd["architecture"].get("callable") == "UNet"
        and bool(ours)
    )
    if weights == "auto":
        order = ["pytorch_state_dict", "torchscript"] if can_sd else ["torchscript"]
    else:
        order = [weights]
    for fmt in order:
        entry = entries.get(fmt)
        if not isinstance(entry, dict):
            continue
        name, sha = _source(entry)
        data = read_member(zf, path, name, sha)
        try:
            if fmt == "torchscript":
                model = torch.jit.load(io.BytesIO(data), map_location="cpu")
            else:
                if not can_sd:
                    raise ModelLoadError(
                        f"{path}: its pytorch_state_dict architecture is not ai4life-kit's UNet; use torchscript"
                    )
                from ai4life_kit.models.unet import UNet

                kwargs = sd["architecture"].get("kwargs") or ours.get("model_args") or {}
                model = UNet(**kwargs)
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                model.load_state_dict(state, strict=True)
        except ModelLoadError:
            raise
        except Exception as exc:  # torch raises many types for foreign / damaged weights
            raise ModelLoadError(f"{path}: cannot load its {fmt} weights ({type(exc).__name__}: {exc})") from None
        return model.eval(), fmt
    available = sorted(k for k, v in entries.items() if v)
    raise ModelLoadError(
        f"{path} has no weights ai4life-kit can run (it has {available}; needs torchscript"
        + (" or ai4life-kit's pytorch_state_dict" if weights == "auto" else f", asked for {weights}")
        + ")"
    )


def read_package(path: Path, weights: str = "auto") -> PackageContents:
    """Read a model zip: network (on the CPU, eval mode), normalisation, dimensions, halo.

    Parameters
    ----------
    path
        A bioimage.io model zip (format 0.5) with one input and one output tensor.
    weights
        ``auto`` (ai4life-kit's state dict + UNet when present, else TorchScript),
        ``pytorch_state_dict`` or ``torchscript``.
    """
    if weights not in _WEIGHT_CHOICES:
        raise ModelLoadError(f"weights {weights!r}: choose one of {', '.join(_WEIGHT_CHOICES)}")
    path = Path(path)
    with open_model_zip(path) as zf:
        rdf = _rdf(zf, path)
        inputs, outputs = rdf.get("inputs") or [], rdf.get("outputs") or []
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(
                f"{path} has {len(inputs)} input and {len(outputs)} output tensors; ai4life-kit runs one of each"
            )
        inp, out = inputs[0], outputs[0]
        n_in, ndim = _check_axes(inp, "input", path)
        n_out, ndim_out = _check_axes(out, "output", path)
        if ndim != ndim_out:
            raise ModelLoadError(f"{path}: input is {ndim}D but output is {ndim_out}D")
        resized = [a.get("id") for a in out.get("axes") or [] if isinstance(a, dict) and a.get("scale", 1) != 1]
        if resized:
            # Tiles, halos and outputs here are all input-sized; a super-resolution package runs in
            # bioimage.io's consumers, and its run directory in ai4life-kit (prediction.restoration).
            raise ModelLoadError(
                f"{path}: its output is resampled along {', '.join(map(str, resized))} "
                f"({'isotropic reconstruction' if resized == ['z'] else 'super-resolution'}); "
                "ai4life-kit predicts such models from their run directory, bioimage.io consumers run the package"
            )
        mean, std, eps = _input_norm(inp, n_in, path)
        target_mean, target_std = _output_norm(out, n_out, path)
        if (rdf.get("config") or {}).get("ai4life_kit"):
            # ai4life-kit's post-processing gain is the training target std: positive, as in
            # normalization.json (a foreign package may scale by any finite gain)
            check_channel_values(target_std, "gain", f"{path}: post-processing scale_linear", n_out, positive=True)
        depth, halo = _depth_and_halo(rdf, inp, out, path)
        model, fmt = _load_weights(zf, rdf, path, weights)
    if getattr(model, "probabilistic", False):
        target_mean, target_std = _means_of_probabilistic(target_mean, target_std, path)
    return PackageContents(
        model=model,
        mean=mean,
        std=std,
        target_mean=target_mean,
        target_std=target_std,
        spatial_ndim=ndim,
        depth=depth,
        halo=halo,
        weights_format=fmt,
        name=str(rdf.get("name", "")),
        eps=eps,
        algorithm=_algorithm(rdf),
        rdf=rdf,
    )
