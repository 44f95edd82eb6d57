"""``ai4life-kit predict``: denoise TIFF or Zarr images with a run directory or a bioimage.io package."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ai4life_kit.cli._options import parse_sizes

if TYPE_CHECKING:
    from ai4life_kit.data.sources import ImageSource
    from ai4life_kit.prediction import EnsemblePredictor, Predictor, RestorationPredictor

__all__ = ["predict"]

FORMATS = ("auto", "tif", "zarr")


def _output_name(src: Path, fmt: str) -> str:
    """``img.tif`` -> ``img.tif`` / ``img.zarr``; ``img.ome.zarr`` -> ``img.ome.tif`` / ``img.zarr``."""
    stem = src.stem  # as before for TIFF inputs: a.ome.tif -> a.ome.tif
    if fmt == "zarr" and stem.lower().endswith(".ome"):
        stem = stem[: -len(".ome")]  # the output is a plain Zarr array, not an OME-Zarr group
    return f"{stem}.{fmt}"


def _map_kinds(predictor: Predictor | EnsemblePredictor | RestorationPredictor) -> list[str]:
    """The uncertainty maps a model gives (:data:`ai4life_kit.evaluation.UNCERTAINTY_MAPS`), first the panel's."""
    from ai4life_kit.prediction import EnsemblePredictor

    if isinstance(predictor, EnsemblePredictor):
        return ["scale", "disagreement"] if predictor.probabilistic else ["std"]
    predictor.require_probabilistic()
    return ["scale"]


def _uncertainty_outputs(out: Path, src: Path, kinds: list[str]) -> tuple[dict[str, Path], Path]:
    """Where an input's uncertainty maps (float32 TIFFs) and its PNG panel go.

    In a folder inside ``out``: the means stay the only images at the top, so ``evaluate OUT
    --gt ...`` pairs them as before (and ``evaluate --uncertainty`` finds the maps there).
    """
    from ai4life_kit.evaluation import UNCERTAINTY_DIR, uncertainty_map_path

    dst = out / _output_name(src, "tif")
    return {k: uncertainty_map_path(dst, k) for k in kinds}, out / UNCERTAINTY_DIR / f"{dst.stem}.png"


def _predict_in_memory(
    predictor: Predictor | EnsemblePredictor | RestorationPredictor,
    source: ImageSource,
    src: Path,
    dst: Path,
    overwrite: bool,
    uncertainty: tuple[dict[str, Path], Path] | None = None,
    **kwargs,
) -> None:
    """Read it all, predict, write; an allocation failure says what to do instead.

    ``uncertainty``: also write the uncertainty maps (kind -> path) and the panel (path).
    """
    import numpy as np

    from ai4life_kit.data.pixel_size import read_pixel_size
    from ai4life_kit.data.tiff_io import read_image, write_image
    from ai4life_kit.errors import Ai4LifeKitError, DataError
    from ai4life_kit.prediction import RestorationPredictor
    from ai4life_kit.prediction.streaming import create_output

    try:
        if source.path.is_dir():  # Zarr
            data = source.read_all().astype(np.float32, copy=False)
            if not np.isfinite(data).all():
                raise DataError(f"{src} contains NaN or Inf pixels")
        else:
            data = read_image(src, source.axes, predictor.spatial_ndim).data
        pixel_size = None
        if isinstance(predictor, RestorationPredictor):  # resampled: the new sampling goes into the metadata
            # (a Zarr input records no pixel size the kit reads: read_pixel_size says none)
            pixel_size = predictor.output_pixel_size(read_pixel_size(src))
        if uncertainty is None:
            result = predictor.predict(data, source.axes, **kwargs)
        else:
            from ai4life_kit.evaluation import UNCERTAINTY_MAPS
            from ai4life_kit.panels import write_uncertainty_panel

            paths, panel = uncertainty
            result, maps = predictor.predict_with_uncertainty(data, source.axes, **kwargs)
            for kind, path in paths.items():
                write_image(path, maps[kind], source.axes, overwrite=overwrite)
            first = next(iter(paths))
            label = UNCERTAINTY_MAPS[first][2]
            write_uncertainty_panel(
                panel, data, result, maps[first], source.axes, uncertainty_label=label, overwrite=overwrite
            )
            del maps
        del data
        if dst.suffix == ".zarr":
            with create_output(dst, result.shape, source.axes, overwrite) as target:
                target.write(tuple(slice(0, n) for n in result.shape), result)
        else:
            write_image(dst, result, source.axes, overwrite=overwrite, pixel_size=pixel_size)
    except (MemoryError, RuntimeError) as exc:
        # numpy raises MemoryError, torch's CPU allocator a RuntimeError saying so
        if isinstance(exc, RuntimeError) and "can't allocate memory" not in str(exc):
            raise
        gib = np.prod(source.shape, dtype=np.int64) * 4 / 2**30
        raise Ai4LifeKitError(
            f"out of memory predicting {src} ({gib:.2f} GiB as float32) in memory; use --out-of-core"
        ) from None


@contextlib.contextmanager
def _remove_if_left_empty(folder: Path) -> Iterator[None]:
    """Delete ``folder`` again if this command created it and fails before writing anything into it."""
    created = not folder.exists()
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty
        raise


# Longer than the kit's 80-line rule only by its signature: Typer reads one parameter per option.
def predict(
    model: Annotated[
        Path, typer.Argument(help="Run directory, ensemble (train --ensemble) or .bioimageio.zip package.")
    ],
    inputs: Annotated[list[str], typer.Argument(help="TIFF files, Zarr folders (.zarr), folders or globs to denoise.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (files keep their names).")],
    axes: Annotated[str | None, typer.Option(help="Axes of the inputs, e.g. SCYX (default: metadata).")] = None,
    tile: Annotated[
        str | None, typer.Option(help="Largest network input tile, e.g. 256,256 (default 768 in 2D, 128 in 3D).")
    ] = None,
    tta: Annotated[
        bool,
        typer.Option(
            "--tta",
            help="Average the 8 flips/rotations (slower, smoother); for structN2V models only the 4 flips, "
            "since a rotation would move the structured noise to the axis the model does not mask.",
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Tiles per forward pass; without --tile, it may hold fewer, larger tiles.")
    ] = 4,
    border: Annotated[
        str,
        typer.Option(
            help="network: the image border as a whole-image run (and CAREamics) sees it, fastest; mirror: "
            "mirrored by the halo first, as bioimageio.core and deepImageJ predict the package. They differ "
            "only within the halo of the border.",
        ),
    ] = "network",
    engine: Annotated[
        str,
        typer.Option(
            help="torch, or onnx: the same tiles through ONNX Runtime, same result, about 2x faster for 2D "
            "models on CPUs (slower for 3D; fp32, CPU only; needs onnxruntime).",
        ),
    ] = "torch",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA), fp32 or bf16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    out_of_core: Annotated[
        bool | None,
        typer.Option(
            "--out-of-core/--in-memory",
            help="Stream tiles from and to disk, memory independent of the image size (default: for inputs "
            "over 1 GiB as float32, Zarr inputs and Zarr outputs); --in-memory reads each image whole. "
            "Both give the same numbers.",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="Output format: tif (float32 TIFF; BigTIFF above 4 GiB), zarr (Zarr v3 array, needs "
            "pip install 'ai4life-kit[zarr]'), or auto: zarr for Zarr inputs, tif otherwise.",
        ),
    ] = "auto",
    uncertainty: Annotated[
        bool | None,
        typer.Option(
            "--uncertainty/--no-uncertainty",
            help="Also write per-pixel uncertainty to OUT/uncertainty/ with a PNG panel per input (input, output, "
            "map). Probabilistic models (algorithm.loss: laplace): the Laplace scale b, in the input's intensity "
            "units, as NAME.tif; the central p interval is mean +- b ln(1/(1-p)): +-0.69 b holds 50 %, +-2.3 b "
            "90 %. Ensembles (train --ensemble; on by default): the members' std as NAME.std.tif, or for "
            "probabilistic members the ensemble's scale b as NAME.tif and their disagreement D in bits as "
            "NAME.disagreement.tif. Predicts in memory; TIFF outputs only.",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Denoise images; outputs are float32 images with the input's shape, axes and intensity units.

    Super-resolution models write outputs their factor larger in Y and X, isotropic models volumes
    resampled along Z to the lateral pixel size; both record the new pixel size in the TIFF.

    With --uncertainty, a probabilistic model also writes its per-pixel uncertainty (see the option);
    an ensemble writes its members' mean and, by default, their spread.
    The maps say where the network is unsure; do not use them, or the outputs, for intensity-based
    quantification such as counting fluorophores.

    Only load packages you trust: a foreign package's TorchScript or architecture code runs on your machine.
    """
    import time

    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ai4life_kit.data.formats import is_zarr_path
    from ai4life_kit.data.sources import ChunkCache, open_source
    from ai4life_kit.data.tiff_io import resolve_inputs
    from ai4life_kit.fileio import check_writable
    from ai4life_kit.prediction import EnsemblePredictor, RestorationPredictor, load_model
    from ai4life_kit.prediction.onnx_engine import ENGINES
    from ai4life_kit.prediction.predictor import STREAM_ABOVE_BYTES
    from ai4life_kit.prediction.tiling import BORDERS

    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="--format")
    tile_sizes = parse_sizes(tile, "--tile")
    paths = resolve_inputs(inputs, "input", allow_zarr=True)
    formats = [fmt if fmt != "auto" else ("zarr" if is_zarr_path(p) else "tif") for p in paths]
    targets = [out / _output_name(p, f) for p, f in zip(paths, formats, strict=True)]
    if len(set(targets)) != len(targets):
        raise typer.BadParameter("two inputs have the same file name; outputs would collide", param_hint="INPUTS")
    if border not in BORDERS:
        raise typer.BadParameter(f"{border!r} is not one of {', '.join(BORDERS)}", param_hint="--border")
    if engine not in ENGINES:
        raise typer.BadParameter(f"{engine!r} is not one of {', '.join(ENGINES)}", param_hint="--engine")
    if uncertainty and (out_of_core or "zarr" in formats):
        raise typer.BadParameter(
            "--uncertainty predicts in memory into TIFFs; leave out --out-of-core and Zarr outputs",
            param_hint="--uncertainty",
        )
    for dst in targets:
        check_writable(dst, overwrite)
    predictor = load_model(model, device)
    ensemble = isinstance(predictor, EnsemblePredictor)
    resampling = isinstance(predictor, RestorationPredictor)
    if resampling and (out_of_core or "zarr" in formats):
        task = predictor.task.kind.replace("_", "-")
        raise typer.BadParameter(
            f"{task} models predict in memory into TIFFs; leave out --out-of-core and Zarr outputs",
            param_hint="--out-of-core" if out_of_core else "--format",
        )
    if uncertainty is None:
        uncertainty = ensemble and not out_of_core and "zarr" not in formats
    kinds = _map_kinds(predictor) if uncertainty else []
    scale_targets = [_uncertainty_outputs(out, p, kinds) if uncertainty else None for p in paths]
    for pair in scale_targets:
        for path in [*pair[0].values(), pair[1]] if pair else []:
            check_writable(path, overwrite)
    predictor.border = border
    predictor.engine = engine
    console = Console(stderr=True)
    t0 = time.perf_counter()
    megapixels = 0.0
    with (
        _remove_if_left_empty(out),
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        ) as bar,
    ):
        for src, dst, out_fmt, scale_dst in zip(paths, targets, formats, scale_targets, strict=True):
            # The header only. A private chunk cache per input, freed with it: chunks of finished
            # inputs would otherwise sit in the shared default cache until evicted.
            source = open_source(src, axes, predictor.spatial_ndim, cache=ChunkCache())
            try:
                predictor.check_input(source.shape, source.axes)
                size = int(np.prod(source.shape, dtype=np.int64))
                streamed = out_of_core
                if streamed is None:
                    streamed = (
                        scale_dst is None
                        and not ensemble
                        and not resampling
                        and (out_fmt == "zarr" or is_zarr_path(src) or size * 4 > STREAM_ABOVE_BYTES)
                    )
                n_tiles = predictor.n_tiles(source.shape, source.axes, tile_sizes, batch_size)
                task = bar.add_task(src.name, total=n_tiles)
                options = {
                    "tile": tile_sizes,
                    "tta": tta,
                    "batch_size": batch_size,
                    "precision": precision,
                    "progress": lambda n, task=task: bar.advance(task, n),
                }
                if streamed:
                    predictor.predict_to(source, dst, overwrite=overwrite, **options)
                else:
                    _predict_in_memory(predictor, source, src, dst, overwrite, scale_dst, **options)
            finally:
                source.close()
            megapixels += size / 1e6
    seconds = time.perf_counter() - t0
    console.print(f"Wrote {len(paths)} file(s) to [bold]{out}[/] ({megapixels:.2f} MPix in {seconds:.1f} s)")
