"""The Typer app: parses flags, calls the core, prints with rich. The only place that exits."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ollama_fleet import __version__
from ollama_fleet.config import FleetConfig, load_config
from ollama_fleet.errors import FleetError
from ollama_fleet.gpus import Discovery, resolve
from ollama_fleet.plan import Plan, inspect_models_dir, plan, plan_json

app = typer.Typer(
    name="ollama-fleet",
    help="One pinned `ollama serve` per GPU, supervised, behind one gateway.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_verbose = False

F = TypeVar("F", bound=Callable[..., Any])


def command(name: str) -> Callable[[F], F]:
    """Register a command behind the one error boundary: FleetError -> one red line + exit code."""
    return functools.partial(_register, name)


def _register(name: str, func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FleetError as exc:
            if _verbose:
                traceback.print_exc()
            for line in str(exc).splitlines() or [type(exc).__name__]:
                err.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    app.command(name)(wrapper)
    return func


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


# --------------------------------------------------------------- options
# Values arrive as text and are validated by FleetConfig, so a bad flag, variable or file
# value gets the same one-line message naming the field.

def _opt(flag: str, help: str, metavar: str | None = None, **kw: Any) -> Any:
    return typer.Option(flag, help=help, metavar=metavar, show_default=False, **kw)


ConfigOpt = Annotated[Optional[Path], _opt("--config", "TOML config file (default: ./ollama-fleet.toml, else $OLLAMA_FLEET_CONFIG)", "PATH")]
GpusOpt = Annotated[Optional[str], _opt("--gpus", "all | 0,1,3 | GPU-uuid,... (default: all)", "LIST")]
PerInstanceOpt = Annotated[Optional[str], _opt("--gpus-per-instance", "GPUs per instance (default: 1)", "N")]
BasePortOpt = Annotated[Optional[str], _opt("--base-port", "port of the first instance (default: 11534)", "PORT")]
ModelsDirOpt = Annotated[Optional[str], _opt("--models-dir", "models dir shared by all instances", "PATH")]
KeepAliveOpt = Annotated[Optional[str], _opt("--keep-alive", "OLLAMA_KEEP_ALIVE: 15s, 5m, 1h30m, -1 (default: 5m)", "DURATION")]
OllamaBinOpt = Annotated[Optional[str], _opt("--ollama-bin", "the ollama executable (default: ollama on PATH)", "PATH")]
UserOpt = Annotated[Optional[str], _opt("--user", "user instances run as when started by root (default: owner of the models dir)", "NAME")]
StateDirOpt = Annotated[Optional[str], _opt("--state-dir", "state, logs, gateway files (default: /var/lib/ollama-fleet as root, else $XDG_STATE_HOME/ollama-fleet)", "PATH")]
EnvOpt = Annotated[Optional[list[str]], _opt("--env", "extra KEY=VALUE for every instance (repeatable)", "KEY=VALUE")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output (schema in the README)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show tracebacks of errors")]


def _config(config: Path | None, verbose: bool = False, **flags: Any) -> FleetConfig:
    global _verbose
    _verbose = verbose
    return load_config(flags, config_path=config)


def _discover(config: FleetConfig) -> Discovery:
    found = resolve(config.gpus)
    if found.note:
        warn(found.note)
    return found


def _plan(config: FleetConfig) -> Plan:
    result = plan(config, _discover(config), inspect_models_dir(config))
    for gpu in result.unused_gpus:
        warn(f"GPU {gpu.index} is not used: it does not fill a group of {config.gpus_per_instance}")
    return result


def _print_json(data: Any) -> None:
    # Plain print, not rich: JSON must reach pipes byte for byte, without wrapping.
    print(json.dumps(data, indent=2))


def _size(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f} GiB"


# -------------------------------------------------------------- commands


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


@command("gpus")
def gpus_command(*, gpus: GpusOpt = None, config: ConfigOpt = None, json_: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """List the GPUs NVML sees: index, UUID, name, memory, utilisation."""
    found = _discover(_config(config, verbose, gpus=gpus))
    if json_:
        _print_json({"schema": 1, "pinned_by": found.pinned_by, "gpus": [g.model_dump(mode="json") for g in found.gpus]})
        return
    table = Table("GPU", "UUID", "name", "memory used / total", "util", "PCI bus")
    for g in found.gpus:
        table.add_row(
            g.label,
            Text(g.uuid or "-", overflow="fold"),
            g.name,
            f"{_size(g.memory_used)} / {_size(g.memory_total)}",
            "-" if g.utilization is None else f"{g.utilization}%",
            g.pci_bus_id or "-",
        )
    out.print(table)


@command("plan")
def plan_command(
    *,
    config: ConfigOpt = None,
    gpus: GpusOpt = None,
    gpus_per_instance: PerInstanceOpt = None,
    base_port: BasePortOpt = None,
    models_dir: ModelsDirOpt = None,
    keep_alive: KeepAliveOpt = None,
    state_dir: StateDirOpt = None,
    env: EnvOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Show the instances `up` would start; starts nothing."""
    cfg = _config(
        config, verbose, gpus=gpus, gpus_per_instance=gpus_per_instance, base_port=base_port,
        models_dir=models_dir, keep_alive=keep_alive, state_dir=state_dir, env=env,
    )
    result = _plan(cfg)
    if json_:
        _print_json(plan_json(result))
        return
    md = result.models_dir
    state = f"owner {md.owner}" if md.exists else "[red]missing[/red]: `up` will refuse to start"
    out.print(f"models dir: {md.path} ({state})")
    table = Table("instance", "GPUs", "address", "CUDA_VISIBLE_DEVICES")
    for inst in result.instances:
        table.add_row(
            inst.name,
            ",".join(str(g.index) if g.mig is None else f"{g.index}-mig{g.mig}" for g in inst.gpus),
            inst.address,
            Text(inst.env["CUDA_VISIBLE_DEVICES"], overflow="fold"),
        )
    out.print(table)
    shared = {k: v for k, v in result.instances[0].env.items() if k not in ("CUDA_VISIBLE_DEVICES", "OLLAMA_HOST")}
    out.print(f"logs: {result.instances[0].log.parent}/<instance>.log")
    out.print("every instance also gets: " + " ".join(f"{k}={v}" for k, v in shared.items()), soft_wrap=True)


def main() -> None:
    app(prog_name="ollama-fleet")
