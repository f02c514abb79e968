"""`up`: converge to the plan. Start missing instances, keep matching healthy ones, restart
changed ones (or roll them, drained first), stop unplanned ones; wait until each answers on
its own GPUs; preload; start or reload the gateway. The supervisor (supervisor.py) runs
detached, or attached for `--foreground`, where the CLI runs it after this returns."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ollama_fleet import pinning
from ollama_fleet.accounts import make_state_dir, run_as, worker_user
from ollama_fleet.actions import Progress
from ollama_fleet.actions.planning import gateway_for, make_plan
from ollama_fleet.changes import Change, changes
from ollama_fleet.config import RESERVED_ENV, FleetConfig
from ollama_fleet.errors import FleetError, Interrupted, Missing, UserError
from ollama_fleet.gateway import Engine
from ollama_fleet.gateway.lifecycle import converge
from ollama_fleet.gateway.lifecycle import preflight as gateway_preflight
from ollama_fleet.gateway.spec import GatewaySpec
from ollama_fleet.plan import Plan, ignored_env, loads
from ollama_fleet.processes import port_holder, resolve_binary, with_log_tail
from ollama_fleet.readiness import Readiness, wait_ready
from ollama_fleet.state import (
    DESIRED,
    GATEWAY,
    SUPERVISOR_LOG,
    Actual,
    Desired,
    GatewayState,
    ProcessRecord,
    read_actual,
    read_desired,
    write_model,
)
from ollama_fleet.supervisor import Echo, Supervisor, exited, launch_background, live_supervisor


@dataclass
class UpReport:
    desired: Desired
    changes: list[Change]  # what happened to each instance ("roll": restarted one by one after)
    ready: Readiness
    actual: Actual | None
    gateway: str | None = None  # what the gateway did, in words
    problems: list[str] = field(default_factory=list)
    supervisor: Supervisor | None = None  # `--foreground`: attached, for the CLI to run


def _warn_ignored_env(cfg: FleetConfig, progress: Progress) -> None:
    """Name the caller's OLLAMA_* / *_VISIBLE_DEVICES that instances will not see, and how to
    pass each on purpose (by reference: a value may be a secret)."""
    ignored = [k for k in ignored_env(os.environ) if k not in cfg.env]
    if not ignored:
        return
    how = [
        f"{k} (the fleet sets it: use --{RESERVED_ENV[k].replace('_', '-')})"
        if k in RESERVED_ENV and " " not in RESERVED_ENV[k]
        else f"{k} (the fleet sets it)"
        if k in RESERVED_ENV
        else f"a line {k}=... in an --env-file"
        for k in ignored
    ]
    progress.warn(
        "instances do not inherit these variables from your environment: "
        + ", ".join(ignored)
        + "; to pass one on purpose: "
        + ", ".join(how)
        + " (a file keeps the value off the command line, which every user sees in ps)"
    )


def _preflight(result: Plan, actual: Actual | None) -> None:
    """Refuse to start what cannot run: a missing models dir (3), a port taken by a stranger (1)."""
    md = result.models_dir
    if not md.exists:
        raise Missing(f"models_dir: {md.path} does not exist (create it, or pass --models-dir)")
    if not md.readable:
        raise Missing(f"models_dir: {md.path} is not readable by this user")
    ours = {
        st.port
        for st in (actual.instances.values() if actual else [])
        if st.record is not None and st.record.process() is not None
    }
    for inst in result.instances:
        if inst.port not in ours and (holder := port_holder(inst.port, inst.host)) is not None:
            raise UserError(f"port {inst.port} (for {inst.name}) is taken by {holder}; pass another --base-port")


def up(
    cfg: FleetConfig,
    *,
    foreground: bool,
    rolling: bool,
    progress: Progress,
    echo: Echo | None = None,
) -> UpReport:
    result = make_plan(cfg, progress)
    state_dir = cfg.state_path
    _warn_ignored_env(cfg, progress)
    previous = read_desired(state_dir)
    new = _desired(cfg, result, previous)
    # The gateway's input (keys, TLS files) is read and checked before anything starts.
    engine, spec = gateway_for(cfg, result, progress)
    if engine is not None and spec is not None:
        gateway_preflight(spec, state_dir, engine)
    running = live_supervisor(state_dir)
    if running is not None and foreground:
        raise UserError(
            f"a fleet is already running from {state_dir} (supervisor pid {running.pid}); run `ollama-fleet down` first"
        )
    actual = read_actual(state_dir) if running else None
    todo = changes(previous if running else None, actual, new)
    _preflight(result, actual)
    held = tuple(c.name for c in todo if c.action == "restart") if rolling else ()
    if held and (engine is None or foreground):
        raise UserError(
            "up --rolling drains each changed instance through the gateway: it needs the gateway and a detached fleet"
        )
    _say_changes(todo, held, progress)
    if new.user == "root":  # said once every check passed, as up is about to start them
        progress.warn(
            "instances run as root (--user root): Ollama, and every model file it writes, with all of root's rights"
        )
    make_state_dir(state_dir)
    write_model(state_dir / DESIRED, new.holding(held))

    supervisor, tick = _supervise(state_dir, running, foreground, echo)
    try:
        ready = wait_ready(
            state_dir,
            new.model_copy(update={"instances": tuple(i for i in new.instances if i.name not in held)}),
            cfg.wait_timeout,
            tick,
            lambda n, total: progress.status(f"waiting for instances: {n}/{total} answer"),
        )
        _verify_pinning(new, ready, progress)
        from ollama_fleet import probe  # once the instances started (docs/architecture.md, "Start-up")

        preload_failures = probe.preload(
            {i.name: i.address for i in new.instances if i.name in ready.versions},
            list(new.loads),
            timeout=max(cfg.wait_timeout, probe.PRELOAD_TIMEOUT),
        )
    except Interrupted:
        assert supervisor is not None
        supervisor.stop_all()
        raise
    report = UpReport(
        desired=new,
        changes=[Change(c.name, "roll", c.why) if c.name in held else c for c in todo],
        ready=ready,
        actual=read_actual(state_dir),
        supervisor=supervisor,
    )
    report.problems += _converge_gateway(cfg, engine, spec, new, report)
    report.problems += list(ready.failed.values()) + preload_failures
    if held:
        report.problems += _roll(cfg, held, report.problems, progress)
    return report


def _roll(cfg: FleetConfig, held: tuple[str, ...], problems: list[str], progress: Progress) -> list[str]:
    """`up --rolling`: the changed instances, one at a time, drained first, once the rest is up."""
    from ollama_fleet.actions.restart import restart
    from ollama_fleet.fleet import UpFleet

    if problems:
        return [
            f"the rolling restart of {', '.join(held)} did not start: they run their old plan; "
            "fix the above and run `up --rolling` again"
        ]
    outcome = restart(
        UpFleet(cfg.state_path),
        list(held),
        rolling=True,
        drain_timeout=cfg.read_timeout,
        wait_timeout=cfg.wait_timeout,
        progress=progress,
    )
    return outcome.problems


def _desired(cfg: FleetConfig, result: Plan, previous: Desired | None) -> Desired:
    return Desired(
        instances=result.instances,
        ollama_bin=resolve_binary(cfg.ollama_bin),
        user=run_as(cfg.user, result.models_dir.owner, result.models_dir.path),
        loads=tuple(loads(result, cfg.preload, cfg.keep_alive)),
        models=result.models,
        # Restarts asked for earlier are part of each instance's fingerprint: keep them.
        generations=previous.generations if previous else {},
    )


def _say_changes(todo: list[Change], held: tuple[str, ...], progress: Progress) -> None:
    for change in todo:
        if change.action in ("restart", "stop"):
            verb = "restarting" if change.action == "restart" else "stopping"
            progress.say(f"{change.name}: {'rolling restart' if change.name in held else verb} ({change.why})")


def _supervise(
    state_dir: Path, running: ProcessRecord | None, foreground: bool, echo: Echo | None
) -> tuple[Supervisor | None, Callable[[], None]]:
    """The supervisor for this `up`: attached (stepped by the wait, Ctrl-C stops all),
    a new background one, or the running one told to converge (SIGHUP)."""
    if foreground:
        supervisor = Supervisor(state_dir, echo=echo, foreground=True)
        supervisor.install_signal_handlers()

        def step() -> None:
            supervisor.step()
            if supervisor.stop_signal is not None:
                raise Interrupted(supervisor.stop_signal)

        return supervisor, step
    background = None if running else launch_background(state_dir)

    def check() -> None:
        if background is not None and exited(background):
            raise UserError(with_log_tail("the supervisor exited at start", state_dir / SUPERVISOR_LOG))

    if running is not None:
        os.kill(running.pid, signal.SIGHUP)  # converge to the new fleet.json
    return None, check


def _verify_pinning(new: Desired, ready: Readiness, progress: Progress) -> None:
    """Never preload onto a neighbour's GPU or the CPU: a wrong instance fails `up`."""
    wrong, unverified = pinning.check(new.instances, ready.devices)
    logs = {i.name: i.log for i in new.instances}
    for name, why in wrong.items():
        ready.failed[name] = with_log_tail(why, logs[name])
        ready.versions.pop(name, None)
    if unverified:
        progress.warn(
            f'{", ".join(unverified)}: Ollama logged no "inference compute" line, so the GPUs each uses '
            "are not verified (this Ollama does not log them)"
        )


def _converge_gateway(
    cfg: FleetConfig, engine: Engine | None, spec: GatewaySpec | None, new: Desired, report: UpReport
) -> list[str]:
    state_dir = cfg.state_path
    if engine is None or spec is None:
        reason = "disabled" if not cfg.gateway else f"{cfg.engine} not installed"
        write_model(state_dir / GATEWAY, GatewayState(engine=None, reason=reason))
        return []
    try:
        action, gw = converge(engine, spec, state_dir, worker_user())
    except FleetError as exc:
        return [str(exc)]
    from ollama_fleet import probe

    pid = gw.process.pid if gw.process else "-"
    report.gateway = f"gateway: {engine.name} {action}, listening on {spec.listen} (pid {pid})"
    if not probe.gateway_answers(spec.probe_url, 10):
        return [f"the gateway ({engine.name}) did not answer on {spec.probe_url}; see {state_dir}/gateway"]
    return []
