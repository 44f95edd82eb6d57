"""The training spec: what a `model_specs/*.yaml` recipe and a run directory's `spec.yaml` hold.

Strict pydantic v2 models (`extra="forbid"`): a typo or an impossible value is an error that
names the field and the value. `algorithm` is a discriminated union on `name`, so each
algorithm carries only the options that mean something for it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "SPEC_VERSION",
    "N2VAlgorithm",
    "StructN2VAlgorithm",
    "SupervisedAlgorithm",
    "Algorithm",
    "ModelConfig",
    "DataConfig",
    "TrainingConfig",
    "DegradationConfig",
    "TaskConfig",
    "RESAMPLING_TASKS",
    "TrainingSpec",
    "SELF_SUPERVISED",
]

SPEC_VERSION = 1
SELF_SUPERVISED = ("n2v", "n2v2", "structn2v")
# The tasks whose output is sampled more finely than the input (a resampling predictor, 2D network).
RESAMPLING_TASKS = ("super_resolution", "isotropic")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class N2VAlgorithm(_Strict):
    """Noise2Void / N2V2: blind-spot training on noisy images only."""

    name: Literal["n2v", "n2v2"]
    masked_pixel_percentage: Annotated[float, Field(gt=0, le=10)] = 0.2
    """Percentage of pixels of each patch that are masked (blind spots)."""
    roi_size: Annotated[int, Field(ge=3, le=21)] = 5
    """Side of the neighbourhood replacement values are drawn from (odd)."""
    replacement: Literal["uniform", "median"] | None = None
    """`uniform` (N2V: a random neighbour, centre excluded) or `median` (N2V2: the neighbourhood
    median without the centre). Default: uniform for n2v, median for n2v2."""

    @field_validator("roi_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"roi_size must be odd, got {v}")
        return v

    @property
    def resolved_replacement(self) -> str:
        return self.replacement or ("median" if self.name == "n2v2" else "uniform")


class StructMask(_Strict):
    """structN2V mask: also hide `span` pixels along `axis` around each blind spot."""

    axis: Literal["x", "y", "z"] = "x"
    """Axis along which the noise is correlated (`x`: horizontal, row-correlated noise)."""
    span: Annotated[int, Field(ge=3, le=31)] = 5
    """Length of the mask (odd), centred on the blind spot."""

    @field_validator("span")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"span must be odd so the mask is centred, got {v}")
        return v


class StructN2VAlgorithm(_Strict):
    """structN2V: N2V with a mask that also covers the pixels the noise is correlated with."""

    name: Literal["structn2v"]
    masked_pixel_percentage: Annotated[float, Field(gt=0, le=10)] = 0.2
    roi_size: Annotated[int, Field(ge=3, le=21)] = 5
    replacement: Literal["uniform", "median"] = "uniform"
    struct_mask: StructMask = StructMask()
    n2v2: bool = False
    """Use the N2V2 network (max-blur pooling, no top skip) with structN2V masking."""

    @property
    def resolved_replacement(self) -> str:
        return self.replacement


class SupervisedAlgorithm(_Strict):
    """CARE (noisy -> clean) or Noise2Noise (noisy -> independent noisy)."""

    name: Literal["care", "n2n"]
    loss: Literal["mae", "mse", "laplace"] = "mae"
    """`laplace`: probabilistic (Weigert et al. 2018): the network also predicts a per-pixel Laplace
    scale and trains on the negative log-likelihood ``|y - mu| / b + log(2 b)``. For CARE the scale
    says how sure the network is of the clean value; for Noise2Noise it also holds the noise of the
    targets."""


Algorithm = Annotated[N2VAlgorithm | StructN2VAlgorithm | SupervisedAlgorithm, Field(discriminator="name")]


class ModelConfig(_Strict):
    """U-Net size and options (the network itself is `ai4life_kit.models.unet.UNet`)."""

    depth: Annotated[int, Field(ge=1, le=5)] = 2
    width: Annotated[int, Field(ge=4, le=256)] = 32
    """Channels of the first level (doubled per level)."""
    batch_norm: bool = True
    residual: bool = False
    """Predict a correction added to the input (useful for CARE / N2N; never for blind-spot training)."""


class DataConfig(_Strict):
    """How images are read and cut into training patches."""

    dims: Literal[2, 3] = 2
    """Spatial dimensions of the model: 2 (YX) or 3 (ZYX)."""
    axes: str | None = None
    """Axes of the input files (e.g. `SCYX`); default: from the file metadata."""
    n_channels: Annotated[int, Field(ge=1)] | None = None
    """Filled in from the data when training starts."""
    patch_size: list[int] = [64, 64]
    augment: bool = True
    """Random flips and 90-degree rotations (only along axes the algorithm allows)."""
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """Share of the data held out for validation (whole files when there are several)."""
    loading: Literal["auto", "memory", "lazy"] = "auto"
    """`memory`: read all images into (device) memory, fastest; `lazy`: read patch windows from the
    files on demand (memory-mapped TIFF, Zarr), for data larger than memory; `auto`: lazy when the
    data as float32 exceeds 4 GiB."""
    cache_mb: Annotated[int, Field(ge=0)] = 512
    """Lazy loading: memory for decoded chunks of compressed TIFF / Zarr inputs."""

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.upper()
        if set(v) - set("STCZYX") or len(set(v)) != len(v) or not {"Y", "X"} <= set(v):
            raise ValueError(f"axes {v!r} must use the letters STCZYX at most once each, Y and X included")
        return v


class TrainingConfig(_Strict):
    """Optimisation."""

    epochs: Annotated[int, Field(ge=1)] = 50
    steps_per_epoch: Annotated[int, Field(ge=1)] = 100
    batch_size: Annotated[int, Field(ge=1)] = 64
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 4e-4
    lr_schedule: Literal["plateau", "cosine", "constant"] = "plateau"
    early_stopping_patience: Annotated[int, Field(ge=1)] | None = 20
    """Stop after this many epochs without a better validation loss (null: never)."""
    val_patches: Annotated[int, Field(ge=1)] = 256
    """Fixed validation patches, drawn once per run."""
    ema_decay: Annotated[float, Field(ge=0, lt=1)] | None = None
    """Validate and keep as ``best.pt`` an exponential moving average of the weights (e.g. 0.99;
    null: the raw weights). The average warms up as ``min(decay, (1 + step) / (10 + step))``."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 autocast on CUDA, fp32 elsewhere."""
    compile: bool = False
    """Compile the training step with `torch.compile` (worth it for long GPU trainings; the first
    steps are slower while it compiles, and the CPU backend needs a C++ compiler)."""
    seed: int = 42


class DegradationConfig(_Strict):
    """The computational microscope that makes semi-synthetic training inputs from clean data.

    CARE (Weigert et al. 2018) trains on pairs made from the user's own images: the clean (or
    high-SNR) image is the target, and this model of the acquisition makes the matching input.
    Sizes are in pixels of the clean image.
    """

    psf_sigma: Annotated[float, Field(ge=0, le=20)] = 0.0
    """Gaussian PSF sigma: lateral (Y and X) for super-resolution and deconvolution; along the
    subsampled axis for isotropic reconstruction (the axial PSF, seen in a lateral slice)."""
    peak: Annotated[float, Field(gt=0)] | None = None
    """Photons at the clean image's 99.9th percentile: Poisson noise at that level (null: none added,
    for data that are already as noisy as the inputs will be)."""
    read_noise: Annotated[float, Field(ge=0)] = 0.0
    """Gaussian read noise, in photons (with ``peak`` only)."""
    psf: str | None = None
    """A PSF image (TIFF) instead of the Gaussian ``psf_sigma``: (Y, X) for super-resolution and 2D
    deconvolution, (Z, Y, X) for 3D deconvolution; for isotropic reconstruction a 1D profile of
    the *extra* axial blur (what the axial PSF has beyond the lateral one, which the lateral slices
    already carry), applied along Y of the lateral slices. Normalised to sum 1; in pixels of the
    clean image. A relative path in a recipe is relative to the recipe's folder."""

    @model_validator(mode="after")
    def _one_psf(self) -> DegradationConfig:
        if self.psf is not None and self.psf_sigma > 0:
            raise ValueError("task.degradation: give psf (an image) or psf_sigma, not both")
        return self


class TaskConfig(_Strict):
    """What the network restores: noise only, or also resolution (CARE's other tasks)."""

    kind: Literal["denoise", "super_resolution", "isotropic", "deconvolution"] = "denoise"
    """`super_resolution`: output ``factor`` times larger in Y and X (joint denoising); `isotropic`:
    a 2D network on the XZ and YZ slices makes a volume with an axial step ``factor`` times its
    pixel size isotropic; `deconvolution`: targets without the PSF blur."""
    factor: Annotated[int, Field(ge=1, le=16)] = 1
    """Super-resolution: output over input size in Y and X. Isotropic: the axial step over the
    lateral pixel size (the anisotropy, ``--anisotropy``)."""
    semi_synthetic: bool = False
    """Make the inputs from the clean ``--data`` with ``degradation`` (no ``--target``). Isotropic
    reconstruction always does (its targets are the volume's lateral slices)."""
    degradation: DegradationConfig = DegradationConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TaskConfig:
        if self.kind == "denoise" and (self.factor != 1 or self.semi_synthetic):
            raise ValueError("task.factor and task.semi_synthetic belong to restoration tasks, not to 'denoise'")
        if self.resamples and self.factor < 2:
            raise ValueError(f"task.kind {self.kind!r} needs task.factor >= 2, got {self.factor}")
        if self.kind == "deconvolution" and self.factor != 1:
            raise ValueError("task.factor must be 1 for deconvolution (the output keeps the input's size)")
        d = self.degradation
        if self.kind == "deconvolution" and self.semi_synthetic and d.psf_sigma == 0 and d.psf is None:
            raise ValueError("semi-synthetic deconvolution needs task.degradation.psf_sigma > 0 or a psf image")
        return self

    @property
    def resamples(self) -> bool:
        """The output is sampled ``factor`` times more finely than the input (super-resolution, isotropic)."""
        return self.kind in RESAMPLING_TASKS

    @property
    def makes_pairs(self) -> bool:
        """The inputs are made from ``--data`` by the degradation model (no ``--target``)."""
        return self.kind == "isotropic" or self.semi_synthetic

    @property
    def output_scale(self) -> int:
        """Output over input size in Y and X (super-resolution), else 1."""
        return self.factor if self.kind == "super_resolution" else 1


class TrainingSpec(_Strict):
    """A complete training recipe."""

    version: Literal[1] = SPEC_VERSION
    name: str | None = None
    description: str | None = None
    algorithm: Algorithm
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    task: TaskConfig = TaskConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSpec:
        dims = self.data.dims
        patch = self.data.patch_size
        if len(patch) != dims:
            raise ValueError(f"data.patch_size {patch} has {len(patch)} values but data.dims is {dims}")
        multiple = 2**self.model.depth
        bad = [p for p in patch if p <= 0 or p % multiple]
        if bad:
            raise ValueError(
                f"data.patch_size {patch}: every size must be a positive multiple of 2**model.depth = {multiple}"
            )
        if self.algorithm.name in SELF_SUPERVISED and self.model.residual:
            raise ValueError(f"model.residual must be false for {self.algorithm.name} (the blind spot would leak)")
        if isinstance(self.algorithm, StructN2VAlgorithm) and self.algorithm.struct_mask.axis == "z" and dims == 2:
            raise ValueError("algorithm.struct_mask.axis is 'z' but data.dims is 2")
        if self.task.kind != "denoise":
            if self.algorithm.name != "care":
                raise ValueError(f"task.kind {self.task.kind!r} trains CARE (algorithm.name: care)")
            if self.task.resamples and dims != 2:
                raise ValueError(f"task.kind {self.task.kind!r} uses a 2D network (data.dims: 2)")
        if self.data.axes is not None:
            if dims == 3 and "Z" not in self.data.axes:
                raise ValueError(f"data.axes {self.data.axes!r} has no Z axis but data.dims is 3")
        return self

    @property
    def is_self_supervised(self) -> bool:
        return self.algorithm.name in SELF_SUPERVISED

    @property
    def is_probabilistic(self) -> bool:
        """The network predicts a Laplace scale next to each output channel (``loss: laplace``)."""
        return getattr(self.algorithm, "loss", None) == "laplace"

    @property
    def uses_n2v2_network(self) -> bool:
        return self.algorithm.name == "n2v2" or (isinstance(self.algorithm, StructN2VAlgorithm) and self.algorithm.n2v2)
