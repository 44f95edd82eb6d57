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

__all__ = ["RunInfo", "load_run", "halo_for_depth"]


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
        return self.halo if f == 1 else f * (-(-self.halo // f) + 1)

    @property
    def package_model_args(self) -> dict[str, Any]:
        """The U-Net's arguments in the package: a super-resolution network interpolates its input itself."""
        args = dict(self.model_args)
        if self.upsample_factor > 1:
            args["upsample_factor"] = self.upsample_factor
        return args

    def build_model(self):
        """The trained network as the package runs it (:attr:`package_model_args`), eval mode, CPU."""
        from ai4life_kit.models.unet import UNet

        try:
            model = UNet(**self.package_model_args)
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
    if spec.task.kind == "isotropic":
        # Its prediction runs the 2D network on the XZ and YZ slices of a Z-interpolated volume and
        # averages them: no bioimage.io consumer runs a model that way, and a slice model would be
        # applied to YX planes instead.
        raise ModelLoadError(
            f"{run_dir} is an isotropic-reconstruction run: bioimage.io packages cannot describe its slice-wise "
            "prediction; predict with the run directory (ai4life-kit predict RUN volume.tif)"
        )
    ckpt_path = checkpoint_path(run_dir, "best")
    if not ckpt_path.is_file():
        raise ModelLoadError(
            f"{ckpt_path} does not exist: the run has not finished an epoch yet (train it, or resume it)"
        )
    ckpt = ModelCheckpoint.read(ckpt_path)
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
