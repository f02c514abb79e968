"""Commands that look and prepare: gpus, plan, render-nginx, render-haproxy,
install-systemd, uninstall-systemd."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ollama_fleet.cli import Terminal, command, err, out, with_status
from ollama_fleet.cli.options import GATEWAY_SETTINGS, INSTANCE_SETTINGS, SERVED_SETTINGS, JsonOpt, with_settings
from ollama_fleet.config import FleetConfig

OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="write here (atomically) instead of stdout", metavar="FILE")
]
PrefixOpt = Annotated[
    str | None,
    typer.Option(
        "--prefix",
        help="where a standalone gateway keeps pid, logs, temp, admin socket "
        "(default: <state-dir>/gateway); made when the file is written",
        metavar="DIR",
        show_default=False,
    ),
]
RootOpt = Annotated[
    Path | None,
    typer.Option("--root", help="write under this staging root and run no systemctl (packaging, tests)", metavar="DIR"),
]


@command("gpus")
@with_settings("gpus")
def gpus_command(cfg: FleetConfig, *, json_: JsonOpt = False) -> None:
    """List the GPUs NVML sees: index, UUID, name, memory, utilisation."""
    from ollama_fleet.cli.views import gpus_table, print_json
    from ollama_fleet.gpus import resolve

    found = resolve(cfg.gpus)
    if found.note:
        Terminal().warn(found.note)
    if json_:
        print_json({"schema": 1, "pinned_by": found.pinned_by, "gpus": [g.model_dump(mode="json") for g in found.gpus]})
    else:
        out().print(gpus_table(found))


@command("plan")
@with_settings("gpus", "gpus_per_instance", "base_port", "models_dir", "keep_alive", "state_dir", "env", "models")
def plan_command(cfg: FleetConfig, *, json_: JsonOpt = False) -> None:
    """Show the instances `up` would start; starts nothing."""
    from ollama_fleet.actions.planning import make_plan
    from ollama_fleet.cli.views import plan_view, print_json
    from ollama_fleet.plan import plan_json

    result = make_plan(cfg, Terminal())
    if json_:
        print_json(plan_json(result))
    else:
        for part in plan_view(result):
            out().print(part, soft_wrap=True)


# --preload too: the HAProxy health check loads it (the config `up` renders from the same settings).
RENDER_SETTINGS = (
    "gpus",
    "gpus_per_instance",
    "base_port",
    "state_dir",
    "env",
    "models",
    "preload",
    *SERVED_SETTINGS,
)


def _render(
    engine: str, cfg: FleetConfig, output: Path | None, standalone: bool, prefix: str | None, check: bool
) -> None:
    from ollama_fleet.actions.render import render_gateway

    done = render_gateway(
        cfg, engine, output=output, standalone=standalone, prefix=prefix, check=check, progress=Terminal()
    )
    if done.text is not None:
        print(done.text, end="")
    else:
        ok = f" ({done.checked_with}: ok)" if done.checked_with else ""
        err().print(f"wrote {done.written}{ok}", soft_wrap=True, markup=False)


StandaloneOpt = Annotated[
    bool,
    typer.Option(
        "--standalone",
        help="a complete config: nginx.conf for `nginx -p PREFIX -c FILE` (HAProxy's "
        "haproxy.cfg is always complete; accepted for symmetry)",
    ),
]
CheckOpt = Annotated[
    bool,
    typer.Option(
        "--check",
        help="run the engine's own check on the result (`nginx -t`, `haproxy -c`); exit 1 with its message if it fails",
    ),
]


def _render_command(engine: str, doc: str, settings: tuple[str, ...]) -> None:
    """render-nginx and render-haproxy: the same options, each for its engine."""

    def render_command(
        cfg: FleetConfig,
        *,
        output: OutputOpt = None,
        standalone: StandaloneOpt = False,
        prefix: PrefixOpt = None,
        check: CheckOpt = False,
    ) -> None:
        _render(engine, cfg, output, standalone, prefix, check)

    render_command.__doc__ = doc
    command(f"render-{engine}")(with_settings(*settings)(render_command))


_render_command(
    "nginx",
    "Render the nginx gateway: an http-level snippet for conf.d/, or a standalone nginx.conf.",
    tuple(s for s in RENDER_SETTINGS if s != "metrics_port"),
)
_render_command(
    "haproxy",
    "Render the HAProxy gateway: a complete haproxy.cfg that queues requests at the gateway.",
    RENDER_SETTINGS,
)


@command("install-systemd")
@with_settings(
    *INSTANCE_SETTINGS,
    "user",
    "wait_timeout",
    "preload",
    *GATEWAY_SETTINGS,
    help_overrides={"user": "the user instances run as (default: ollama)"},
)
def install_systemd_command(
    cfg: FleetConfig,
    *,
    root: RootOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the diff of what would change; write nothing")
    ] = False,
    enable: Annotated[
        bool, typer.Option("--enable/--no-enable", help="daemon-reload, enable --now the target, reload nginx")
    ] = True,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait", help="after enabling, wait until every instance and the gateway answer (--wait-timeout)"
        ),
    ] = True,
) -> None:
    """Install the fleet as systemd units: one ollama-fleet@ instance per GPU, one target, the gateway."""
    from ollama_fleet.actions.install import install_systemd
    from ollama_fleet.cli.views import install_lines

    done = with_status(
        "installing", lambda p: install_systemd(cfg, root=root, dry_run=dry_run, enable=enable, wait=wait, progress=p)
    )
    if dry_run:
        print(done.report.diff, end="")
    for line in install_lines(done, dry_run):
        out().print(line, soft_wrap=True)


@command("uninstall-systemd")
def uninstall_systemd_command(
    *,
    root: RootOpt = None,
    enable: Annotated[
        bool, typer.Option("--enable/--no-enable", help="with --no-enable, remove the files but run no systemctl")
    ] = True,
) -> None:
    """Stop and disable the fleet's units and remove exactly the files install-systemd wrote."""
    from ollama_fleet.actions.install import uninstall_systemd
    from ollama_fleet.systemd import MANIFEST, TARGET

    removed = uninstall_systemd(root, enable)
    if removed is None:
        out().print(f"nothing to uninstall: no {MANIFEST} under {root.absolute() if root else Path('/')}")
        return
    for path in removed:
        out().print(f"removed {path}")
    stopped = f"; {TARGET} stopped and disabled" if enable and root is None else ""
    out().print(f"uninstalled {len(removed)} file(s){stopped}")
