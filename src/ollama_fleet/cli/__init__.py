"""The Typer app: the only place that prints and exits. Each command maps its options to one
call into the core and renders the result with one view (cli/views.py); errors the core
raises (FleetError) become one red line and an exit code here, once."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ollama_fleet import __version__
from ollama_fleet.errors import BadInput, FleetError, Interrupted

app = typer.Typer(
    name="ollama-fleet",
    help="One pinned `ollama serve` per GPU, supervised, behind one gateway.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# stdout carries paths and env values the user typed: print them as text, never as markup.
out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False)
_verbose = False

F = TypeVar("F", bound=Callable[..., Any])


def set_verbose(value: bool) -> None:
    global _verbose
    _verbose = value


def command(name: str, group: typer.Typer | None = None) -> Callable[[F], F]:
    """Register a command (on `app`, or a group of it) behind the one error boundary:
    FleetError -> one red line + exit code."""

    def register(func: F) -> F:
        @functools.wraps(func)
        def boundary(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Interrupted as exc:  # Ctrl-C or SIGTERM on an attached command: nothing to say
                raise typer.Exit(exc.exit_code) from None
            except FleetError as exc:
                if _verbose:
                    traceback.print_exc()
                lines = str(exc).splitlines() or [type(exc).__name__]
                # One line per bad field; other errors are one line plus, indented, what
                # explains it (the tail of an instance's log).
                for n, line in enumerate(lines):
                    prefix = "[red]error:[/red] " if n == 0 or isinstance(exc, BadInput) else ""
                    err.print(f"{prefix}{escape(line)}", soft_wrap=True)
                raise typer.Exit(exc.exit_code) from None

        (group or app).command(name)(boundary)
        return func

    return register


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


class Terminal:
    """The core's Progress on a terminal: lines on stdout, warnings and the live status on
    stderr (the status only inside `live()`)."""

    def __init__(self) -> None:
        self._status: Any = None

    def say(self, line: str) -> None:
        out.print(line, soft_wrap=True)

    def warn(self, line: str) -> None:
        warn(line)

    def status(self, line: str) -> None:
        if self._status is not None:
            self._status.update(line)

    def live(self, first: str) -> Any:
        """A context in which status() updates one spinner line."""
        status = err.status(first)
        self._status = status
        return status


def _version(value: bool) -> None:
    if value:
        print(f"ollama-fleet {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """One pinned `ollama serve` per GPU, supervised, behind one gateway."""


def main() -> None:
    app(prog_name="ollama-fleet")


# The commands register themselves on `app` when imported.
from ollama_fleet.cli import setup, fleet, bench, front  # noqa: E402, F401, I001
