"""Commands that run and steer a fleet: up, down, restart, status, logs, usage."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ollama_fleet.cli import Terminal, command, fail, out, warn, with_status
from ollama_fleet.cli.options import GATEWAY_SETTINGS, INSTANCE_SETTINGS, JsonOpt, StopTimeoutOpt, with_settings
from ollama_fleet.config import FleetConfig
from ollama_fleet.errors import BadInput, UserError

InstancesArg = Annotated[
    list[str] | None, typer.Argument(help="instance names, e.g. gpu0 gpu3 (default: all)", metavar="[INSTANCE]...")
]


def _echo(name: str, line: str) -> None:
    """An instance's output line on the terminal (`up --foreground`); the views, and rich
    with them, are imported at the first line, not before the instances start."""
    from ollama_fleet.cli.views import echo

    echo(name, line)


@command("up")
@with_settings(*INSTANCE_SETTINGS, "user", "state_dir", "wait_timeout", "preload", *GATEWAY_SETTINGS)
def up_command(
    cfg: FleetConfig,
    *,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="stay attached: prefix instance output, Ctrl-C stops all")
    ] = False,
    rolling: Annotated[
        bool,
        typer.Option(
            "--rolling", help="apply plan changes one instance at a time, each drained through the gateway first"
        ),
    ] = False,
) -> None:
    """Start one pinned `ollama serve` per GPU (or group), wait until each answers, supervise them."""
    from ollama_fleet.actions.up import up

    report = with_status(None, lambda p: up(cfg, foreground=foreground, rolling=rolling, progress=p, echo=_echo))
    from ollama_fleet.cli.views import up_table  # once the instances run (docs/architecture.md, "Start-up")

    out().print(up_table(report.desired, report.changes, report.ready, report.actual))
    if report.gateway:
        out().print(report.gateway)
    if report.supervisor is None:
        if report.problems:
            raise UserError("\n".join(report.problems))
        return
    for problem in report.problems:
        warn(problem)
    out().print("supervising; Ctrl-C stops every instance")
    raise typer.Exit(report.supervisor.run())


@command("down")
@with_settings("state_dir")
def down_command(
    cfg: FleetConfig,
    *,
    timeout: StopTimeoutOpt = 10.0,
) -> None:
    """Stop the supervisor and every instance (SIGTERM to each process group, SIGKILL after --timeout)."""
    from ollama_fleet.actions.down import down
    from ollama_fleet.systemd import TARGET

    done = down(cfg.state_path, timeout)
    if done.stopped is None:
        out().print(f"nothing to stop: no fleet is recorded in {cfg.state_path}", soft_wrap=True)
        if done.installed:
            out().print(f"the fleet installed with systemd is stopped with: systemctl stop {TARGET}")
        return
    also = " and the gateway" if done.gateway else ""
    out().print(f"stopped {done.stopped} instance(s){also}; state cleared in {cfg.state_path}")


@command("restart")
@with_settings(
    "state_dir",
    "wait_timeout",
    help_overrides={"wait_timeout": "seconds to wait for a restarted instance to answer (default: 60)"},
)
def restart_command(
    cfg: FleetConfig,
    instances: InstancesArg = None,
    *,
    rolling: Annotated[
        bool, typer.Option("--rolling", help="one at a time, drained through the gateway first: no stream is cut")
    ] = False,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="seconds to wait for an instance's requests to finish", min=0)
    ] = 600.0,
) -> None:
    """Restart instances; --rolling drains each through the gateway first so no stream is cut."""
    from ollama_fleet.actions.restart import restart
    from ollama_fleet.fleet import locate
    from ollama_fleet.processes import signals_raise

    with signals_raise():  # an interrupted roll puts the instance it drained back
        outcome = restart(
            locate(cfg.state_path),
            instances or [],
            rolling=rolling,
            drain_timeout=drain_timeout,
            wait_timeout=cfg.wait_timeout,
            progress=Terminal(),
        )
    out().print(f"restarted: {', '.join(outcome.restarted) or 'none'}")
    if outcome.problems:
        raise UserError("\n".join(outcome.problems))


class Format(str, Enum):
    table = "table"
    json = "json"
    prometheus = "prometheus"


@command("status")
@with_settings("state_dir")
def status_command(
    cfg: FleetConfig,
    *,
    format_: Annotated[
        Format,
        typer.Option("--format", help="table, json (schema in the README) or prometheus (node-exporter textfile)"),
    ] = Format.table,
    json_: Annotated[bool, typer.Option("--json", help="the same as --format json")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="refresh in place until Ctrl-C")] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="seconds between refreshes with --watch", min=0.2)
    ] = 2.0,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds each probe may take", min=0.1)] = 2.0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="write here (atomically) instead of stdout, e.g. for node-exporter's textfile dir",
            metavar="FILE",
        ),
    ] = None,
) -> None:
    """GPUs, instances (pid, uptime, health, version, loaded models) and the gateway; exit 0 when all are healthy."""
    from ollama_fleet.actions.planning import warn_others
    from ollama_fleet.cli.metrics import prometheus
    from ollama_fleet.cli.status_views import status_view
    from ollama_fleet.state import write_atomic
    from ollama_fleet.status import gather

    shape = Format.json if json_ else format_
    if watch:
        if shape is not Format.table or output is not None:
            raise BadInput(["watch: --watch refreshes the table; use --format json or prometheus without it"])
        state_dir = cfg.state_path
        watch_view(lambda: status_view(gather(state_dir, timeout)), interval)
        return
    report = gather(cfg.state_path, timeout)
    if shape is Format.table:
        if report.nvml.note:
            warn(report.nvml.note)
        warn_others(Terminal(), report.others)
        out().print(status_view(report))
    else:
        text = json.dumps(report.json_data(), indent=2) + "\n" if shape is Format.json else prometheus(report)
        if output is None:
            print(text, end="")
        else:
            write_atomic(output, text)
        if not report.healthy:
            fail(report.problems)  # the table says it itself, under the instances
    if not report.healthy:
        raise typer.Exit(1)


def watch_view(view: Callable[[], Any], interval: float) -> None:
    """Refresh `view()` in place every `interval` seconds until Ctrl-C."""
    from rich.live import Live

    with Live(console=out(), auto_refresh=False, screen=False) as live:
        try:
            while True:
                live.update(view(), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            return  # Ctrl-C is how one leaves a watch: not an error


@command("logs")
@with_settings("state_dir")
def logs_command(
    cfg: FleetConfig,
    instances: InstancesArg = None,
    *,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines until Ctrl-C")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="how many of the last lines to show first", min=0)] = 50,
) -> None:
    """The instances' logs: the supervisor's files (a fleet of `up`) or the journal (systemd)."""
    from ollama_fleet.actions.logs import show_logs

    show_logs(
        cfg.state_path,
        instances or [],
        follow=follow,
        lines=lines,
        write=lambda line: out().print(line, soft_wrap=True),
    )


SinceOpt = Annotated[str, typer.Option("--since", help="how far back: 30m, 24h, 7d", metavar="DURATION")]


def register_usage(group: typer.Typer | None, of: str) -> None:
    """`usage` and `front usage`: the same options and view, over the log of the gateway or
    of the front (`group` is the front's)."""

    def usage_command(cfg: FleetConfig, *, since: SinceOpt = "24h", json_: JsonOpt = False) -> None:
        from ollama_fleet.actions.usage import usage
        from ollama_fleet.cli.status_views import usage_table

        found = {name: u.json_data() for name, u in sorted(usage(cfg.state_path, since, front=of == "front").items())}
        if json_:
            print(json.dumps({"schema": 1, "since": since, "keys": found}, indent=2))
        else:
            out().print(usage_table(found, since))

    usage_command.__doc__ = (
        f"Per key name, from the {of}'s log: requests, errors, 429s, bytes, time in queue, time to first byte."
    )
    command("usage", group=group)(with_settings("state_dir")(usage_command))


register_usage(None, "gateway")
