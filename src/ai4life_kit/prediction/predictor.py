"""`Predictor`: a trained denoiser plus its normalisation, ready to run on raw images.

Built from a run directory or from a bioimage.io zip; both give the same numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai4life_kit.config.spec import TaskConfig, TrainingSpec
from ai4life_kit.data.axes import Layout
from ai4life_kit.data.normalization import PACKAGE_EPS, denormalise, input_eps, normalise, read_normalization
from ai4life_kit.data.sources import ArraySource, ImageSource
from ai4life_kit.data.views import CanonicalView
from ai4life_kit.errors import DataError, ModelLoadError, UserInputError
from ai4life_kit.models import halo_for_depth
from ai4life_kit.models.folding import fold_batch_norm
from ai4life_kit.models.unet import UNet
from ai4life_kit.prediction.onnx_engine import ENGINES, onnx_forward
from ai4life_kit.prediction.package_loader import read_package
from ai4life_kit.prediction.tiling import TileGrid, TTATransform, plan_grid, tta_transforms
from ai4life_kit.rundir import ENSEMBLE_MARKER, ModelCheckpoint, checkpoint_path, load_checkpoint
from ai4life_kit.runtime import autocast, channels_last, resolve_device

__all__ = ["Predictor", "load_checkpoint", "DEFAULT_TILE", "STREAM_ABOVE_BYTES"]

# Largest network input tile per axis when --tile is not given: large enough that the halo costs
# little, small enough for a laptop's memory (about 1.1 GiB peak with batches of 4 tiles,
# measured). A batch's budget of 4 such tiles may instead hold fewer, larger tiles where they
# compute fewer pixels (plan_grid): a 1024x1024 image runs whole, not as four 544 px tiles.
DEFAULT_TILE = {2: 768, 3: 128}
# Inputs larger than this as float32 are predicted out of core by the CLI (unless told otherwise).
# In memory the peak is about four float32 copies of the image (input, normalised input, padded
# sample, output; 7.9 GiB measured for 500 MPix), so 1 GiB of float32 (268 MPix) already needs
# ~4.5 GiB, the most a laptop can spare; out of core the peak stays ~0.5 GiB at any size and runs
# as fast (benchmarks/bench_outofcore_predict.py), so there is no reason to go higher. Smaller
# images keep the in-memory path (classic TIFF writer; many small files gain nothing).
STREAM_ABOVE_BYTES = 2**30


def _run_spec(run_dir: Path) -> TrainingSpec | None:
    """A run directory's ``spec.yaml`` (``None`` without one)."""
    from ai4life_kit.config import load_spec
    from ai4life_kit.errors import ConfigError

    path = run_dir / "spec.yaml"
    if not path.exists():
        return None
    try:
        return load_spec(path)
    except ConfigError as exc:
        raise ModelLoadError(f"{run_dir} is not a usable run directory: {exc}") from None


class Predictor:
    """Normalise, predict tile by tile, and map back to the input's intensity units.

    Parameters
    ----------
    model
        A module (or TorchScript module) mapping ``(B, C, *spatial)`` to ``(B, C_out, *spatial)``
        in normalised units.
    mean, std
        Input normalisation per channel.
    target_mean, target_std
        Output de-normalisation per output channel.
    spatial_ndim
        2 or 3.
    depth
        U-Net depth (spatial sizes must be multiples of ``2**depth``).
    device
        ``auto``, ``cpu``, ``cuda``, ``mps`` or a :class:`torch.device`.
    halo
        Overlap per tile side; default: the receptive-field radius bound of the U-Net.
    eps
        The input normalisation is ``(x - mean) / (std + eps)``: bioimageio.core's
        ``fixed_zero_mean_unit_variance`` (the default), which ai4life-kit's packages declare, so
        run directory, package and consumers give the same numbers; 0 for a package whose
        pre-processing is ``scale_linear`` and a run whose package would be (a tiny std,
        :func:`~ai4life_kit.data.normalization.input_eps`).
    algorithm
        The training algorithm (``n2v``, ``structn2v``, ...), when known: it decides which
        test-time augmentations are valid (:meth:`tta_transforms`).
    border
        ``network`` (default: the whole image's prediction, fastest) or ``mirror``
        (bioimage.io's blockwise border, as bioimageio.core gives); see
        :data:`~ai4life_kit.prediction.tiling.BORDERS`. Changes only pixels within the halo of
        the image's border.
    engine
        ``torch`` (default) or ``onnx``: the same tiles through ONNX Runtime (CPU, fp32; needs
        onnxruntime), about 2x faster for 2D models on CPUs, slower for 3D
        (:mod:`~ai4life_kit.prediction.onnx_engine`).
    task
        The run's restoration task (from its ``spec.yaml``; ``None`` for packages): a resampling
        task makes :func:`~ai4life_kit.prediction.load_model` wrap this predictor in a
        :class:`~ai4life_kit.prediction.restoration.RestorationPredictor`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        target_mean: Sequence[float],
        target_std: Sequence[float],
        spatial_ndim: int,
        depth: int,
        device: str | torch.device = "auto",
        halo: int | None = None,
        eps: float = PACKAGE_EPS,
        algorithm: str | None = None,
        border: str = "network",
        engine: str = "torch",
        task: TaskConfig | None = None,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.spatial_ndim = int(spatial_ndim)
        self.memory_format = channels_last(self.spatial_ndim)
        self.model = model.to(self.device).eval()
        if not isinstance(self.model, torch.jit.ScriptModule):
            self.model = self.model.to(memory_format=self.memory_format)
        # float64, as the rdf (and bioimageio.core) holds them: rounding them to float32 first
        # would shift every normalised value by up to 6e-8 of the mean
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.target_mean = np.asarray(target_mean, dtype=np.float64)
        self.target_std = np.asarray(target_std, dtype=np.float64)
        self.eps = float(eps)
        self.algorithm = algorithm
        self.task = task
        # Off where an axis has a direction the network learnt (isotropic CARE's axial axis).
        self.tta_rotations = True
        self.depth = int(depth)
        self.multiple = 2**self.depth
        self.halo = halo_for_depth(self.depth, halo)
        self.border = border
        self.engine = engine
        self._onnx: Callable[[torch.Tensor], torch.Tensor] | None = None
        # (the weights it was made from, their storage and versions, the folded copy)
        self._folded: tuple[tuple[torch.Tensor, ...], tuple, torch.nn.Module] | None = None
        # A probabilistic network (UNet(probabilistic=True)) outputs the Laplace scales after the
        # means; TorchScript keeps the attribute, so a scripted one is recognised too.
        self.probabilistic = bool(getattr(self.model, "probabilistic", False))

    @property
    def n_channels(self) -> int:
        return len(self.mean)

    @property
    def n_outputs(self) -> int:
        """Channels the network outputs: the target's, twice over for a probabilistic network."""
        return len(self.target_mean) * (2 if self.probabilistic else 1)

    def _finish(self, n_out: int) -> Callable[[np.ndarray], np.ndarray]:
        """Network output (normalised) to raw units, keeping the first ``n_out`` channels.

        Means become ``y * std + mean``; Laplace scales (channels after the means) only
        ``y * std``, since a scale is a width, not a level.
        """
        c, nd = len(self.target_mean), self.spatial_ndim
        mean = np.concatenate([self.target_mean, np.zeros(c)])[:n_out]
        std = np.concatenate([self.target_std, self.target_std])[:n_out]

        def finish(y: np.ndarray) -> np.ndarray:  # (C, *spatial) or (B, C, *spatial)
            axis = y.ndim - nd - 1
            if y.shape[axis] != n_out:
                y = np.ascontiguousarray(np.take(y, np.arange(n_out), axis=axis))
            return denormalise(y, mean, std, nd)

        return finish

    def tta_transforms(self) -> list[TTATransform]:
        """The augmentations ``tta=True`` averages: 8 flips/rotations, only the 4 flips for structN2V.

        structN2V's network learnt to ignore noise correlated along its struct mask's axis; rotated
        by 90 degrees that noise runs along the other axis and is reproduced, not removed. Flips
        keep every axis where it was.
        """
        return tta_transforms(self.spatial_ndim, rotations=self.algorithm != "structn2v" and self.tta_rotations)

    @classmethod
    def from_run_dir(cls, run_dir: Path, device: str | torch.device = "auto", checkpoint: str = "best") -> Predictor:
        """Load the ``best`` (or ``last``) checkpoint of a run directory.

        ``normalization.json`` is validated as ``package`` validates it (a zero or NaN std would
        turn every output pixel into NaN), and ``spec.yaml`` gives the algorithm (for
        :meth:`tta_transforms`; without one, all 8 augmentations are allowed).

        Raises
        ------
        ModelLoadError
            A missing or unusable file, named in the message.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ModelLoadError(f"run directory {run_dir} does not exist")
        norm_path = run_dir / "normalization.json"
        if not norm_path.exists() and (run_dir / ENSEMBLE_MARKER).is_file():
            raise ModelLoadError(
                f"{run_dir} is an ensemble: load it with ai4life_kit.prediction.load_model, or one member, "
                f"e.g. {run_dir / 'member-1'}"
            )
        if not norm_path.exists():
            raise ModelLoadError(f"{run_dir} is not an ai4life-kit run directory (no normalization.json)")
        read_normalization(norm_path)  # before the checkpoint: a garbage file is reported cheaply
        ckpt = ModelCheckpoint.read(checkpoint_path(run_dir, checkpoint))
        args = ckpt.model_args
        n_in = int(args.get("in_channels", 1))
        norm = read_normalization(norm_path, n_in, int(args.get("out_channels", n_in)))
        model = UNet(**args)
        model.load_state_dict(ckpt.model_state)
        spec = _run_spec(run_dir)
        return cls(
            model,
            norm.mean,
            norm.std,
            norm.target_mean,
            norm.target_std,
            spatial_ndim=args["dims"],
            depth=args["depth"],
            device=device,
            eps=input_eps(norm.std),  # what the run's package will declare
            algorithm=spec.algorithm.name if spec is not None else None,
            task=spec.task if spec is not None else None,
        )

    @classmethod
    def from_bioimageio(cls, path: Path, device: str | torch.device = "auto", weights: str = "auto") -> Predictor:
        """Load a bioimage.io model zip (TorchScript or state-dict weights, its normalisation)."""
        pkg = read_package(Path(path), weights=weights)
        return cls(
            pkg.model,
            pkg.mean,
            pkg.std,
            pkg.target_mean,
            pkg.target_std,
            spatial_ndim=pkg.spatial_ndim,
            depth=pkg.depth,
            device=device,
            halo=pkg.halo or None,
            eps=pkg.eps,
            algorithm=pkg.algorithm,
        )

    @classmethod
    def load(cls, model: Path, device: str | torch.device = "auto") -> Predictor:
        """A run directory or a ``.zip`` package."""
        model = Path(model)
        if model.is_dir():
            return cls.from_run_dir(model, device)
        if model.is_file() and model.suffix.lower() == ".zip":
            return cls.from_bioimageio(model, device)
        if not model.exists():
            raise ModelLoadError(f"model {model} does not exist")
        raise ModelLoadError(f"model {model} is neither a run directory nor a bioimage.io .zip package")

    def _forward(self, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.engine == "onnx":
            return self._onnx_forward(precision)
        if self.engine not in ENGINES:  # a typo must not silently run the other engine
            raise UserInputError(f"engine {self.engine!r}: choose one of {', '.join(ENGINES)}")

        model = self._inference_model()

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), autocast(self.device, precision):
                return model(x.contiguous(memory_format=self.memory_format))

        return forward

    def _inference_model(self) -> torch.nn.Module:
        """The network as prediction runs it: the kit's U-Net with batch norm folded, else as it is.

        The folded copy is kept while the weights stay the same and made again when they change
        (callers may load other weights into ``self.model``, or replace it, between calls): each
        tensors themselves (held, so a freed tensor's id or address cannot come back as a new one's)
        and their storage and in-place version counts say so. Folding per call would copy the
        network for every image of a folder of small ones (milliseconds each, as long as a small
        image's forward pass). Only the kit's own U-Net: a module wrapping it (a caller's hook, a
        recorder) must run as itself, not as a copy.
        """
        if not isinstance(self.model, UNet):
            scripted = isinstance(self.model, torch.jit.ScriptModule)
            return self.model if scripted else self.model.to(memory_format=self.memory_format)
        tensors = tuple(itertools.chain(self.model.parameters(), self.model.buffers()))
        try:
            versions = tuple((t.data_ptr(), t._version) for t in tensors)
        except RuntimeError:  # inference tensors (made under torch.inference_mode) keep no version
            return fold_batch_norm(self.model).to(memory_format=self.memory_format)
        cached = self._folded
        same = (
            cached is not None
            and len(cached[0]) == len(tensors)
            and all(a is b for a, b in zip(cached[0], tensors, strict=True))
            and cached[1] == versions
        )
        if not same:
            self._folded = (tensors, versions, fold_batch_norm(self.model).to(memory_format=self.memory_format))
        return self._folded[2]

    def _onnx_forward(self, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """ONNX Runtime's network (exported once per predictor), fp32 on the CPU only."""
        if self.device.type != "cpu":
            raise UserInputError(f"--engine onnx runs on the CPU, not on {self.device}: add --device cpu")
        if precision == "bf16":
            raise UserInputError("--engine onnx computes in fp32; leave --precision at auto or fp32")
        if self._onnx is None:
            size = 2 * self.halo + self.multiple
            self._onnx = onnx_forward(self.model, torch.zeros((1, self.n_channels) + (size,) * self.spatial_ndim))
        return self._onnx

    def predict_canonical(
        self,
        images: np.ndarray,
        tile: Sequence[int] | None = None,
        tta: bool = False,
        batch_size: int = 4,
        precision: str = "auto",
        progress: Callable[[int], None] | None = None,
        with_scale: bool = False,
    ) -> np.ndarray:
        """Denoise ``(S, C, *spatial)`` raw images; returns float32 raw-unit images of the same shape.

        ``with_scale`` (probabilistic networks only): ``2 C`` channels, the means and then their
        Laplace scales, in the input's intensity units.

        The streaming path (:meth:`predict_view`) over the array in memory: one prediction path
        for every input. Measured against the former in-memory loop (whole-sample ``np.pad`` then
        tiles): bit-identical outputs, the same MPix/s, and no padded copy of each sample.
        """
        if images.shape[1] != self.n_channels:
            raise DataError(f"the model expects {self.n_channels} channel(s), the image has {images.shape[1]}")
        axes = "SC" + "ZYX"[-self.spatial_ndim :]
        n_out = self._n_out(with_scale)
        out = np.empty((images.shape[0], n_out, *images.shape[2:]), np.float32)
        self.predict_view(
            CanonicalView(ArraySource(images, axes), self.spatial_ndim),
            CanonicalView(ArraySource(out, axes), self.spatial_ndim),
            tile,
            tta,
            batch_size,
            precision,
            progress,
        )
        return out

    def require_probabilistic(self) -> None:
        """Raise :class:`UserInputError` unless the network predicts Laplace scales."""
        if not self.probabilistic:
            raise UserInputError(
                "this model predicts no uncertainty: train it with a probabilistic recipe "
                "(algorithm.loss: laplace, e.g. model_specs/care-2d-probabilistic.yaml)"
            )

    def _n_out(self, with_scale: bool) -> int:
        if with_scale:
            self.require_probabilistic()
        return self.n_outputs if with_scale else len(self.target_mean)

    def n_tiles(self, shape: tuple[int, ...], axes: str, tile: Sequence[int] | None = None, batch_size: int = 4) -> int:
        """How many tiles :meth:`predict` will run for an image (for progress bars)."""
        layout = Layout.of(shape, axes, self.spatial_ndim)
        n_samples = int(np.prod([shape[axes.index(a)] for a in layout._batch_letters], dtype=np.int64))
        grid = self.plan([shape[axes.index(a)] for a in layout._space_letters], tile, batch_size)
        return n_samples * len(grid)

    def plan(self, spatial_shape: Sequence[int], tile: Sequence[int] | None = None, batch_size: int = 4) -> TileGrid:
        """The tile grid for an image of ``spatial_shape`` (the same for every prediction path).

        Without ``tile``, a batch holds at most ``batch_size`` default tiles' worth of pixels
        (:func:`~ai4life_kit.prediction.tiling.plan_grid`).
        """
        default = DEFAULT_TILE[self.spatial_ndim]
        return plan_grid(spatial_shape, tile, self.halo, self.multiple, default, self.border, batch_size)

    def check_input(self, shape: tuple[int, ...], axes: str) -> Layout:
        """The layout of an input, or a :class:`DataError` saying why the model cannot take it."""
        layout = Layout.of(tuple(shape), axes, self.spatial_ndim)
        if layout.n_channels != self.n_channels:
            raise DataError(
                f"the model expects {self.n_channels} channel(s), the image (axes {layout.axes}, "
                f"shape {tuple(shape)}) has {layout.n_channels}"
            )
        return layout

    def predict(
        self,
        array: np.ndarray,
        axes: str,
        tile: Sequence[int] | None = None,
        tta: bool = False,
        batch_size: int = 4,
        precision: str = "auto",
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Denoise an image with any axes (e.g. ``YX``, ``SCYX``, ``TZYX``); same shape out, float32.

        A probabilistic network gives its means here; :meth:`predict_with_scale` gives both.
        """
        layout = self.check_input(array.shape, axes)
        canon = layout.to_canonical(np.asarray(array, dtype=np.float32))
        out = self.predict_canonical(canon, tile, tta, batch_size, precision, progress)
        return layout.from_canonical(out)

    def predict_with_scale(self, array: np.ndarray, axes: str, **options: Any) -> tuple[np.ndarray, np.ndarray]:
        """The means and the per-pixel Laplace scales of a probabilistic network, each shaped as the input.

        ``options`` are :meth:`predict`'s (``tile``, ``tta``, ``batch_size``, ``precision``,
        ``progress``). Scales are in the input's intensity units: the central ``p`` interval of a
        pixel is ``mean +- scale * ln(1 / (1 - p))`` (:func:`ai4life_kit.laplace.interval_halfwidth`).

        Raises
        ------
        UserInputError
            The network predicts no scale.
        """
        self.require_probabilistic()
        layout = self.check_input(array.shape, axes)
        out = self.predict_canonical(
            layout.to_canonical(np.asarray(array, dtype=np.float32)), **options, with_scale=True
        )
        c = len(self.target_mean)
        return layout.from_canonical(out[:, :c]), layout.from_canonical(out[:, c:])

    def predict_with_uncertainty(
        self, array: np.ndarray, axes: str, **options: Any
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:meth:`predict_with_scale` as the output and its maps, ``{"scale": b}`` (as an ensemble gives them)."""
        mean, scale = self.predict_with_scale(array, axes, **options)
        return mean, {"scale": scale}

    # -- out of core ------------------------------------------------------------------------
    def predict_view(
        self,
        view: CanonicalView,
        out: CanonicalView,
        tile: Sequence[int] | None = None,
        tta: bool = False,
        batch_size: int = 4,
        precision: str = "auto",
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Denoise a lazy canonical ``view`` into the writable ``out``, one batch of tiles in memory.

        Gives the same numbers as :meth:`predict_canonical` on ``view.to_array()``.
        """
        from ai4life_kit.prediction.streaming import predict_view

        if view.shape[1] != self.n_channels:
            raise DataError(f"the model expects {self.n_channels} channel(s), the image has {view.shape[1]}")
        if out.shape[1] not in (len(self.target_mean), self.n_outputs):
            raise ValueError(f"output view has {out.shape[1]} channels; the model gives {self.n_outputs}")
        nd = self.spatial_ndim
        grid = self.plan(view.shape[2:], tile, batch_size)
        predict_view(
            self._forward(precision),
            view,
            out,
            grid,
            batch_size,
            self.device,
            self.tta_transforms() if tta else False,
            progress,
            prepare=lambda x: normalise(x, self.mean, self.std, nd, self.eps),
            finish=self._finish(out.shape[1]),
        )

    def predict_to(
        self,
        source: ImageSource | str | Path,
        dst: str | Path,
        axes: str | None = None,
        tile: Sequence[int] | None = None,
        tta: bool = False,
        batch_size: int = 4,
        precision: str = "auto",
        progress: Callable[[int], None] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Denoise an image of any size from disk to disk, out of core; returns ``dst``.

        Parameters
        ----------
        source
            An open :class:`~ai4life_kit.data.sources.ImageSource` or a TIFF / Zarr path
            (opened lazily with ``axes``, else the file's axes).
        dst
            Output ``.tif``/``.tiff`` (uncompressed, memory-mappable; BigTIFF above 4 GiB) or
            ``.zarr`` (Zarr v3, chunks = tile cores). Float32, the input's shape and axes. It is
            written under a temporary name and renamed when complete.

        Memory holds the model and one batch of tiles, independent of the image size; the
        result equals :meth:`predict` on the whole image read into memory.
        """
        from ai4life_kit.data.sources import ChunkCache, open_source
        from ai4life_kit.prediction.streaming import create_output, output_chunks

        opened = not isinstance(source, ImageSource)
        if opened:
            # A private chunk cache: freed with the source, never shared with another image.
            source = open_source(source, axes, self.spatial_ndim, cache=ChunkCache())
        try:
            self.check_input(source.shape, source.axes)
            view = CanonicalView(source, self.spatial_ndim)
            chunks = output_chunks(view, self.plan(view.shape[2:], tile, batch_size))
            dst = Path(dst)
            with create_output(dst, source.shape, source.axes, overwrite, chunks) as target:
                out = CanonicalView(target, self.spatial_ndim)
                self.predict_view(view, out, tile, tta, batch_size, precision, progress)
                target.close()
        finally:
            if opened:
                source.close()
        return dst
