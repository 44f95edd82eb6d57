"""``ai4life-kit package``: a tested bioimage.io model zip from a run directory (``validate`` is in ``validate.py``).

Only typer and the standard library are imported here; bioimageio and torch are imported inside
the command bodies so that ``ai4life-kit --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["package"]


# Longer than the kit's 80-line rule only by its signature: Typer reads one parameter per option.
def package(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `ai4life-kit train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Package to write, e.g. actin-n2v2.bioimageio.zip.")],
    author: Annotated[
        list[str],
        typer.Option("--author", "-a", help="Author name (repeatable; the first one is the maintainer)."),
    ],
    name: Annotated[str | None, typer.Option(help="Model name (default: the spec's name or the run folder).")] = None,
    description: Annotated[str | None, typer.Option(help="One-sentence description (default: generated).")] = None,
    github_user: Annotated[
        str | None,
        typer.Option(help="GitHub user of the first author; makes them the maintainer (needed for upload)."),
    ] = None,
    license: Annotated[str, typer.Option(help="SPDX license identifier of the model.")] = "MIT",
    version: Annotated[str, typer.Option(help="Model version.")] = "0.1.0",
    test_image: Annotated[
        Path | None,
        typer.Option(
            help="TIFF or Zarr image for the test/sample tensors and the cover (default: the run's first "
            "training image, as recorded in its training_summary.json)."
        ),
    ] = None,
    test_axes: Annotated[str | None, typer.Option(help="Axes of --test-image, e.g. SCYX (default: metadata).")] = None,
    synthetic_test_data: Annotated[
        bool,
        typer.Option(
            "--synthetic-test-data",
            help="Use seeded synthetic noise (with the training statistics) as test/sample tensors and cover, "
            "for runs whose training images are gone or may not be shared; the package README says so.",
        ),
    ] = False,
    no_onnx: Annotated[bool, typer.Option("--no-onnx", help="Leave out the ONNX weights.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing package.")] = False,
) -> None:
    """Build a bioimage.io model zip from a run directory and test it with bioimageio.core.

    The package has TorchScript, state-dict and (unless --no-onnx) ONNX weights, the training
    normalisation built in (raw intensities in, raw intensities out), test and sample tensors
    cropped from the training data (or --test-image), documentation and a cover. It is written
    only if `bioimageio test` passes. When the training images cannot be read any more, give
    --test-image, or --synthetic-test-data to package synthetic noise (the README says so).
    """
    import time

    from rich.console import Console

    from ai4life_kit.export import package_run

    console = Console(stderr=True)
    t0 = time.perf_counter()
    result = package_run(
        run_dir,
        out,
        name=name,
        authors=author,
        github_user=github_user,
        license=license,
        description=description,
        version=version,
        onnx=not no_onnx,
        overwrite=overwrite,
        test_image=test_image,
        test_axes=test_axes,
        synthetic_test_data=synthetic_test_data,
        log=lambda msg: console.print(f"  {msg}..."),
    )
    for note in result.notes:
        if github_user is None and "maintainers" in note:
            continue  # said more helpfully below
        console.print(f"[yellow]Note:[/] {note}")
    if github_user is None:
        console.print(
            "[yellow]Note:[/] no --github-user: the package works everywhere, but bioimage.io needs a "
            "maintainer with a GitHub account before upload."
        )
    report = result.report
    stack = ", ".join(f"{k} {v}" for k, v in report.stack.items()) if report is not None else ""
    typer.echo(
        f"Packaged {result.path} ({result.size_bytes / 1e6:.1f} MB, weights: {', '.join(result.weight_formats)}); "
        f"bioimageio test passed ({len(report.checks) if report else 0} checks{', ' + stack if stack else ''}) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
