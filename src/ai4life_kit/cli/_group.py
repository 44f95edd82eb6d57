"""A Typer group that turns ai4life-kit errors into one line on stderr and an exit code."""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup

from ai4life_kit.errors import Ai4LifeKitError

__all__ = ["KitGroup", "new_app"]


class KitGroup(TyperGroup):
    """Catch domain errors around every sub-command: exit 2 for user errors, 1 for failures."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        """Print usage errors (bad option values, missing arguments) as one line too.

        Click would print a usage block and a boxed message; a one-line ``Error: ...`` that
        names the option is easier to read and to grep in logs.
        """
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except Exception as exc:
            # typer vendors click in recent versions: recognise its exceptions by their shape.
            if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
                hint = ""
                ctx = getattr(exc, "ctx", None)
                if ctx is not None:
                    hint = f" (see '{ctx.command_path} --help')"
                if exc.format_message():  # empty when help was shown for a bare command
                    print(f"Error: {exc.format_message()}{hint}", file=sys.stderr)
                code = exc.exit_code
            elif type(exc).__name__ == "Abort":
                print("Aborted.", file=sys.stderr)
                code = 1
            else:
                raise
            if standalone_mode:
                sys.exit(code)
            raise
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except Ai4LifeKitError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            # Typer/click control flow (Exit, usage errors) passes through untouched; typer
            # vendors click in recent versions, so match on the module, not on a class.
            if type(exc).__module__.startswith(("typer", "click")) or os.environ.get("AI4LIFE_KIT_DEBUG"):
                raise
            # An internal bug: still one line, unless debugging.
            typer.echo(
                f"Internal error: {type(exc).__name__}: {exc} (set AI4LIFE_KIT_DEBUG=1 for the traceback)",
                err=True,
            )
            raise typer.Exit(1) from None


def new_app(help_text: str) -> typer.Typer:
    """A Typer app using :class:`KitGroup`, with plain (fast, non-Rich) exception output."""
    return typer.Typer(
        cls=KitGroup,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def echo_err(message: str) -> None:
    """Print a one-line message on stderr."""
    print(message, file=sys.stderr)
