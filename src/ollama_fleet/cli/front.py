"""`front ...`: one HAProxy queue over many boxes; and `pull`, on every box at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ollama_fleet.cli import Terminal, app, command, fail, out, warn, with_status
from ollama_fleet.cli.fleet import Format, register_usage, watch_view
from ollama_fleet.cli.options import StopTimeoutOpt, with_settings
from ollama_fleet.config import FleetConfig
from ollama_fleet.errors import BadInput, UserError

front_app = typer.Typer(
    help="Many boxes: one HAProxy queue in front of every box's fleet (README: Many boxes).",
    no_args_is_help=True,
)
app.add_typer(front_app, name="front")

BOX_SETTINGS = ("boxes", "box_srv", "box_slots", "resolver", "box_key_file")
FRONT_SETTINGS = (
    *BOX_SETTINGS,
    "listen",
    "allow",
    "server_names",
    "api_keys_file",
    "read_timeout",
    "max_body_size",
    "tls_cert",
    "tls_key",
    "state_dir",
)
BoxArg = Annotated[str, typer.Argument(help="the box's name, as `front status` shows it", metavar="BOX")]


@command("up", group=front_app)
@with_settings(*FRONT_SETTINGS)
def front_up_command(cfg: FleetConfig) -> None:
    """Read every box's /fleet/info, render the front's HAProxy and start it (again: reload)."""
    from ollama_fleet.actions.front import FrontStatus, front_up
    from ollama_fleet.cli.status_views import front_view

    report = with_status("reading the boxes", lambda p: front_up(cfg, progress=p))
    out().print(f"front {report.action}: {report.url}, {len(report.spec.boxes)} box(es)", soft_wrap=True)
    status = FrontStatus(url=report.url, running=True, spec=report.spec, stats=report.stats)
    out().print(front_view(status.json_data()))


@command("down", group=front_app)
@with_settings("state_dir")
def front_down_command(
    cfg: FleetConfig,
    *,
    timeout: StopTimeoutOpt = 10.0,
) -> None:
    """Stop the front that `front up` started."""
    from ollama_fleet.actions.front import front_dir, front_down

    if front_down(cfg.state_path, timeout):
        out().print("stopped the front")
    else:
        out().print(f"nothing to stop: no front is recorded in {front_dir(cfg.state_path)}", soft_wrap=True)


@command("status", group=front_app)
@with_settings("state_dir")
def front_status_command(
    cfg: FleetConfig,
    *,
    format_: Annotated[
        Format, typer.Option("--format", help="table, json (schema in the README) or prometheus")
    ] = Format.table,
    json_: Annotated[bool, typer.Option("--json", help="the same as --format json")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="refresh in place until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option("--interval", help="seconds between refreshes", min=0.2)] = 2.0,
) -> None:
    """Per box: state, slots, requests in flight and queued at the front, models; exit 0 when every box is UP."""
    from ollama_fleet.actions.front import front_status
    from ollama_fleet.cli.metrics import front_prometheus
    from ollama_fleet.cli.status_views import front_view

    shape = Format.json if json_ else format_
    if watch:
        if shape is not Format.table:
            raise BadInput(["watch: --watch refreshes the table; use --format json or prometheus without it"])
        state_dir = cfg.state_path
        watch_view(lambda: front_view(front_status(state_dir).json_data()), interval)
        return
    report = front_status(cfg.state_path)
    data = report.json_data()
    if shape is Format.table:
        for problem in report.problems:
            warn(problem)
        out().print(front_view(data))
    else:
        print(json.dumps(data, indent=2) if shape is Format.json else front_prometheus(data), end="\n")
    if not report.healthy:  # the warnings above said the problems; then what else is wrong
        fail(report.reasons[len(report.problems) :] if shape is Format.table else report.reasons)


@command("render", group=front_app)
@with_settings(*FRONT_SETTINGS)
def front_render_command(
    cfg: FleetConfig,
    *,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write here (atomically)", metavar="FILE")
    ] = None,
    prefix: Annotated[
        str, typer.Option("--prefix", help="directory of its pid file and admin socket", metavar="DIR")
    ] = "/run/ollama-fleet-front",
    check: Annotated[bool, typer.Option("--check", help="run `haproxy -c` on it first")] = False,
) -> None:
    """The front's haproxy.cfg for an HAProxy of your own (the boxes are read now)."""
    from ollama_fleet.actions.front import front_render
    from ollama_fleet.values import checked_path

    content = front_render(cfg, output, checked_path(prefix, "prefix"), check, progress=Terminal())
    if output is None:
        print(content, end="")
    else:
        out().print(f"wrote {output}" + (" (haproxy -c: ok)" if check else ""), soft_wrap=True)


@command("drain", group=front_app)
@with_settings("state_dir")
def front_drain_command(
    cfg: FleetConfig,
    box: BoxArg,
    *,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for its requests", min=0)] = 600.0,
) -> None:
    """Send a box no new request (its streams go on) and wait until it serves none: for maintenance."""
    from ollama_fleet.actions.front import front_drain

    busy = with_status(f"draining {box}", lambda p: front_drain(cfg.state_path, box, timeout, progress=p))
    if busy:
        raise UserError(f"{box} is drained but still serves {busy} request(s) after {timeout:g}s")
    out().print(f"{box} is drained: it serves nothing for the front; `front undrain {box}` sends it requests again")


@command("undrain", group=front_app)
@with_settings("state_dir")
def front_undrain_command(
    cfg: FleetConfig,
    box: BoxArg,
    *,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait until it is UP", min=0)] = 30.0,
) -> None:
    """Send a drained box requests again, once its check passes."""
    from ollama_fleet.actions.front import front_undrain

    front_undrain(cfg.state_path, box, timeout)
    out().print(f"{box} is UP and receives requests")


@command("install-systemd", group=front_app)
@with_settings(*FRONT_SETTINGS)
def front_install_command(
    cfg: FleetConfig,
    *,
    root: Annotated[
        Path | None, typer.Option("--root", help="write under this directory and start nothing (staging)")
    ] = None,
) -> None:
    """Install the front as ollama-fleet-front.service (config checked, unit verified), started or reloaded."""
    from ollama_fleet.actions.front import front_install
    from ollama_fleet.gateway.front import UNIT

    written = front_install(cfg, root or Path("/"), enable=root is None, progress=Terminal())
    for path in written:
        out().print(f"wrote {path}", soft_wrap=True)
    if not written:
        out().print("unchanged")
    if root is None:
        out().print(f"{UNIT} is enabled and running")


register_usage(front_app, "front")


@command("pull")
@with_settings("boxes", "box_key_file", "state_dir")
def pull_command(
    cfg: FleetConfig, model: Annotated[str, typer.Argument(help="the model, as `ollama pull` names it")]
) -> None:
    """Pull a model on every box at once (the front's boxes, --box URLs, or this fleet), each
    through its own gateway; one progress bar per box."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from ollama_fleet.actions.front import pull, pull_targets
    from ollama_fleet.values import model_name

    try:
        model_name(model)
    except ValueError as exc:
        raise BadInput(f"model: {exc} (got {model[:60]!r})") from None
    columns = (TextColumn("{task.fields[box]}"), BarColumn(), DownloadColumn(), TextColumn("{task.description}"))
    targets = pull_targets(cfg)
    with Progress(*columns, console=out(), transient=False) as bars:
        tasks = {name: bars.add_task("waiting", box=name, total=None) for name in targets.urls}

        def report(name: str, line: dict[str, Any]) -> None:
            update: dict[str, Any] = {"description": str(line.get("status", ""))[:40]}
            if line.get("total"):
                update |= {"total": line["total"], "completed": line.get("completed", 0)}
            bars.update(tasks[name], **update)

        results = pull(targets, model, report)
        for name, error in results.items():
            bars.update(tasks[name], description="[green]done[/green]" if error is None else "[red]failed[/red]")
    failed = {name: error for name, error in results.items() if error is not None}
    for name in results:
        out().print(f"{name}: " + (f"failed: {failed[name]}" if name in failed else f"pulled {model}"), soft_wrap=True)
    if failed:
        raise typer.Exit(1)
