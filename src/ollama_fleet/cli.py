"""The Typer app: parses flags, calls the core, prints with rich. The only place that exits."""

from __future__ import annotations

import functools
import json
import os
import pwd
import re
import signal
import time
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from ollama_fleet import __version__, pinning, probe
from ollama_fleet.config import RESERVED_ENV, FleetConfig, checked_path, load_config
from ollama_fleet.names import canonical
from ollama_fleet.errors import BadInput, FleetError, Missing, UserError
from ollama_fleet.gpus import Discovery, resolve
from ollama_fleet.plan import Plan, ignored_env, inspect_models_dir, loads, plan, plan_json
from ollama_fleet.gateway import (
    Engine,
    GatewaySpec,
    engine_named,
    exposure_warning,
    find_tool,
    secret_mode,
    spec_from,
    worker_user,
)
from ollama_fleet.gateway import converge as gateway_converge
from ollama_fleet.gateway import preflight as gateway_preflight
from ollama_fleet.state import (
    DESIRED,
    GATEWAY,
    SUPERVISOR_LOG,
    Actual,
    Desired,
    GatewayState,
    read_actual,
    read_desired,
    write_atomic,
    write_model,
)
from ollama_fleet.supervisor import (
    foreign_ollama,
    Change,
    Readiness,
    Supervisor,
    changes,
    exited,
    launch_background,
    live_supervisor,
    preflight,
    resolve_binary,
    stop_fleet,
    wait_ready,
    with_log_tail,
)

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
            lines = str(exc).splitlines() or [type(exc).__name__]
            # One line per bad field; other errors are one line plus, indented, what explains
            # it (the tail of an instance's log).
            for n, line in enumerate(lines):
                prefix = "[red]error:[/red] " if n == 0 or isinstance(exc, BadInput) else ""
                err.print(f"{prefix}{escape(line)}", soft_wrap=True)
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
UserOpt = Annotated[Optional[str], _opt("--user", "user instances run as when started by root (default: owner of the models dir)", "NAME")]
StateDirOpt = Annotated[Optional[str], _opt("--state-dir", "state, logs, gateway files (default: /var/lib/ollama-fleet as root, else $XDG_STATE_HOME/ollama-fleet)", "PATH")]
EnvOpt = Annotated[Optional[list[str]], _opt("--env", "extra KEY=VALUE for every instance (repeatable)", "KEY=VALUE")]
ModelsOpt = Annotated[Optional[list[str]], _opt("--models", "place a model on some instances: MODEL=gpu0,gpu1 (repeatable; routing needs --engine haproxy)", "MODEL=INSTANCES")]
GatewayOpt = Annotated[Optional[bool], typer.Option("--gateway/--no-gateway", help="run the gateway (default: when its engine is installed)", show_default=False)]
ListenOpt = Annotated[Optional[str], _opt("--listen", "where the gateway listens: [HOST:]PORT, [::]:PORT (default: 0.0.0.0:8080)", "ADDR")]
AllowOpt = Annotated[Optional[list[str]], _opt("--allow", "client network let through, besides 127.0.0.1 and ::1 (repeatable)", "CIDR")]
ApiKeysOpt = Annotated[Optional[str], _opt("--api-keys-file", "bearer API keys, one per line, # comments", "PATH")]
BalanceOpt = Annotated[Optional[str], _opt("--balance", "least_conn | round_robin | random (default: least_conn)", "METHOD")]
ReadTimeoutOpt = Annotated[Optional[str], _opt("--read-timeout", "seconds the gateway waits on a silent instance (default: 600)", "S")]
MaxBodyOpt = Annotated[Optional[str], _opt("--max-body-size", "largest request body (default: 100m)", "SIZE")]
TlsCertOpt = Annotated[Optional[str], _opt("--tls-cert", "TLS certificate (with --tls-key)", "PATH")]
TlsKeyOpt = Annotated[Optional[str], _opt("--tls-key", "TLS private key (with --tls-cert)", "PATH")]
EngineOpt = Annotated[Optional[str], _opt("--engine", "gateway engine: nginx | haproxy (default: nginx)", "ENGINE")]
MetricsPortOpt = Annotated[Optional[str], _opt("--metrics-port", "loopback port of HAProxy's Prometheus exporter (default: 8405)", "PORT")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output (schema in the README)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show tracebacks of errors")]


def _settings(values: dict[str, Any]) -> dict[str, Any]:
    """A command's flags that are settings (its other parameters, like --json, are not)."""
    return {name: value for name, value in values.items() if name in FleetConfig.model_fields}


def _config(config: Path | None, verbose: bool = False, **flags: Any) -> FleetConfig:
    global _verbose
    _verbose = verbose
    return load_config(flags, config_path=config)


def _discover(config: FleetConfig) -> Discovery:
    found = resolve(config.gpus)
    if found.note:
        warn(found.note)
    return found


def _plan(config: FleetConfig, home: Path | None = None) -> Plan:
    """The plan; `home`: whose ~/.ollama/models is the default models dir (else the caller's)."""
    result = plan(config, _discover(config), inspect_models_dir(config, home))
    assert config.state_dir is not None
    actual = read_actual(config.state_dir) if (config.state_dir / DESIRED).exists() else None
    _warn_others(foreign_ollama({st.pid for st in actual.instances.values() if st.pid} if actual else set()))
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
    models: ModelsOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Show the instances `up` would start; starts nothing."""
    cfg = _config(config, verbose, **_settings(locals()))
    result = _plan(cfg)
    if json_:
        _print_json(plan_json(result))
        return
    md = result.models_dir
    state = Text(f"owner {md.owner}") if md.exists else Text.assemble(("missing", "red"), ": `up` will refuse to start")
    out.print(Text.assemble(f"models dir: {md.path} (", state, ")"))
    table = Table("instance", "GPUs", "address", "CUDA_VISIBLE_DEVICES")
    for inst in result.instances:
        table.add_row(
            inst.name,
            ",".join(g.label for g in inst.gpus),
            inst.address,
            Text(inst.env["CUDA_VISIBLE_DEVICES"], overflow="fold"),
        )
    out.print(table)
    shared = {k: v for k, v in result.instances[0].env.items() if k not in ("CUDA_VISIBLE_DEVICES", "OLLAMA_HOST")}
    out.print(f"logs: {result.instances[0].log.parent}/<instance>.log")
    out.print("every instance also gets: " + " ".join(f"{k}={v}" for k, v in shared.items()), soft_wrap=True)


OllamaBinOpt = Annotated[Optional[str], _opt("--ollama-bin", "the ollama executable (default: ollama on PATH)", "PATH")]
WaitTimeoutOpt = Annotated[Optional[str], _opt("--wait-timeout", "seconds to wait for each instance to answer (default: 60)", "S")]
PreloadOpt = Annotated[Optional[list[str]], _opt("--preload", "model to load on every instance once it answers (repeatable)", "MODEL")]


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


@command("up")
def up_command(
    *,
    config: ConfigOpt = None,
    gpus: GpusOpt = None,
    gpus_per_instance: PerInstanceOpt = None,
    base_port: BasePortOpt = None,
    models_dir: ModelsDirOpt = None,
    keep_alive: KeepAliveOpt = None,
    ollama_bin: OllamaBinOpt = None,
    user: UserOpt = None,
    state_dir: StateDirOpt = None,
    wait_timeout: WaitTimeoutOpt = None,
    preload: PreloadOpt = None,
    env: EnvOpt = None,
    models: ModelsOpt = None,
    gateway: GatewayOpt = None,
    engine: EngineOpt = None,
    metrics_port: MetricsPortOpt = None,
    listen: ListenOpt = None,
    allow: AllowOpt = None,
    api_keys_file: ApiKeysOpt = None,
    balance: BalanceOpt = None,
    read_timeout: ReadTimeoutOpt = None,
    max_body_size: MaxBodyOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    foreground: Annotated[bool, typer.Option("--foreground", help="stay attached: prefix instance output, Ctrl-C stops all")] = False,
    rolling: Annotated[bool, typer.Option("--rolling", help="apply plan changes one instance at a time, each drained through the gateway first")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Start one pinned `ollama serve` per GPU (or group), wait until each answers, supervise them."""
    cfg = _config(config, verbose, **_settings(locals()))
    result = _plan(cfg)
    assert cfg.state_dir is not None
    home = cfg.state_dir
    _warn_ignored_env(cfg)
    previous = read_desired(home)
    new = Desired(
        instances=result.instances, ollama_bin=resolve_binary(cfg.ollama_bin), user=run_as(cfg, result),
        loads=tuple(loads(result, cfg.preload, cfg.keep_alive)), models=result.models,
        # Restarts asked for earlier are part of each instance's spec: keep them.
        generations=previous.generations if previous else {},
    )
    # The gateway's input (keys, TLS files) is read and checked before anything starts.
    gateway_engine, spec = _gateway_plan(cfg, result, explicit=gateway is True or engine is not None)
    if gateway_engine is not None and spec is not None:
        gateway_preflight(spec, home, gateway_engine)
    running = live_supervisor(home)
    if running is not None and foreground:
        raise UserError(f"a fleet is already running from {home} (supervisor pid {running.pid}); run `ollama-fleet down` first")
    actual = read_actual(home) if running else None
    todo = changes(previous if running else None, actual, new)
    preflight(result, new, actual)
    held = tuple(c.name for c in todo if c.action == "restart") if rolling else ()
    if held and (gateway_engine is None or foreground):
        raise UserError("up --rolling drains each changed instance through the gateway: it needs the gateway and a detached fleet")
    for change in todo:
        if change.action in ("restart", "stop"):
            verb = "restarting" if change.action == "restart" else "stopping"
            verb = "rolling restart" if change.name in held else verb
            out.print(f"{change.name}: {verb} ({change.why})", soft_wrap=True)
    write_model(home / DESIRED, new.model_copy(update={"hold": held}))

    supervisor: Supervisor | None = None
    if foreground:
        supervisor = Supervisor(home, echo=_echo, foreground=True)
        supervisor.install_signal_handlers()

        def tick() -> None:
            supervisor.step()
            if supervisor.stop_signal is not None:
                raise _Interrupted(supervisor.stop_signal)
    else:
        background = None if running else launch_background(home)

        def tick() -> None:
            if background is not None and exited(background):
                raise UserError(with_log_tail("the supervisor exited at start", home / SUPERVISOR_LOG))

        if running is not None:
            os.kill(running.pid, signal.SIGHUP)  # converge to the new fleet.json

    try:
        with err.status(f"waiting for {len(new.instances)} instance(s) to answer") as status:
            ready = wait_ready(
                home, new.model_copy(update={"instances": tuple(i for i in new.instances if i.name not in held)}),
                cfg.wait_timeout, tick,
                lambda n, total: status.update(f"waiting for instances: {n}/{total} answer"),
            )
        wrong, unverified = pinning.check(new.instances, ready.devices)
        for name, why in wrong.items():  # never preload onto a neighbour's GPU or the CPU
            ready.failed[name] = with_log_tail(why, next(i.log for i in new.instances if i.name == name))
            ready.versions.pop(name, None)
        if unverified:
            warn(f"{', '.join(unverified)}: Ollama logged no \"inference compute\" line, so the GPUs each uses "
                 "are not verified (this Ollama does not log them)")
        preload_failures = probe.preload(
            {i.name: i.address for i in new.instances if i.name in ready.versions},
            list(new.loads), timeout=max(cfg.wait_timeout, 300),
        )
    except _Interrupted as exc:
        assert supervisor is not None
        supervisor.stop_all()
        raise typer.Exit(128 + exc.signum) from None

    _print_up(new, [Change(c.name, "roll", c.why) if c.name in held else c for c in todo], ready, read_actual(home))
    problems = []
    if gateway_engine is not None and spec is not None:
        try:
            action, gw = gateway_converge(gateway_engine, spec, home, worker_user(new.user))
            if not probe.gateway_answers(spec.probe_url, 10):
                problems.append(f"the gateway ({gateway_engine.name}) did not answer on {spec.probe_url}; see {home}/gateway")
            out.print(f"gateway: {gateway_engine.name} {action}, listening on {spec.listen} (pid {gw.process.pid if gw.process else '-'})")
        except FleetError as exc:
            problems.append(str(exc))
    else:
        write_model(home / GATEWAY, GatewayState(engine=None, reason="disabled" if not cfg.gateway else f"{cfg.engine} not installed"))
    problems += list(ready.failed.values()) + preload_failures
    if held and problems:
        problems.append(f"the rolling restart of {', '.join(held)} did not start: they run their old plan; "
                        "fix the above and run `up --rolling` again")
    elif held:
        from ollama_fleet.restart import UpFleet, restart

        outcome = restart(UpFleet(home), list(held), rolling=True, drain_timeout=cfg.read_timeout,
                          wait_timeout=cfg.wait_timeout, say=lambda line: out.print(line, soft_wrap=True))
        problems += outcome.problems
    if supervisor is None:
        if problems:
            raise UserError("\n".join(problems))
        return
    for problem in problems:
        warn(problem)
    out.print("supervising; Ctrl-C stops every instance")
    raise typer.Exit(supervisor.run())


def _warn_ignored_env(cfg: FleetConfig) -> None:
    """Name the caller's OLLAMA_* / *_VISIBLE_DEVICES that instances will not see, and how to
    pass each on purpose (by reference: a value may be a secret)."""
    ignored = [k for k in ignored_env(os.environ) if k not in cfg.env]
    if not ignored:
        return
    how = [
        f"{k} (the fleet sets it: use --{RESERVED_ENV[k].replace('_', '-')})"
        if k in RESERVED_ENV and " " not in RESERVED_ENV[k] else
        f"{k} (the fleet sets it)" if k in RESERVED_ENV else f"--env {k}=${k}"
        for k in ignored
    ]
    warn("instances do not inherit these variables from your environment: " + ", ".join(ignored)
         + "; to pass one on purpose: " + ", ".join(how))


def _gateway_plan(cfg: FleetConfig, result: Plan, explicit: bool) -> tuple[Engine | None, GatewaySpec | None]:
    """The engine and spec to run, or (None, None) to run without a gateway. `explicit`: the
    gateway or its engine was asked for, so a missing engine is an error, not a warning."""
    if not cfg.gateway:
        return None, None
    spec = spec_from(cfg, result)
    name = cfg.engine
    if find_tool(name) is None:
        if explicit or name != "nginx":
            raise Missing(f"engine: {name} is not installed (apt-get install {name}), and the gateway asks for it")
        warn(f"{name} is not installed: running without a gateway (apt-get install {name}; --no-gateway silences this)")
        return None, None
    message = exposure_warning(spec)
    if message:
        warn(message)
    return engine_named(name), spec


def run_as(cfg: FleetConfig, result: Plan) -> str | None:
    """Who instances run as when root starts them: --user, else the models dir's owner
    (running as root against the `ollama` user's models leaves root-owned blobs there)."""
    name = cfg.user or (result.models_dir.owner if os.geteuid() == 0 else None)
    if name is not None:
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise Missing(f"user: no user {name!r} on this machine (create it, or pass --user)") from None
    return name


_COLORS = ["cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta"]


def _echo(name: str, line: str) -> None:
    color = _COLORS[sum(map(ord, name)) % len(_COLORS)]
    out.print(Text.assemble((f"{name:>9} | ", color), line), soft_wrap=True)


def _print_up(new: Desired, todo: list[Change], ready: Readiness, actual: Actual | None) -> None:
    action = {c.name: c.action for c in todo}
    label = {"start": "started", "keep": "unchanged", "restart": "restarted", "roll": "rolling"}
    table = Table("instance", "GPUs", "address", "pid", "state", "version")
    states = actual.instances if actual else {}
    for inst in new.instances:
        st = states.get(inst.name)
        failed = inst.name in ready.failed
        table.add_row(
            inst.name,
            ",".join(g.label for g in inst.gpus),
            inst.address,
            str(st.pid) if st and st.pid else "-",
            Text("failed", style="bold red") if failed else label.get(action.get(inst.name, ""), "?"),
            ready.versions.get(inst.name, "-"),
        )
    out.print(table)


@command("down")
def down_command(
    *,
    state_dir: StateDirOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds between SIGTERM and SIGKILL", min=0)] = 10.0,
    verbose: VerboseOpt = False,
) -> None:
    """Stop the supervisor and every instance (SIGTERM to each process group, SIGKILL after --timeout)."""
    from ollama_fleet import systemd  # imported where used: jinja2 costs `up` and `down` start-up time

    cfg = _config(None, verbose, state_dir=state_dir)
    assert cfg.state_dir is not None
    stopped = stop_fleet(cfg.state_dir, timeout)
    if stopped is None:
        out.print(f"nothing to stop: no fleet is recorded in {cfg.state_dir}", soft_wrap=True)
        if systemd.read_manifest() is not None:
            out.print(f"the fleet installed with systemd is stopped with: systemctl stop {systemd.TARGET}")
    else:
        count, gateway = stopped
        also = " and the gateway" if gateway else ""
        out.print(f"stopped {count} instance(s){also}; state cleared in {cfg.state_dir}")


OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="write here (atomically) instead of stdout", metavar="FILE")]
PrefixOpt = Annotated[Optional[str], _opt("--prefix", "where a standalone gateway keeps pid, logs, temp, admin socket (default: <state-dir>/gateway)", "DIR")]


@command("render-nginx")
def render_nginx_command(
    *,
    config: ConfigOpt = None,
    gpus: GpusOpt = None,
    gpus_per_instance: PerInstanceOpt = None,
    base_port: BasePortOpt = None,
    state_dir: StateDirOpt = None,
    env: EnvOpt = None,
    models: ModelsOpt = None,
    listen: ListenOpt = None,
    allow: AllowOpt = None,
    api_keys_file: ApiKeysOpt = None,
    balance: BalanceOpt = None,
    read_timeout: ReadTimeoutOpt = None,
    max_body_size: MaxBodyOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    output: OutputOpt = None,
    standalone: Annotated[bool, typer.Option("--standalone", help="a complete nginx.conf for `nginx -p PREFIX -c FILE`")] = False,
    prefix: PrefixOpt = None,
    check: Annotated[bool, typer.Option("--check", help="run `nginx -t` on the result; exit 1 with nginx's message if it fails")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Render the nginx gateway: an http-level snippet for conf.d/, or a standalone nginx.conf."""
    cfg = _config(config, verbose, **_settings(locals()))
    _render_gateway("nginx", cfg, output=output, standalone=standalone, prefix=prefix, check=check)


@command("render-haproxy")
def render_haproxy_command(
    *,
    config: ConfigOpt = None,
    gpus: GpusOpt = None,
    gpus_per_instance: PerInstanceOpt = None,
    base_port: BasePortOpt = None,
    state_dir: StateDirOpt = None,
    env: EnvOpt = None,
    models: ModelsOpt = None,
    listen: ListenOpt = None,
    allow: AllowOpt = None,
    api_keys_file: ApiKeysOpt = None,
    balance: BalanceOpt = None,
    read_timeout: ReadTimeoutOpt = None,
    max_body_size: MaxBodyOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    metrics_port: MetricsPortOpt = None,
    output: OutputOpt = None,
    standalone: Annotated[bool, typer.Option("--standalone", help="accepted for symmetry: the output is always a complete haproxy.cfg")] = False,
    prefix: PrefixOpt = None,
    check: Annotated[bool, typer.Option("--check", help="run `haproxy -c` on the result; exit 1 with HAProxy's message if it fails")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Render the HAProxy gateway: a complete haproxy.cfg that queues requests at the gateway."""
    cfg = _config(config, verbose, **_settings(locals()))
    _render_gateway("haproxy", cfg, output=output, standalone=True, prefix=prefix, check=check)


def _render_gateway(name: str, cfg: FleetConfig, *, output: Path | None, standalone: bool, prefix: str | None, check: bool) -> None:
    assert cfg.state_dir is not None
    root = (checked_path(prefix, "prefix") if prefix else cfg.state_dir / "gateway").absolute()
    result = _plan(cfg)
    spec = spec_from(cfg, result)
    if message := exposure_warning(spec):
        warn(message)
    engine = engine_named(name)
    user = worker_user(run_as(cfg, result)) if standalone else None
    target = output.absolute() if output is not None else None
    content = engine.render(spec, standalone=standalone, prefix=root, user=user, config=target)
    if check:
        engine.check(content, standalone=standalone, prefix=root)
    if standalone and (output is not None or prefix):
        # The file runs exactly as its header says: nothing it names must be made first.
        engine.prepare(root)
    if output is None:
        # API keys never reach stdout; -o FILE writes them (mode 0640).
        print(engine.render(spec.redacted(), standalone=standalone, prefix=root, user=user), end="")
    else:
        write_atomic(output, content, secret_mode(spec))
        checked = " (nginx -t: ok)" if name == "nginx" else " (haproxy -c: ok)"
        err.print(f"wrote {output}" + (checked if check else ""), soft_wrap=True, markup=False)


class Format(str, Enum):
    table = "table"
    json = "json"
    prometheus = "prometheus"


@command("status")
def status_command(
    *,
    state_dir: StateDirOpt = None,
    format_: Annotated[Format, typer.Option("--format", help="table, json (schema in the README) or prometheus (node-exporter textfile)")] = Format.table,
    json_: Annotated[bool, typer.Option("--json", help="the same as --format json")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="refresh in place until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option("--interval", help="seconds between refreshes with --watch", min=0.2)] = 2.0,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds each probe may take", min=0.1)] = 2.0,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="write here (atomically) instead of stdout, e.g. for node-exporter's textfile dir", metavar="FILE")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """GPUs, instances (pid, uptime, health, version, loaded models) and the gateway; exit 0 when all are healthy."""
    from ollama_fleet.status import gather, prometheus

    cfg = _config(None, verbose, state_dir=state_dir)
    assert cfg.state_dir is not None
    home = cfg.state_dir
    shape = Format.json if json_ else format_
    if watch:
        if shape is not Format.table or output is not None:
            raise BadInput(["watch: --watch refreshes the table; use --format json or prometheus without it"])
        from rich.live import Live

        with Live(console=out, auto_refresh=False, screen=False) as live:
            try:
                while True:
                    live.update(_status_view(gather(home, timeout)), refresh=True)
                    time.sleep(interval)
            except KeyboardInterrupt:
                return  # Ctrl-C is how one leaves a watch: not an error
    report = gather(home, timeout)
    if shape is Format.table:
        if report.nvml.note:
            warn(report.nvml.note)
        _warn_others(report.others)
        out.print(_status_view(report))
    else:
        text = json.dumps(report.json_data(), indent=2) + "\n" if shape is Format.json else prometheus(report)
        if output is None:
            print(text, end="")
        else:
            write_atomic(output, text)
    if not report.healthy:
        raise typer.Exit(1)


def _warn_others(others: list[str]) -> None:
    for other in others:
        warn(f"an `ollama serve` the fleet did not start runs: {other}; it may hold GPU memory "
             "(a stock ollama.service? systemctl disable --now ollama)")


def _view_table(*columns: Any, title: str) -> Table:
    """status's tables: light borders and single spacing, so a whole row fits 80 columns."""
    from rich import box

    return Table(*columns, title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=0,
                 pad_edge=False)


def _status_view(report: Any) -> Group:
    from ollama_fleet.status import expires_in

    gpus = _view_table("GPU", "name", "memory", "util", "temp", "power", "instance", title="GPUs")
    used_by = {label: i.name for i in report.instances for label in i.gpus}
    for g in report.gpus:
        memory = "-" if g.memory_total is None else f"{(g.memory_used or 0) / 2**30:.1f}/{g.memory_total / 2**30:.0f} GiB"
        gpus.add_row(
            g.label, g.name, memory,
            "-" if g.utilization is None else f"{g.utilization}%",
            "-" if g.temperature is None else f"{g.temperature}°C",
            "-" if g.power is None else f"{g.power:.0f} W",
            used_by.get(g.label.removeprefix("gpu"), "-"),
        )
    queues = any(i.gateway is not None for i in report.instances)
    # Under 80 columns, nothing cut: every instance listens on loopback (the port says
    # where), restarts ride with the uptime, one Ollama version goes in the title, and what
    # is wrong with an instance is said under the table, in full.
    versions = sorted({i.version for i in report.instances if i.version})
    title = f"instances (started by {report.source})" + (f", Ollama {versions[0]}" if len(versions) == 1 else "")
    columns = [Column(name, no_wrap=True) for name in ("instance", "GPUs", "port", "pid", "uptime")]
    columns += [Column("health", no_wrap=True)]
    columns += [Column("version", no_wrap=True)] if len(versions) > 1 else []
    columns += [Column("gateway", no_wrap=True)] if queues else []
    instances = _view_table(*columns, title=title)
    problems: list[Text] = []
    placement = any(i.placed for i in report.instances)
    models = _view_table("instance", "model", "VRAM", "unloads in", *(["placement"] if placement else []), title="models")
    for i in report.instances:
        if i.healthy:
            health = Text(f"ok {i.latency_ms:.0f}ms", style="green")
        else:  # it answers, but on devices not its own (its log says which), or it does not answer
            health = Text("WRONG GPU" if i.version else "DOWN", style="bold red")
            problems.append(Text(f"{i.name}: {i.error}", style="red"))
        # ✓: Ollama's own log says it runs on exactly these GPUs.
        pinned = ",".join(i.gpus) + (" ✓" if i.healthy and i.devices else "")
        uptime = _duration(i.uptime_s) + (f" ↻{i.restarts}" if i.restarts else "")
        instances.add_row(
            i.name, pinned, i.address.rsplit(":", 1)[-1], str(i.pid or "-"), uptime, health,
            *([i.version or "-"] if len(versions) > 1 else []),
            *([_server(i.gateway)] if queues else []),
            style=None if i.healthy else "red",
        )
        for m in i.models:
            left = expires_in(m.expires_at)
            stray = canonical(m.name) in i.stray
            mark = Text("stray: placed elsewhere", style="bold yellow") if stray else ("placed" if i.placed else "")
            models.add_row(i.name, m.name, _size(m.size_vram), "never" if left is None else _duration(left),
                           *([mark] if placement else []))
        for name in i.missing:
            models.add_row(i.name, name, "-", "-", Text("missing: placed here, not loaded", style="bold yellow"))
    gw = report.gateway
    if gw.engine is None:
        gateway = Text(f"gateway: none ({gw.reason})")
    elif gw.up:
        queue = "" if gw.queued is None else f", {gw.queued} request(s) queued"
        gateway = Text.assemble("gateway: ", (f"{gw.engine} up", "green"), f", listening on {gw.listen}{queue}")
    else:
        gateway = Text.assemble("gateway: ", (f"{gw.engine} DOWN ({gw.error})", "bold red"), f", should listen on {gw.listen}")
    parts: list[Any] = [gpus] if report.gpus else []
    parts += [instances, *problems]
    parts += [models] if models.rows else []
    notes = [Text(f"note: {gw.note}", style="yellow")] if gw.note else []
    return Group(*parts, gateway, *notes)


def _server(stats: Any) -> str:
    """What HAProxy says of an instance: "UP 2 busy", "DOWN", "DRAIN 1 busy 1 queued"."""
    if stats is None:
        return "-"
    counts = [f"{stats.in_flight} busy"] if stats.in_flight else []
    counts += [f"{stats.queued} queued"] if stats.queued else []
    return " ".join([stats.state, *counts])


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


@command("restart")
def restart_command(
    instances: Annotated[Optional[list[str]], typer.Argument(help="instances to restart (default: all)", metavar="[INSTANCE]...")] = None,
    *,
    rolling: Annotated[bool, typer.Option("--rolling", help="one at a time, drained through the gateway first: no stream is cut")] = False,
    drain_timeout: Annotated[float, typer.Option("--drain-timeout", help="seconds to wait for an instance's requests to finish", min=0)] = 600.0,
    wait_timeout: Annotated[float, typer.Option("--wait-timeout", help="seconds to wait for a restarted instance to answer", min=1)] = 60.0,
    state_dir: StateDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Restart instances; --rolling drains each through the gateway first so no stream is cut."""
    from ollama_fleet.restart import fleet_at, restart

    cfg = _config(None, verbose, state_dir=state_dir)
    assert cfg.state_dir is not None
    outcome = restart(
        fleet_at(cfg.state_dir), instances or [], rolling=rolling, drain_timeout=drain_timeout,
        wait_timeout=wait_timeout, say=lambda line: out.print(line, soft_wrap=True),
    )
    out.print(f"restarted: {', '.join(outcome.restarted) or 'none'}")
    if outcome.problems:
        raise UserError("\n".join(outcome.problems))


class BenchApi(str, Enum):
    generate = "generate"
    chat = "chat"
    openai = "openai"


@command("bench")
def bench_command(
    *,
    url: Annotated[str, typer.Option("--url", help="the gateway (or one instance): http://HOST:PORT", metavar="URL")],
    model: Annotated[str, typer.Option("--model", help="the model to ask", metavar="MODEL")],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="requests in flight at once", min=1, max=4096)] = 8,
    requests: Annotated[Optional[int], typer.Option("--requests", "-n", help="how many requests (default: 10 x concurrency)", min=1)] = None,
    duration: Annotated[Optional[float], typer.Option("--duration", help="run for S seconds instead of a number of requests", min=0.1, metavar="S")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="the prompt of every request")] = None,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="a file of prompts, one per line, used in turn", metavar="FILE")] = None,
    api: Annotated[BenchApi, typer.Option("--api", help="generate (/api/generate), chat (/api/chat) or openai (/v1/chat/completions)")] = BenchApi.generate,
    num_predict: Annotated[Optional[int], typer.Option("--num-predict", help="tokens to generate per request (options.num_predict / max_tokens)", min=1)] = None,
    api_key_file: Annotated[Optional[Path], typer.Option("--api-key-file", help="send the first key of this file as a bearer token", metavar="PATH")] = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Load the fleet with streamed requests: requests/s, tokens/s, TTFT and latency percentiles, errors, split per instance."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ollama_fleet.bench import check_target, run_load
    from ollama_fleet.gateway import read_api_keys

    global _verbose
    _verbose = verbose
    problems = []
    if not re.fullmatch(r"https?://[^\s/]+", url.rstrip("/")):
        problems.append(f"url: not http://HOST:PORT or https://HOST:PORT (got {url!r})")
    if requests is not None and duration is not None:
        problems.append("requests: give --requests or --duration, not both")
    if prompt is not None and prompts is not None:
        problems.append("prompts: give --prompt or --prompts, not both")
    if problems:
        raise BadInput(problems)
    base = url.rstrip("/")
    texts = [prompt or "Write a short story about a GPU."]
    if prompts is not None:
        try:
            texts = [line for line in prompts.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise BadInput(f"prompts: cannot read {prompts} ({exc.strerror})") from None
        if not texts:
            raise BadInput(f"prompts: {prompts} holds no prompt")
    headers = {"Authorization": f"Bearer {read_api_keys(api_key_file)[0]}"} if api_key_file else {}
    if (problem := check_target(base, model, headers)) is not None:
        raise UserError(problem)
    total = requests if duration is None else None
    if total is None and duration is None:
        total = 10 * concurrency
    what = f"{total} requests" if total is not None else f"{duration:g} s"
    columns = [TextColumn(f"{api.value} {model}, {concurrency} at once, {what}"), BarColumn(),
               MofNCompleteColumn() if total is not None else TextColumn("{task.completed} done"), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True, disable=json_) as bar:
        task = bar.add_task("bench", total=total)
        result = run_load(
            [base], model, concurrency=concurrency, requests=total, duration=duration, prompts=texts,
            api=api.value, num_predict=num_predict, headers=headers,
            progress=lambda done: bar.update(task, completed=done),
        )
    summary = result.summary()
    if json_:
        _print_json(summary)
    else:
        _print_bench(summary)


def _print_bench(s: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    table = Table("metric", Column("value", justify="right"), title="bench", title_justify="left")
    table.add_row("requests (ok / sent)", f"{s['ok']} / {s['requests']}")
    table.add_row("wall time", f"{s['wall_s']:.1f} s")
    table.add_row("requests/s", f"{s['requests_per_s']:.2f}")
    table.add_row("generated tokens/s", f"{s['tokens_per_s']:.1f}")
    for q, v in s["ttft_ms"].items():
        table.add_row(f"time to first token {q}", ms(v))
    if s["ttfa_ms"] != s["ttft_ms"]:  # a thinking model: its answer starts after the reasoning
        for q, v in s["ttfa_ms"].items():
            table.add_row(f"time to first answer token {q}", ms(v))
    for q, v in s["latency_ms"].items():
        table.add_row(f"latency {q}", ms(v))
    out.print(table)
    if s["errors"]:
        out.print("errors: " + ", ".join(f"{k}: {v}" for k, v in s["errors"].items()))
    split = s["split"]
    if list(split) != ["-"]:
        out.print("split per instance: " + ", ".join(f"{k} {v}" for k, v in split.items()), soft_wrap=True)


RootOpt = Annotated[Optional[Path], typer.Option("--root", help="write under this staging root and run no systemctl (packaging, tests)", metavar="DIR")]


@command("install-systemd")
def install_systemd_command(
    *,
    config: ConfigOpt = None,
    gpus: GpusOpt = None,
    gpus_per_instance: PerInstanceOpt = None,
    base_port: BasePortOpt = None,
    models_dir: ModelsDirOpt = None,
    keep_alive: KeepAliveOpt = None,
    ollama_bin: OllamaBinOpt = None,
    user: Annotated[Optional[str], _opt("--user", "the user instances run as (default: ollama)", "NAME")] = None,
    env: EnvOpt = None,
    models: ModelsOpt = None,
    gateway: GatewayOpt = None,
    engine: EngineOpt = None,
    metrics_port: MetricsPortOpt = None,
    listen: ListenOpt = None,
    allow: AllowOpt = None,
    api_keys_file: ApiKeysOpt = None,
    balance: BalanceOpt = None,
    read_timeout: ReadTimeoutOpt = None,
    max_body_size: MaxBodyOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    root: RootOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the diff of what would change; write nothing")] = False,
    enable: Annotated[bool, typer.Option("--enable/--no-enable", help="daemon-reload, enable --now the target, reload nginx")] = True,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="after enabling, wait until every instance and the gateway answer (--wait-timeout)")] = True,
    wait_timeout: WaitTimeoutOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Install the fleet as systemd units: one ollama-fleet@ instance per GPU, one target, the gateway."""
    from ollama_fleet import systemd

    cfg = _config(config, verbose, **_settings(locals()))
    name = cfg.user or systemd.DEFAULT_USER
    # The service user's own ~/.ollama/models, not root's (/root is 0700: never theirs).
    result = _plan(cfg, home=systemd.home_of(name))
    staging = root is not None
    base = root.absolute() if root is not None else Path("/")
    if not staging and not dry_run and not systemd.is_root():
        raise UserError("install-systemd writes to /etc/systemd/system: run it as root, or stage the files with --root DIR")
    systemctl = systemd.Systemctl(find_tool("systemctl")) if enable and not staging and not dry_run else None
    if not staging:
        account = systemd.service_account(name)
        md = result.models_dir
        if not md.exists:
            raise Missing(f"models_dir: {md.path} does not exist (create it, owned by {name}, or pass --models-dir)")
        if not systemd.can_use(md.path, account):
            raise Missing(f"models_dir: {systemd.why_not_usable(md.path, account)}")
    service = systemd.Service(
        ollama_bin=resolve_binary(cfg.ollama_bin),
        user=name,
        group=systemd.group_of(name),
        models_dir=result.models_dir.path,
        home=systemd.home_of(name),
    )
    gateway_engine, spec = _gateway_plan(cfg, result, explicit=gateway is True or engine is not None)
    gw = None
    if gateway_engine is not None and spec is not None:
        # Checked before anything is written: a config the engine rejects leaves the old one.
        gw = systemd.gateway_install(gateway_engine, spec, systemd.haproxy_user())
    files = systemd.render_units(result.instances, service, gw.files if gw else ())
    if not staging and not dry_run:
        # Ollama writes its key to ~/.ollama before it listens, and exits when it cannot
        # (ProtectSystem=full makes /usr read-only but for ReadWritePaths, which skips a
        # dir that does not exist): a missing one is a crash loop.
        systemd.prepare_home(account)
    report = systemd.install(
        files, result.instances, gw.manifest if gw else None, root=base, dry_run=dry_run, systemctl=systemctl,
        redact=gateway_engine.redact if gateway_engine else str, reloads=gw.reloads if gw else None,
        models=result.models,
    )
    if dry_run:
        print(report.diff, end="")
        out.print(
            f"dry run: {len(report.written)} file(s) would change, {len(report.removed)} removed, "
            f"{len(report.unchanged)} unchanged; nothing written", soft_wrap=True,
        )
        return
    for path in report.written:
        out.print(f"wrote   {path}")
    for path in report.removed:
        out.print(f"removed {path}")
    if not report.written and not report.removed:
        out.print(f"unchanged: {len(report.unchanged)} file(s) already as planned under {base}")
    for verb, names in (("started", report.started), ("restarted", report.restarted), ("stopped", report.stopped)):
        if names and systemctl is not None:
            out.print(f"{verb}: {', '.join(names)}")
    for note in report.notes:
        out.print(note, soft_wrap=True)
    if systemctl is None:
        what = "staged" if staging else "written"
        out.print(f"{what}; to start: systemctl daemon-reload && systemctl enable --now {systemd.TARGET}", soft_wrap=True)
        return
    out.print(f"enabled {systemd.TARGET}; logs: journalctl -u 'ollama-fleet@*'")
    if wait:
        # `Type=exec` reports a start as soon as the process runs: ask each one instead.
        with err.status(f"waiting for {len(result.instances)} instance(s) and the gateway to answer"):
            problems = systemd.wait_started(
                result.instances, spec.probe_url if spec else None,
                gw.unit if gw else None, cfg.wait_timeout,
            )
        if problems:
            raise UserError("\n".join(problems))
        out.print(f"all {len(result.instances)} instance(s) answer on their own GPUs" + (", and the gateway" if gw else ""))


@command("uninstall-systemd")
def uninstall_systemd_command(
    *,
    root: RootOpt = None,
    enable: Annotated[bool, typer.Option("--enable/--no-enable", help="with --no-enable, remove the files but run no systemctl")] = True,
    verbose: VerboseOpt = False,
) -> None:
    """Stop and disable the fleet's units and remove exactly the files install-systemd wrote."""
    from ollama_fleet import systemd

    _config(None, verbose)
    staging = root is not None
    base = root.absolute() if root is not None else Path("/")
    if not staging and not systemd.is_root():
        raise UserError("uninstall-systemd removes files from /etc: run it as root, or pass --root DIR")
    systemctl = None
    if enable and not staging and systemd.read_manifest(base) is not None:
        systemctl = systemd.Systemctl(find_tool("systemctl"))
    removed = systemd.uninstall(base, systemctl)
    if removed is None:
        out.print(f"nothing to uninstall: no {systemd.MANIFEST} under {base}")
        return
    for path in removed:
        out.print(f"removed {path}")
    out.print(f"uninstalled {len(removed)} file(s)" + (f"; {systemd.TARGET} stopped and disabled" if systemctl else ""))


def main() -> None:
    app(prog_name="ollama-fleet")
