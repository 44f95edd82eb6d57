"""``ai4life-kit demo``: the whole job on embedded simulated data, in about a minute on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["demo", "DEMO_SPEC"]

# N2V2 is the self-supervised default we would recommend on real data; the budget
# (10 epochs x 12 steps x 32 patches of 64x64) is about a minute on two CPU cores.
DEMO_SPEC = {
    "name": "demo-n2v2-2d",
    "description": "N2V2 on a simulated 512x512 fluorescence image (peak 20 photons)",
    "algorithm": {"name": "n2v2"},
    "model": {"depth": 2, "width": 32},
    "data": {"dims": 2, "patch_size": [64, 64], "val_fraction": 0.1},
    "training": {
        "epochs": 10,
        "steps_per_epoch": 12,
        "batch_size": 32,
        "val_patches": 64,
        "early_stopping_patience": None,
    },
}


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo writes.")] = Path(
        "demo_output"
    ),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous demo folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Simulate noisy images with known ground truth, train N2V2, denoise, package, and report PSNR."""
    import time

    from rich.console import Console
    from rich.table import Table

    from ai4life_kit.config import parse_spec
    from ai4life_kit.data.tiff_io import read_image, write_image
    from ai4life_kit.fileio import prepare_output_dir
    from ai4life_kit.metrics import psnr
    from ai4life_kit.prediction import Predictor
    from ai4life_kit.simulate import simulate_dataset
    from ai4life_kit.training import train

    console = Console(stderr=True)
    t0 = time.perf_counter()
    prepare_output_dir(out, overwrite, is_ours=lambda p: (p / "demo_report.txt").is_file())

    console.print("[bold]1/4[/] Simulating two 512x512 noisy images (peak 20 photons, read noise 2)...")
    sim = simulate_dataset(out / "data", shape=(512, 512), n=2, peak=20.0, read_noise=2.0, seed=42)

    console.print("[bold]2/4[/] Training N2V2 (self-supervised: it sees only the noisy images)...")
    run_dir = out / "run"
    train(
        parse_spec(DEMO_SPEC, "demo"), [str(p) for p in sim["noisy"]], None, run_dir, device=device, progress=not quiet
    )

    console.print("[bold]3/4[/] Denoising...")
    predictor = Predictor.from_run_dir(run_dir, device)
    table = Table(title="ai4life-kit demo: PSNR against the simulated ground truth (dB)")
    for col in ("image", "noisy input", "denoised", "gain"):
        table.add_column(col, justify="right" if col != "image" else "left")
    lines = []
    for noisy_path, gt_path in zip(sim["noisy"], sim["gt"], strict=True):
        noisy = read_image(noisy_path)
        gt = read_image(gt_path).data
        result = predictor.predict(noisy.data, noisy.axes)
        write_image(out / "denoised" / noisy_path.name, result, noisy.axes)
        before, after = psnr(gt, noisy.data), psnr(gt, result)
        table.add_row(noisy_path.name, f"{before:.2f}", f"{after:.2f}", f"{after - before:+.2f}")
        lines.append(f"{noisy_path.name}: input PSNR {before:.2f} dB, output PSNR {after:.2f} dB")

    console.print("[bold]4/4[/] Packaging for bioimage.io and testing the package with bioimageio.core...")
    package = _package(run_dir, out / "demo-n2v2.bioimageio.zip")
    seconds = time.perf_counter() - t0
    lines.append(f"run directory: {run_dir}")
    if package is not None:
        lines.append(f"bioimage.io package: {package.path} ({package.size_bytes / 1e6:.1f} MB, test passed)")
    lines.append(f"denoised images: {out / 'denoised'}")
    lines.append(f"total time: {seconds:.1f} s")
    (out / "demo_report.txt").write_text("\n".join(lines) + "\n")
    rich_out = Console()
    rich_out.print(table)
    rich_out.print(
        f"Files: noisy + ground truth in {out / 'data'}, run directory {run_dir}, denoised TIFFs in {out / 'denoised'}"
    )
    if package is not None:
        rich_out.print(package.report.format())
        rich_out.print(
            f"bioimage.io package: {package.path} ({package.size_bytes / 1e6:.1f} MB); next: "
            f"ai4life-kit challenge build {package.path} --track structured --out {out / 'submission'}"
        )
    rich_out.print(f"Total time: {seconds:.1f} s")


def _package(run_dir: Path, zip_path: Path):
    """Package and test the demo model; None (with a note) where the bioimageio extra is missing."""
    try:
        import bioimageio.core  # noqa: F401
    except ImportError:
        print("Skipping packaging: install the bioimageio extra (pip install -e '.[bioimageio]').")
        return None
    from ai4life_kit.export import package_run

    return package_run(
        run_dir,
        zip_path,
        name="ai4life-kit demo N2V2 2D",
        authors=["ai4life-kit demo"],
        description="N2V2 denoiser trained by `ai4life-kit demo` on a simulated fluorescence image.",
    )
