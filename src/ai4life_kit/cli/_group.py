"""A Typer group that turns ai4life-kit errors into one line on stderr and an exit code."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import typer
from typer.core import TyperGroup

from ai4life_kit.errors import Ai4LifeKitError, Terminated

__all__ = ["KitGroup", "new_app"]


class KitGroup(TyperGroup):
    """Catch domain errors around every sub-command: exit 2 for user errors, 1 for failures."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        """Print usage errors (bad option values, missing arguments) as one line too.

        Click would print a usage block and a boxed message; a one-line ``Error: ...`` that
        names the option is easier to read and to grep in logs.
        """
        try:
            with _sigterm_unwinds():
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
        except Terminated:
            typer.echo("Terminated.", err=True)
            raise typer.Exit(143) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # `ai4life-kit ... | head`: the reader left; nothing more can be printed, and Python
            # would complain again at exit while flushing stdout.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except OSError as exc:
            if os.environ.get("AI4LIFE_KIT_DEBUG"):
                raise
            message, code = _os_error_line(exc)
            typer.echo(f"Error: {message}", err=True)
            raise typer.Exit(code) from None
        except Exception as exc:
            # Typer/click control flow (Exit, usage errors) passes through untouched; typer
            # vendors click in recent versions, so match on the module, not on a class.
            if type(exc).__module__.startswith(("typer", "click")) or os.environ.get("AI4LIFE_KIT_DEBUG"):
                raise
            if _TERMINATED.is_set():
                # The SIGTERM's Terminated was raised inside code that wraps what it catches (pydantic's
                # serializer turns it into a PydanticSerializationError); the cleanups have run all the same.
                typer.echo("Terminated.", err=True)
                raise typer.Exit(143) from None
            # An internal bug: still one line, unless debugging.
            typer.echo(
                f"Internal error: {type(exc).__name__}: {exc} (set AI4LIFE_KIT_DEBUG=1 for the traceback)",
                err=True,
            )
            raise typer.Exit(1) from None


def _os_error_line(exc: OSError) -> tuple[str, int]:
    """One line and an exit code for an OSError that no command turned into a message of its own.

    Storage problems (full disk, read-only, no permission, a file where a folder should be) name
    the path; anything else still reads as the operating system's words plus the path.
    """
    from ai4life_kit.fileio import write_failure

    if exc.filename is not None:
        failure = write_failure(exc, Path(exc.filename))
        if failure is not None:
            return str(failure), failure.exit_code
    where = f": {exc.filename}" if exc.filename is not None else ""
    return f"{exc.strerror or type(exc).__name__}{where}", 1


# Set by the SIGTERM handler: a Terminated that a library wrapped in its own exception still exits 143.
_TERMINATED = threading.Event()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn the first SIGTERM into :class:`Terminated` so that temporaries are removed as on Ctrl-C.

    Python's default SIGTERM action ends the process without running ``finally`` blocks, which
    left hidden ``.NAME.tmp.*`` files behind. Later SIGTERMs are ignored while cleanup runs (a
    scheduler that loses patience sends SIGKILL). Only the main thread can set handlers, and a
    SIGTERM the parent told us to ignore stays ignored.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _TERMINATED.set()
        raise Terminated

    _TERMINATED.clear()
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
