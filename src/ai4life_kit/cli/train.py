"""``ai4life-kit train``: train a denoiser from a YAML spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ai4life_kit.cli._options import parse_sizes

__all__ = ["train"]


# Longer than the kit's 80-line rule only by its signature: Typer reads one parameter per option.
def train(
    spec: Annotated[Path, typer.Argument(help="Training recipe (YAML), e.g. model_specs/n2v2-2d.yaml.")],
    extra: Annotated[
        list[str] | None,
        typer.Argument(hidden=True, help="Unquoted glob expansions of --data (e.g. --data noisy/*.tif)."),
    ] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", "-d", help="Noisy input: files, folders or quoted globs (repeatable).")
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Targets paired by order: clean (CARE) or second noisy set (n2n)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory to create.")] = None,
    axes: Annotated[str | None, typer.Option(help="Axes of the input files, e.g. SCYX (default: metadata).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override training.epochs.")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(min=1, help="Override training.steps_per_epoch.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Override training.batch_size.")] = None,
    patch_size: Annotated[str | None, typer.Option(help="Override data.patch_size, e.g. 64,64.")] = None,
    val_fraction: Annotated[float | None, typer.Option(min=0.0, max=0.95, help="Override data.val_fraction.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto (bf16 on CUDA), fp32 or bf16.")] = None,
    loading: Annotated[
        str | None,
        typer.Option(
            help="Override data.loading: memory, lazy (read patches from disk; for data larger than RAM) or auto."
        ),
    ] = None,
    compile_model: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="Override training.compile (torch.compile the training step).",
            show_default=False,
        ),
    ] = None,
    anisotropy: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Isotropic recipes (task.kind: isotropic): the axial step over the lateral pixel size of --data "
            "(overrides task.factor).",
        ),
    ] = None,
    semi_synthetic: Annotated[
        bool,
        typer.Option(
            "--semi-synthetic",
            help="Restoration recipes: make the inputs from the clean --data with the recipe's task.degradation "
            "(PSF blur, subsampling, noise) instead of reading --target.",
        ),
    ] = False,
    psf: Annotated[
        Path | None,
        typer.Option(
            help="Restoration recipes: a PSF image (TIFF) for the degradation instead of the recipe's Gaussian "
            "task.degradation.psf_sigma.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    seed: Annotated[int | None, typer.Option(help="Override training.seed.")] = None,
    ensemble: Annotated[
        int | None,
        typer.Option(
            min=2,
            metavar="K",
            help="Train K members with seeds seed..seed+K-1 into OUT/member-1..K, one after another; "
            "predict then writes their mean, and their spread into its own OUT/uncertainty/.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out: same spec and data; only --epochs (and early stopping, "
            "compile, loading) may change.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace the run in --out: deletes only the files training wrote, keeps the rest."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a U-Net (N2V, N2V2, structN2V, Noise2Noise or CARE) and write a run directory.

    CARE recipes with a task also restore resolution: super-resolution (model_specs/care-sr2x.yaml),
    isotropic reconstruction (care-isotropic.yaml, --anisotropy) and deconvolution (care-deconv-2d.yaml),
    from real pairs or from semi-synthetic ones made of the clean --data.
    """
    import time

    from rich.console import Console

    from ai4life_kit.config import load_spec, parse_spec
    from ai4life_kit.errors import UserInputError

    if not data:
        raise typer.BadParameter("give the noisy images with --data", param_hint="--data")
    if out is None:
        raise typer.BadParameter("give the run directory with --out", param_hint="--out")
    if extra:
        if target:
            raise UserInputError(
                f"unexpected extra arguments {extra[:3]}: quote globs ('noisy/*.tif') or pass folders "
                "when using both --data and --target"
            )
        data = [*data, *extra]
    if resume and overwrite:
        raise UserInputError("--resume and --overwrite exclude each other")

    # Also on --resume the command's own spec and overrides: the training loop checks them against the
    # run's spec.yaml and refuses what a resume may not change, instead of ignoring a different spec.
    raw = load_spec(spec).model_dump(mode="json")
    overrides = {
        ("training", "epochs"): epochs,
        ("training", "steps_per_epoch"): steps_per_epoch,
        ("training", "batch_size"): batch_size,
        ("training", "seed"): seed,
        ("training", "precision"): precision,
        ("data", "patch_size"): parse_sizes(patch_size, "--patch-size"),
        ("data", "val_fraction"): val_fraction,
        ("data", "axes"): axes,
        ("data", "loading"): loading,
        ("training", "compile"): compile_model,
    }
    kind = raw["task"]["kind"]
    if anisotropy is not None:
        if kind != "isotropic":
            raise UserInputError(f"--anisotropy is for isotropic recipes; {spec} has task.kind {kind!r}")
        overrides["task", "factor"] = anisotropy
    if semi_synthetic:
        if kind in ("denoise", "isotropic"):
            why = "makes its pairs from --data anyway" if kind == "isotropic" else "is for restoration recipes"
            raise UserInputError(f"--semi-synthetic {why}; {spec} has task.kind {kind!r}")
        overrides["task", "semi_synthetic"] = True
    for (section, key), value in overrides.items():
        if value is not None:
            raw[section][key] = value
    degradation = raw["task"]["degradation"]
    if psf is not None:
        if kind == "denoise":
            raise UserInputError(f"--psf is for restoration recipes; {spec} has task.kind {kind!r}")
        degradation["psf"], degradation["psf_sigma"] = str(psf), 0.0
    if degradation.get("psf"):  # recorded absolute: --resume and packaging may run from elsewhere
        # --psf is relative to where the command runs, a recipe's psf to the recipe's folder
        base = Path.cwd() if psf is not None else spec.resolve().parent
        degradation["psf"] = str((base / degradation["psf"]).resolve())
    resolved = parse_spec(raw, f"{spec} (with command-line overrides)")

    from ai4life_kit.training import train as run_training
    from ai4life_kit.training.distributed import launch_rank
    from ai4life_kit.training.ensemble import train_ensemble

    console = Console(stderr=True)
    t0 = time.perf_counter()
    options = {
        "device": device,
        "resume": resume,
        "overwrite": overwrite,
        "progress": not quiet,
        "log": lambda message: console.print(message, markup=False, highlight=False, soft_wrap=True),
    }
    if ensemble is None:
        run_training(resolved, data, target, out, **options)
    else:
        train_ensemble(resolved, data, target, out, ensemble, **options)
    if launch_rank() == 0:  # under torchrun every process gets here; one line is enough
        console.print(f"Run directory: [bold]{out}[/] ({time.perf_counter() - t0:.1f} s)")
