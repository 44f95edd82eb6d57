"""The ``ai4life-kit`` Typer application: one module per command (group), mounted here.

Command modules import only typer and the standard library at import time so that
``ai4life-kit --help`` stays fast; torch and bioimageio are imported inside command bodies.
"""

from __future__ import annotations

from ai4life_kit.cli import challenge, demo, evaluate, package, predict, simulate, train, validate
from ai4life_kit.cli._group import new_app

__all__ = ["app", "main"]

app = new_app("Denoise fluorescence microscopy: train, predict, package for bioimage.io, submit to AI4Life.")
app.command("train")(train.train)
app.command("predict")(predict.predict)
app.command("simulate")(simulate.simulate)
app.command("evaluate")(evaluate.evaluate)
app.command("package")(package.package)
app.command("validate")(validate.validate)
app.add_typer(challenge.app, name="challenge")
app.command("demo")(demo.demo)


def main() -> None:
    """Console-script entry point."""
    app()
