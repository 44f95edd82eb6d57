"""``ai4life-kit validate``: test a bioimage.io model zip here, or in every consumer's own runtime.

Only typer and the standard library are imported here; bioimageio and torch are imported inside
the command body so that ``ai4life-kit --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["validate"]

_STYLE = {"passed": "green", "failed": "bold red", "n/a": "dim"}


def _consumer_table(report, verbose: bool):
    """consumer x (rules, weight formats) -> passed / failed / n/a, with the runtime's versions."""
    from rich.table import Table

    from ai4life_kit.export.consumers import CONSUMERS, WEIGHT_FORMATS

    table = Table(title=f"Consumers of {Path(report.source).name}", show_lines=verbose)
    table.add_column("consumer")
    table.add_column("runtime")
    table.add_column("rules")
    for wf in WEIGHT_FORMATS:
        table.add_column(wf)
    for name, row in report.cells.items():
        v = report.versions.get(name, {})
        runtime = ", ".join(
            f"{k.replace('bioimageio.', '')} {v[k]}" for k in ("torch", "onnxruntime", "bioimageio.core") if k in v
        )
        cells = []
        for column in ("rules", *WEIGHT_FORMATS):
            cell = row.get(column)
            if cell is None:
                cells.append("")
                continue
            text = f"[{_STYLE[cell.status]}]{cell.status}[/]"
            if verbose:
                text += f"\n[dim]{cell.detail}[/]"
            elif cell.failed:  # the reason, short; --verbose or --json have all of it
                text += f"\n[dim]{cell.detail[:117] + '...' if len(cell.detail) > 120 else cell.detail}[/]"
            cells.append(text)
        table.add_row(CONSUMERS[name].title, runtime, *cells)
    return table


def validate(
    model: Annotated[Path, typer.Argument(help="A bioimage.io model zip (ours or anyone's).")],
    consumers: Annotated[
        bool,
        typer.Option(
            "--consumers",
            help="Test in every consumer's own runtime (bioimage.io's BioEngine, ilastik, deepImageJ's "
            "engines, QuPath) and print one table; each runtime is installed from PyPI on first use into "
            "~/.cache/ai4life-kit/runtimes ($AI4LIFE_KIT_CACHE), several GB each.",
        ),
    ] = False,
    consumer: Annotated[
        list[str] | None,
        typer.Option(
            "--consumer",
            help="Only these consumers (repeatable): current, bioengine, ilastik, deepimagej, deepimagej-1.13, qupath.",
        ),
    ] = None,
    ilastik_stack: Annotated[
        bool, typer.Option("--ilastik-stack", help="Same as --consumer ilastik (kept for old scripts).")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the consumer table as JSON to this file.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the numbers of passed checks too.")] = False,
) -> None:
    """Test a model zip with bioimageio.core and print which checks failed and why.

    With --consumers (or --consumer NAME) the package runs in the runtimes scientists use and one
    table says, per consumer and weight format, passed / failed (with the failing check and its
    numbers) / n/a. Exit code 0 only when everything tested passed; 1 when something failed; 2 when
    the file is not a model zip at all (missing, corrupt, no rdf.yaml).

    Testing a package runs its code (its TorchScript and its architecture's Python source), here
    and in the consumers' runtimes, which are isolated venvs, not sandboxes: only test packages you
    trust.
    """
    import json

    from rich.console import Console

    from ai4life_kit.errors import Ai4LifeKitError
    from ai4life_kit.export.validate import inspect_zip, run_package_test
    from ai4life_kit.fileio import atomic_write_text

    inspect_zip(model)  # a clear one-line error (exit 2) for files that are not model zips
    names = list(consumer or [])
    if ilastik_stack and "ilastik" not in names:
        names.append("ilastik")
    if not consumers and not names:
        report = run_package_test(model)
        typer.echo(report.format(verbose=verbose))
        if not report.passed:
            raise Ai4LifeKitError(f"{model} failed the bioimageio test: {report.one_line()}")
        return

    from ai4life_kit.export.consumers import CONSUMERS, run_consumers

    console = Console(stderr=True)
    result = run_consumers(
        model, None if consumers else names, log=lambda msg: console.print(f"  {msg}...", highlight=False)
    )
    Console(width=max(160, Console().width)).print(_consumer_table(result, verbose))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result.to_dict(), indent=2) + "\n")
    if not result.passed:
        first = result.failures()[0]
        name = first.split(" ", 1)[0]
        raise Ai4LifeKitError(
            f"{model} fails in {CONSUMERS[name].title}: {first.split(' ', 1)[1]}"
            + (f" (+{len(result.failures()) - 1} more)" if len(result.failures()) > 1 else "")
        )
