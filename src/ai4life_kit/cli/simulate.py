"""``ai4life-kit simulate``: synthetic noisy images (or, with ``--calcium``, calcium videos) with their ground truth."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["StructuredNoise", "simulate"]


class StructuredNoise(str, Enum):
    """Structured (spatially correlated) noise on top of Poisson-Gaussian noise."""

    none = "none"
    row = "row"
    column = "column"


def simulate(
    out_dir: Annotated[Path, typer.Argument(help="Output folder (gets gt/, noisy/ and, with --pairs, noisy2/).")],
    shape: Annotated[
        str | None,
        typer.Option(
            "--shape",
            help="Image shape: Y,X (2D) or Z,Y,X (3D), default 512,512; with --calcium T,Y,X, default 500,256,256.",
            show_default=False,
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Number of images (videos with --calcium).")] = 1,
    peak: Annotated[
        float,
        typer.Option(
            "--peak",
            metavar="PHOTONS",
            help="Photons at the brightest pixel (--calcium: brightest neuron at rest); lower = noisier.",
        ),
    ] = 20.0,
    read_noise: Annotated[
        float, typer.Option("--read-noise", metavar="SIGMA", help="Gaussian read-noise std in counts.")
    ] = 2.0,
    structured_noise: Annotated[
        StructuredNoise,
        typer.Option(
            "--structured-noise",
            help="row: noise correlated along x (structN2V); column: per-column fixed pattern.",
            case_sensitive=False,
        ),
    ] = StructuredNoise.none,
    pairs: Annotated[
        bool, typer.Option("--pairs", help="Also write an independent second realisation (Noise2Noise).")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives identical files.")] = 42,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing folder written by simulate.")
    ] = False,
    calcium: Annotated[
        bool,
        typer.Option("--calcium", help="Two-photon calcium-imaging videos of neurons (TYX, noisy int16) as in CIDC25."),
    ] = False,
    neurons: Annotated[
        int | None,
        typer.Option(
            "--neurons", help="--calcium: number of neurons (default: one per 1500 pixels).", show_default=False
        ),
    ] = None,
    frame_rate: Annotated[
        float | None,
        typer.Option(
            "--frame-rate", metavar="HZ", help="--calcium: frames per second (default: 30).", show_default=False
        ),
    ] = None,
    spike_rate: Annotated[
        float | None,
        typer.Option(
            "--spike-rate", metavar="HZ", help="--calcium: mean firing rate (default: 0.5).", show_default=False
        ),
    ] = None,
    tau_decay: Annotated[
        float | None,
        typer.Option(
            "--tau-decay",
            metavar="SECONDS",
            help="--calcium: indicator decay time constant (default: 1.0, GCaMP6s-like).",
            show_default=False,
        ),
    ] = None,
    gain: Annotated[
        float | None,
        typer.Option("--gain", help="--calcium: detector counts per photon (default: 1).", show_default=False),
    ] = None,
) -> None:
    """Simulate fluorescence images (filaments, granules, nuclei) with Poisson-Gaussian noise.

    Writes OUT_DIR/gt/*.tif (float32, noise-free, camera units) and OUT_DIR/noisy/*.tif (uint16).

    With --pairs also OUT_DIR/noisy2/*.tif (Noise2Noise); parameters go to OUT_DIR/simulation.json.

    With --calcium: two-photon calcium-imaging videos of neurons, gt/*.tif float32 and noisy/*.tif int16 (axes TYX).
    """
    from rich.console import Console

    from ai4life_kit.errors import UserInputError

    # Option -> (keyword of simulate_calcium, value); None means not given.
    calcium_only = {
        "--neurons": ("n_neurons", neurons),
        "--frame-rate": ("frame_rate", frame_rate),
        "--spike-rate": ("spike_rate", spike_rate),
        "--tau-decay": ("tau_decay", tau_decay),
        "--gain": ("gain", gain),
    }
    if calcium:
        if pairs:
            raise UserInputError("--pairs is not available with --calcium (calcium videos have one noisy realisation)")
        if structured_noise is not StructuredNoise.none:
            raise UserInputError(
                "--structured-noise is not available with --calcium (its detector noise is Poisson-Gaussian)"
            )
        params = {keyword: value for keyword, value in calcium_only.values() if value is not None}
        _simulate_calcium(out_dir, shape, n, seed, overwrite, peak=peak, read_noise=read_noise, **params)
        return
    given = [name for name, (_, value) in calcium_only.items() if value is not None]
    if given:
        raise UserInputError(f"{', '.join(given)} only applies to calcium videos: add --calcium")

    from ai4life_kit.simulate import parse_shape, simulate_dataset

    shape = "512,512" if shape is None else shape
    result = simulate_dataset(
        out_dir,
        shape=parse_shape(shape),
        n=n,
        peak=peak,
        read_noise=read_noise,
        structured_noise=structured_noise.value,
        pairs=pairs,
        seed=seed,
        overwrite=overwrite,
    )
    console = Console()
    folders = ["gt", "noisy"] + (["noisy2"] if pairs else [])
    n_files = sum(len(result[f]) for f in folders)
    console.print(
        f"Wrote {n_files} images ({result['axes']} {shape}) to [bold]{result['out_dir']}[/]: "
        + ", ".join(f"{f}/ ({len(result[f])})" for f in folders)
    )
    console.print(f"Input PSNR (noisy vs gt, gt range): [bold]{result['mean_input_psnr']:.2f} dB[/]")


def _simulate_calcium(out_dir: Path, shape: str | None, n: int, seed: int, overwrite: bool, **params: float) -> None:
    """``simulate --calcium``: write calcium videos and report them as the image simulator does."""
    from rich.console import Console

    from ai4life_kit.simulate import parse_video_shape, simulate_calcium_dataset

    shape = "500,256,256" if shape is None else shape
    # Options left out keep simulate_calcium's defaults (documented there, with the model).
    result = simulate_calcium_dataset(
        out_dir, n=n, shape=parse_video_shape(shape), seed=seed, overwrite=overwrite, **params
    )
    console = Console()
    console.print(
        f"Wrote {len(result['noisy'])} calcium video(s) ({result['axes']} {shape}) to [bold]{result['out_dir']}[/]: "
        f"gt/ ({len(result['gt'])}), noisy/ ({len(result['noisy'])})"
    )
    console.print(f"Input PSNR (noisy vs gt, gt range): [bold]{result['mean_input_psnr']:.2f} dB[/]")
