"""The Typer app: the only place that prints and exits. Each command maps its options to one
call into the core and renders the result with one view (cli/views.py); errors the core
raises (FleetError) become one red line and an exit code here, once."""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ollama_fleet import __version__
from ollama_fleet.errors import BadInput, FleetError, Interrupted

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="ollama-fleet",
    help="One pinned `ollama serve` per GPU, supervised, behind one gateway.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# The consoles are made at their first use: rich is ~20 ms of start-up, which `up` spends
# while its instances start rather than before (docs/architecture.md, "Start-up").
@functools.cache
def out() -> Console:
    """stdout. It carries paths and env values the user typed: text, never markup."""
    from rich.console import Console

    return Console(highlight=False, markup=False)


@functools.cache
def err() -> Console:
    """stderr: errors, warnings and the live status."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


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
                from rich.markup import escape

                if _verbose:
                    import traceback

                    traceback.print_exc()
                lines = str(exc).splitlines() or [type(exc).__name__]
                # One line per bad field; other errors are one line plus, indented, what
                # explains it (the tail of an instance's log).
                for n, line in enumerate(lines):
                    prefix = "[red]error:[/red] " if n == 0 or isinstance(exc, BadInput) else ""
                    err().print(f"{prefix}{escape(line)}", soft_wrap=True)
                raise typer.Exit(exc.exit_code) from None
            except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
                raise  # typer's own ways out: an exit code, Ctrl-C at a prompt, a usage error
            except Exception as exc:
                _bug(exc)
                raise typer.Exit(1) from None

        (group or app).command(name)(boundary)
        return func

    return register


def _bug(exc: Exception) -> None:
    """Not a FleetError: a bug. One line, and the traceback in a private file to send with
    the report (with --debug, here too), never a screenful of it."""
    import os
    import tempfile
    import traceback

    from rich.markup import escape

    text = traceback.format_exc()
    if _verbose:
        err().print(escape(text), soft_wrap=True)
    fd, path = tempfile.mkstemp(prefix="ollama-fleet-crash-", suffix=".log")  # 0600, a new file
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    err().print(
        f"[red]error:[/red] ollama-fleet failed unexpectedly ({escape(said)}), a bug; "
        f"the traceback is in {path} (--debug shows it here)",
        soft_wrap=True,
    )


def fail(reasons: list[str]) -> None:
    """Exit 1, having said why: one line per reason on stderr (a report's problems)."""
    from rich.markup import escape

    for reason in reasons or ["unhealthy"]:
        err().print(f"[red]error:[/red] {escape(reason)}", soft_wrap=True)
    raise typer.Exit(1)


def warn(message: str) -> None:
    from rich.markup import escape

    err().print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


class Terminal:
    """The core's Progress on a terminal: lines on stdout, warnings and the live status on
    stderr (the status only inside `live()`)."""

    def __init__(self) -> None:
        self._live = False
        self._status: Any = None

    def say(self, line: str) -> None:
        out().print(line, soft_wrap=True)

    def warn(self, line: str) -> None:
        warn(line)

    def status(self, line: str) -> None:
        if not self._live:
            return
        if self._status is None:
            self._status = err().status(line)
            self._status.start()
        else:
            self._status.update(line)

    @contextlib.contextmanager
    def live(self, first: str | None = None) -> Iterator[None]:
        """A context in which status() updates one spinner line. Without `first`, the
        spinner (with rich, and its refresh thread) starts at the first status(): `up`
        says nothing before its instances start, and should not pay for it before then."""
        self._live = True
        if first is not None:
            self.status(first)
        try:
            yield
        finally:
            self._live = False
            if self._status is not None:
                self._status.stop()
                self._status = None


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


T = TypeVar("T")


def with_status(first: str | None, work: Callable[[Terminal], T]) -> T:
    """Run `work` with a Terminal whose status() shows one spinner line until it returns
    (from `first`, or without it from the first status())."""
    terminal = Terminal()
    with terminal.live(first):
        return work(terminal)


def _only(name: str) -> None:
    """Keep on `app` only the command (or group) `name`, when it is one. Typer turns every
    command's parameters into click options on each run, ~15 ms for all of them, before
    the command starts; `up` would pay that before its instances start. Any other first
    word (an option, a typo) keeps them all, for help and for click's suggestions."""
    commands = [c for c in app.registered_commands if c.name == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if commands or groups:
        app.registered_commands, app.registered_groups = commands, groups


def main() -> None:
    _only(sys.argv[1] if len(sys.argv) > 1 else "")
    try:
        app(prog_name="ollama-fleet")
    finally:
        # The interpreter's last garbage collection walks every object the imports made
        # (~45 ms, a fifth of `up`'s own cost); the process is ending: skip them.
        gc.freeze()


# The commands register themselves on `app` when imported.
from ollama_fleet.cli import setup, fleet, bench, front  # noqa: E402, F401, I001
