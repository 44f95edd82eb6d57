"""Read what packaging needs from a run directory (no bioimageio import here).

The run directory's files and schemas are :mod:`ai4life_kit.rundir`'s; this is packaging's view
of them: ``spec.yaml``, ``normalization.json``, ``checkpoints/best.pt`` and (optionally)
``training_summary.json`` and ``metrics.csv``. Every problem is a :class:`ModelLoadError` naming the file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai4life_kit.config import TrainingSpec, load_spec
from ai4life_kit.data.normalization import read_normalization
from ai4life_kit.errors import ConfigError, ModelLoadError
from ai4life_kit.models import halo_for_depth
from ai4life_kit.rundir import (
    METRICS_FILE,
    NORMALIZATION_FILE,
    SPEC_FILE,
    ModelCheckpoint,
    checkpoint_path,
    is_ensemble_dir,
    read_summary,
)

__all__ = ["PackageAxis", "RunInfo", "load_run", "halo_for_depth", "min_size"]


def input_halo_on_fine_grid(halo: int, factor: int) -> int:
    """Input pixels whose ``factor`` output pixels each cover a network radius of ``halo`` on the fine
    grid, plus the interpolation's one input pixel: the halo of super-resolution (y, x) and of
    isotropic reconstruction (z), so that blocks of a resampling package meet without seams."""
    return -(-halo // factor) + 1


def min_size(halo: int, step: int) -> int:
    """Smallest valid spatial size: more than ``2 * halo`` and a multiple of ``step``."""
    return 2 * halo + step


@dataclass(frozen=True)
class PackageAxis:
    """One spatial axis of a package's tensors: the input's valid sizes, the output's halo and scale."""

    id: str
    """``z``, ``y`` or ``x``."""
    min: int
    """Smallest input size (input pixels)."""
    step: int
    """Valid input sizes are ``min + n * step``."""
    halo: int
    """The output's halo, in output pixels."""
    factor: int = 1
    """Output pixels per input pixel (bioimage.io: the output axis' ``scale`` is ``1 / factor``)."""


@dataclass
class RunInfo:
    """Everything read from a run directory that goes into a package."""

    run_dir: Path
    spec: TrainingSpec
    model_args: dict[str, Any]
    model_state: dict[str, Any]
    mean: list[float]
    std: list[float]
    target_mean: list[float]
    target_std: list[float]
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, str]] = field(default_factory=list)
    checkpoint_epoch: int | None = None

    @property
    def dims(self) -> int:
        return int(self.model_args.get("dims", self.spec.data.dims))

    @property
    def depth(self) -> int:
        return int(self.model_args.get("depth", self.spec.model.depth))

    @property
    def in_channels(self) -> int:
        return int(self.model_args.get("in_channels", 1))

    @property
    def out_channels(self) -> int:
        return int(self.model_args.get("out_channels", self.in_channels))

    @property
    def probabilistic(self) -> bool:
        """Whether the network predicts Laplace scales after its means (``algorithm.loss: laplace``)."""
        return bool(self.model_args.get("probabilistic"))

    @property
    def n_outputs(self) -> int:
        """Channels of the package's output: the means, then (probabilistic) their Laplace scales."""
        return self.out_channels * (2 if self.probabilistic else 1)

    @property
    def output_channel_names(self) -> list[str]:
        """``channel0..`` ; probabilistic: ``mean`` and ``scale`` (``mean0.., scale0..`` for several channels)."""
        c = self.out_channels
        if not self.probabilistic:
            return [f"channel{i}" for i in range(c)]
        if c == 1:
            return ["mean", "scale"]
        return [f"mean{i}" for i in range(c)] + [f"scale{i}" for i in range(c)]

    @property
    def output_gain(self) -> list[float]:
        """Post-processing gain per output channel: the target std, for a scale too (a width, not a level)."""
        return list(self.target_std) * (2 if self.probabilistic else 1)

    @property
    def output_offset(self) -> list[float]:
        """Post-processing offset per output channel: the target mean for means, 0 for scales."""
        return list(self.target_mean) + ([0.0] * self.out_channels if self.probabilistic else [])

    @property
    def step(self) -> int:
        return 2**self.depth

    @property
    def halo(self) -> int:
        """The input's halo: the receptive-field radius (in input pixels; on the fine grid for super-resolution)."""
        return halo_for_depth(self.depth)

    @property
    def upsample_factor(self) -> int:
        """Super-resolution: the output is this many times larger in Y and X (1 otherwise)."""
        return self.spec.task.output_scale

    @property
    def output_halo(self) -> int:
        """The output's halo in output pixels: for super-resolution a whole number of input pixels
        covering the network's radius on the fine grid plus the interpolation's one input pixel."""
        f = self.upsample_factor
        return self.halo if f == 1 else f * input_halo_on_fine_grid(self.halo, f)

    @property
    def isotropic(self) -> bool:
        """An isotropic-reconstruction run: a 2D network, packaged as a volume-to-volume model."""
        return self.spec.task.kind == "isotropic"

    @property
    def package_dims(self) -> int:
        """Spatial axes of the package's tensors: the network's, or 3 for isotropic reconstruction."""
        return 3 if self.isotropic else self.dims

    @property
    def package_axes(self) -> list[PackageAxis]:
        """The package's spatial axes (``z, y, x`` order).

        Same-size and super-resolution networks: every axis ``min = 2 * halo + step`` (halo in
        input pixels). Isotropic reconstruction: y and x likewise; z carries the Z-interpolated
        grid of :class:`~ai4life_kit.models.unet.IsotropicUNet`, ``factor`` output planes per
        input plane, so its output halo is whole input planes covering the network's radius plus
        the interpolation's one, and its valid sizes keep ``factor * Z`` a multiple of ``step``.
        bioimageio.spec asks every output to be larger than twice its halo at the smallest input,
        so the smallest z is ``2 * halo + 1`` planes (19 at ``factor`` 4 and depth 2, 11 at ``factor``
        8). Isotropic CARE trains on the very volumes it restores: when one of them is thinner
        than that, z gets no halo (2 planes at least), so the package takes such volumes whole,
        at the price of seams where a consumer cuts a volume into z blocks (:attr:`z_seams`).
        """
        import math

        lateral = min_size(self.halo, self.step)
        if not self.isotropic:
            f = self.upsample_factor
            return [
                PackageAxis(a, lateral, self.step, self.output_halo, f if a in "yx" else 1) for a in "zyx"[-self.dims :]
            ]
        f = self.spec.task.factor
        z_halo = input_halo_on_fine_grid(self.halo, f)  # input planes
        z_step = self.step // math.gcd(self.step, f)
        z_min = -(-(2 * z_halo + 1) // z_step) * z_step
        if self.thinnest_volume is not None and self.thinnest_volume < z_min:
            z_halo, z_min = 0, -(-2 // z_step) * z_step
        return [
            PackageAxis("z", z_min, z_step, f * z_halo, f),
            PackageAxis("y", lateral, self.step, self.halo),
            PackageAxis("x", lateral, self.step, self.halo),
        ]

    @property
    def thinnest_volume(self) -> int | None:
        """Fewest Z planes among the training inputs ``training_summary.json`` records (None: no Z recorded)."""
        depths = []
        for entry in self.summary.get("inputs") or []:
            axes, shape = entry.get("axes"), entry.get("shape")
            if isinstance(axes, str) and isinstance(shape, list) and len(shape) == len(axes) and "Z" in axes.upper():
                depths.append(int(shape[axes.upper().index("Z")]))
        return min(depths) if depths else None

    @property
    def z_seams(self) -> bool:
        """An isotropic package without a z halo (its training volume is too thin for one)."""
        return self.isotropic and self.package_axes[0].halo == 0

    @property
    def architecture_callable(self) -> str:
        """The class of ``unet.py`` the package's state dict is loaded into."""
        return "IsotropicUNet" if self.isotropic else "UNet"

    @property
    def package_model_args(self) -> dict[str, Any]:
        """The network's arguments in the package: a super-resolution network interpolates its input itself,
        an isotropic one its volume along Z (``factor``)."""
        args = dict(self.model_args)
        if self.upsample_factor > 1:
            args["upsample_factor"] = self.upsample_factor
        if self.isotropic:
            args["factor"] = self.spec.task.factor
        return args

    def build_model(self):
        """The trained network as the package runs it (:attr:`package_model_args`), eval mode, CPU."""
        from ai4life_kit.models import unet

        try:
            model = getattr(unet, self.architecture_callable)(**self.package_model_args)
            model.load_state_dict(self.model_state, strict=True)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"{self.run_dir / 'checkpoints' / 'best.pt'} does not match its model_args: {str(exc).splitlines()[0]}"
            ) from None
        return model.eval()


def _read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def load_run(run_dir: Path) -> RunInfo:
    """Read a finished run directory; raise :class:`ModelLoadError` naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelLoadError(f"run directory {run_dir} does not exist")
    if is_ensemble_dir(run_dir):
        # One input, one output tensor per package (ilastik, deepImageJ): K networks do not fit in it.
        raise ModelLoadError(
            f"{run_dir} is an ensemble; a bioimage.io package holds one network: package a member, "
            f"e.g. {run_dir / 'member-1'}"
        )
    try:
        spec = load_spec(run_dir / SPEC_FILE)
    except ConfigError as exc:
        raise ModelLoadError(f"{run_dir} is not a usable run directory: {exc}") from None
    ckpt_path = checkpoint_path(run_dir, "best")
    if not ckpt_path.is_file():
        raise ModelLoadError(
            f"{ckpt_path} does not exist: the run has not finished an epoch yet (train it, or resume it)"
        )
    ckpt = ModelCheckpoint.read(ckpt_path)
    if spec.task.kind == "isotropic" and ckpt.model_args.get("probabilistic"):
        # The package averages the XZ and YZ restorations: two Laplace scales do not average to one.
        raise ModelLoadError(
            f"{run_dir} is a probabilistic isotropic run: its package would average two Laplace scales; "
            "train it with loss mae or mse to package it, or predict with the run directory"
        )
    n_in = int(ckpt.model_args.get("in_channels", 1))
    n_out = int(ckpt.model_args.get("out_channels", n_in))
    # The same validated reader as ``predict``: both refuse a zero or NaN std, naming the file.
    norm = read_normalization(run_dir / NORMALIZATION_FILE, n_in, n_out)
    return RunInfo(
        run_dir=run_dir,
        spec=spec,
        model_args=ckpt.model_args,
        model_state=ckpt.model_state,
        mean=norm.mean,
        std=norm.std,
        target_mean=norm.target_mean,
        target_std=norm.target_std,
        summary=read_summary(run_dir),
        metrics=_read_metrics(run_dir / METRICS_FILE),
        checkpoint_epoch=ckpt.epoch,
    )
