"""``ai4life-kit predict``: denoise TIFFs with a run directory or a bioimage.io package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ai4life_kit.cli._options import parse_sizes

__all__ = ["predict"]


def predict(
    model: Annotated[Path, typer.Argument(help="Run directory or .bioimageio.zip package.")],
    inputs: Annotated[list[str], typer.Argument(help="TIFF files, folders or globs to denoise.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (files keep their names).")],
    axes: Annotated[str | None, typer.Option(help="Axes of the inputs, e.g. SCYX (default: metadata).")] = None,
    tile: Annotated[
        str | None, typer.Option(help="Largest network input tile, e.g. 256,256 (default 768 in 2D, 128 in 3D).")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average the 8 flips/rotations (slower, smoother).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Tiles per forward pass.")] = 4,
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA), fp32 or bf16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Denoise images; outputs are float32 TIFFs with the input's shape, axes and intensity units."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ai4life_kit.data.tiff_io import read_image, resolve_inputs, write_image
    from ai4life_kit.fileio import check_writable
    from ai4life_kit.prediction import Predictor

    tile_sizes = parse_sizes(tile, "--tile")
    paths = resolve_inputs(inputs, "input")
    targets = [out / (p.stem + ".tif") for p in paths]
    for dst in targets:
        check_writable(dst, overwrite)
    if len(set(targets)) != len(targets):
        raise typer.BadParameter("two inputs have the same file name; outputs would collide", param_hint="INPUTS")
    predictor = Predictor.load(model, device)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    megapixels = 0.0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        for src, dst in zip(paths, targets, strict=True):
            img = read_image(src, axes, predictor.spatial_ndim)
            predictor.check_input(img.data.shape, img.axes)
            task = bar.add_task(src.name, total=predictor.n_tiles(img.data.shape, img.axes, tile_sizes))
            result = predictor.predict(
                img.data,
                img.axes,
                tile_sizes,
                tta,
                batch_size,
                precision,
                progress=lambda n, task=task: bar.advance(task, n),
            )
            write_image(dst, result, img.axes, overwrite=overwrite)
            megapixels += img.data.size / 1e6
    seconds = time.perf_counter() - t0
    console.print(f"Wrote {len(paths)} file(s) to [bold]{out}[/] ({megapixels:.2f} MPix in {seconds:.1f} s)")
