"""``ai4life-kit challenge``: AI4Life denoising challenge (Grand Challenge) submissions.

``build`` renders a build context from bioimage.io zip(s), ``test`` builds and runs the image the
way Grand Challenge does, ``save`` exports it for upload, and ``run`` is the entry point inside
the image (it also runs outside one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ai4life_kit.cli._group import new_app

__all__ = ["app"]

app = new_app(
    "AI4Life denoising challenge submissions: build a container context from a bioimage.io zip, test it "
    "as Grand Challenge runs it, save it for upload."
)

_ENGINE_HELP = "Container engine: auto (docker with a daemon, else podman), docker, podman or none."
_BASE_HELP = "Base image to build on (default: podman bootstraps Debian bookworm's Python once; docker pulls python:3.11-slim-bookworm)."  # noqa: E501
_CHALLENGE_HELP = (
    "mdc24 (Microscopy Denoising Challenge 2024), mdc25 (its supervised 2025 edition) or cidc25 (Calcium Imaging "
    "Denoising Challenge 2025: (T, Y, X) videos; a 2D model runs frame by frame, a 3D one over space and time)."
)


def _say(message: str) -> None:
    typer.echo(message)


def _say_err(message: str) -> None:
    typer.echo(message, err=True)


@app.command("build")
def build(
    models: Annotated[
        list[Path],
        typer.Argument(
            help="bioimage.io zip from `ai4life-kit package`; give one per channel (in channel order) "
            "for per-channel 1-channel models.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the build context (created).")],
    track: Annotated[
        str | None,
        typer.Option(
            "--track",
            "-t",
            help="MDC24: structured ((S, Y, X) stacks) or unstructured ((S, C, Y, X)); the 2025 challenges have "
            "one track each (default).",
        ),
    ] = None,
    challenge: Annotated[str, typer.Option("--challenge", "-c", help=_CHALLENGE_HELP)] = "mdc24",
    name: Annotated[str | None, typer.Option(help="Image and archive name (default: the --out folder's name).")] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Bake test-time augmentation in (8 flips/rotations; 4 flips for structN2V).")
    ] = False,
    torch_wheel: Annotated[
        Path | None,
        typer.Option(help="Local torch CPU wheel (cp311) to put in wheels/ (default: found in pip's find-links)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing context folder.")] = False,
) -> None:
    """Write a complete build context: Dockerfile, entry point, model, pinned requirements, README, test input."""
    from ai4life_kit.challenge.context import render_context

    ctx = render_context(
        models,
        track.strip().lower() if track else None,
        out,
        challenge=challenge,
        name=name,
        overwrite=overwrite,
        tta=tta,
        torch_wheel=torch_wheel,
        log=_say,
    )
    _say(f"Build context for {ctx.image} ({ctx.challenge.name}, {ctx.track} track) written to {ctx.path}")
    _say(f"Next: ai4life-kit challenge test {ctx.path}   then: ai4life-kit challenge save {ctx.path}")


@app.command("test")
def test(
    context: Annotated[Path, typer.Argument(help="Build context written by `challenge build`.")],
    engine: Annotated[str, typer.Option(help=_ENGINE_HELP)] = "auto",
    base_image: Annotated[str | None, typer.Option(help=_BASE_HELP)] = None,
    input_root: Annotated[
        Path | None,
        typer.Option(help="Folder laid out like /input to run on (default: the context's test/input)."),
    ] = None,
    memory: Annotated[str, typer.Option(help="Container memory limit.")] = "4g",
    timeout: Annotated[int, typer.Option(min=1, help="Seconds the run may take.")] = 3600,
) -> None:
    """Build the image and run it like Grand Challenge (no network, read-only), then check every output."""
    from ai4life_kit.challenge.ctest import format_report, run_context_test

    report = run_context_test(
        context, engine=engine, base_image=base_image, input_root=input_root, memory=memory, timeout=timeout, log=_say
    )
    _say(format_report(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command("save")
def save(
    context: Annotated[Path, typer.Argument(help="Build context written by `challenge build`.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Archive (default: NAME.tar.gz next to it).")] = None,
    engine: Annotated[str, typer.Option(help=_ENGINE_HELP)] = "auto",
    base_image: Annotated[str | None, typer.Option(help=_BASE_HELP)] = None,
    load_check: Annotated[
        bool, typer.Option("--load-check", help="Also load the archive into a scratch image store.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing archive.")] = False,
) -> None:
    """Export the image as NAME.tar.gz (docker-save layout, gzip) for upload, and verify the archive."""
    from ai4life_kit.challenge.save import save_context_image

    rep = save_context_image(
        context, out, engine=engine, overwrite=overwrite, load_check=load_check, base_image=base_image, log=_say
    )
    loaded = ", loads" if rep.loaded else ""
    _say(
        f"Saved {rep.archive} ({rep.size_bytes / 1e6:.0f} MB gzip, {rep.uncompressed_bytes / 1e6:.0f} MB "
        f"uncompressed, {rep.layers} layers, image {rep.image_id[:12]}) in {rep.seconds:.0f} s; "
        f"verified: manifest, config digest, layer digests{loaded}"
    )
    _say("Upload it on the algorithm's Containers page on grand-challenge.org (see the context's README.md).")


@app.command("run")
def run(
    model: Annotated[
        list[Path] | None,
        typer.Option(
            "--model",
            "-m",
            help="bioimage.io zip; repeat it once per channel for per-channel models; a folder means its "
            "*.zip files by name (default: /opt/app/model, the model baked into the image).",
            show_default=False,
        ),
    ] = None,
    input_root: Annotated[
        Path, typer.Option(help="Folder holding inputs.json or the challenge's images/<input folder>/.")
    ] = Path("/input"),
    output_root: Annotated[
        Path, typer.Option(help="Outputs go to OUTPUT_ROOT/images/<the challenge's output folder>/.")
    ] = Path("/output"),
    device: Annotated[str, typer.Option(help="cpu, cuda, mps or auto.")] = "cpu",
    tile: Annotated[str | None, typer.Option(help="Network input tile, e.g. 512,512 (default: 512).")] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Average the 8 flips/rotations (8x slower; 4 flips for structN2V).")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Tiles per forward pass.")] = 4,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    self_test: Annotated[
        bool, typer.Option("--self-test", help="Only load the model(s) and denoise a small random stack.")
    ] = False,
    challenge: Annotated[str, typer.Option("--challenge", "-c", help=_CHALLENGE_HELP)] = "mdc24",
) -> None:
    """Denoise every input of the challenge into float32 TIFFs of the input's shape; exit 1 if any fails."""
    from ai4life_kit.challenge import runner
    from ai4life_kit.cli._options import parse_sizes

    options = {"tile": parse_sizes(tile, "--tile"), "tta": tta, "batch_size": batch_size}
    paths = runner.resolve_model_paths(model)
    models = runner.load_models(paths, device, challenge)
    _say(runner.environment_line(paths, models, device))
    if self_test:
        runner.self_test(models, log=_say, **options)
        return
    _say(f"input root {input_root}, output root {output_root}")
    report = runner.run_cases(
        models,
        input_root,
        output_root,
        overwrite=overwrite,
        challenge=challenge,
        log=_say,
        log_error=_say_err,
        **options,
    )
    if report.exit_code:
        raise typer.Exit(report.exit_code)
