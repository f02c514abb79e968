"""`restart`: restart instances, or roll through them without cutting a stream.

A rolling restart takes one instance at a time: the gateway stops sending it new requests
(drain), the requests it serves finish (bounded by a timeout that is reported, never
silently exceeded), it restarts, answers, gets its models back, and the gateway sends it
requests again. Ollama closes every connection at once on SIGTERM (DESIGN.md §5), so
without the drain every stream on it would be cut.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ollama_fleet import probe, systemd
from ollama_fleet.errors import BadInput, UserError
from ollama_fleet.gateway import Engine, engine_named
from ollama_fleet.state import DESIRED, read_desired, read_gateway, write_model
from ollama_fleet.supervisor import live_supervisor, wait_ready

Say = Callable[[str], None]


@dataclass
class Outcome:
    restarted: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _chosen(names: list[str], known: list[str]) -> list[str]:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadInput([f"instance: no instance {n!r} in this fleet (instances: {', '.join(known)})" for n in unknown])
    return names or known


class Fleet:
    """What a restart needs to know of a running fleet: its instances, how to restart one,
    and its gateway (for draining)."""

    names: list[str]
    engine: Engine | None
    drain_home: Path  # where the engine finds its gateway (state dir, or HAProxy's run dir)

    def restart(self, names: list[str], timeout: float) -> list[str]:
        """Restart these instances and wait until they answer; returns problems."""
        raise NotImplementedError

    def preload(self, name: str, timeout: float) -> list[str]:
        return []


class UpFleet(Fleet):
    """A fleet `up` started: a new generation in fleet.json makes the supervisor restart an
    instance, like any other change of its plan."""

    def __init__(self, home: Path) -> None:
        self.home = home
        desired = read_desired(home)
        if desired is None or live_supervisor(home) is None:
            raise UserError(f"no running fleet in {home}: start it with `ollama-fleet up`")
        self.desired = desired
        self.names = [i.name for i in desired.instances]
        gw = read_gateway(home)
        live = gw is not None and gw.engine is not None and gw.process is not None and gw.process.process()
        self.engine = engine_named(gw.engine) if live and gw and gw.engine else None
        self.drain_home = home

    def restart(self, names: list[str], timeout: float) -> list[str]:
        desired = read_desired(self.home) or self.desired
        if any(n in desired.hold for n in names):
            # `up --rolling`: releasing the hold lets the supervisor apply the new plan.
            self.desired = desired.model_copy(update={"hold": tuple(n for n in desired.hold if n not in names)})
        else:
            generations = {**desired.generations, **{n: desired.generations.get(n, 0) + 1 for n in names}}
            self.desired = desired.model_copy(update={"generations": generations})
        write_model(self.home / DESIRED, self.desired)
        supervisor = live_supervisor(self.home)
        if supervisor is None:
            raise UserError(f"the fleet's supervisor is gone; run `ollama-fleet up` in {self.home}")
        os.kill(supervisor.pid, signal.SIGHUP)  # it restarts what changed
        subset = self.desired.model_copy(update={"instances": tuple(i for i in self.desired.instances if i.name in names)})
        ready = wait_ready(self.home, subset, timeout, tick=lambda: None)
        return list(ready.failed.values())

    def preload(self, name: str, timeout: float) -> list[str]:
        inst = next(i for i in self.desired.instances if i.name == name)
        jobs = [job for job in self.desired.loads if job[0] == name]
        return probe.preload({name: inst.address}, jobs, timeout)


class SystemdFleet(Fleet):
    """A fleet install-systemd installed: systemctl restarts its units."""

    def __init__(self, systemctl: systemd.Systemctl) -> None:
        manifest = systemd.read_manifest()
        if manifest is None:
            raise UserError("no fleet here: nothing started by `up` and no install-systemd manifest")
        self.systemctl = systemctl
        self.manifest = manifest
        self.names = [m.name for m in manifest.instances]
        gw = manifest.gateway
        self.engine = engine_named(gw.engine) if gw and gw.engine == "haproxy" else None
        self.drain_home = gw.prefix if gw and gw.prefix else Path(systemd.RUN_DIR)

    def restart(self, names: list[str], timeout: float) -> list[str]:
        self.systemctl("restart", *map(systemd.unit_of, names))
        addresses = {m.name: m.address for m in self.manifest.instances if m.name in names}
        deadline = time.monotonic() + timeout
        while (down := [n for n, v in zip(addresses, probe.versions(list(addresses.values())).values()) if v is None]):
            if time.monotonic() > deadline:
                return [f"{n} did not answer GET /api/version within {timeout:g}s after its restart" for n in down]
            time.sleep(0.1)
        return []

    def preload(self, name: str, timeout: float) -> list[str]:
        member = next(m for m in self.manifest.instances if m.name == name)
        # No keep_alive of its own: the instance's OLLAMA_KEEP_ALIVE (its env file) applies.
        jobs = [(name, model, placed.keep_alive or "") for model, placed in self.manifest.models.items()
                if name in placed.instances]
        return probe.preload({name: member.address}, jobs, timeout)


def restart(fleet: Fleet, names: list[str], *, rolling: bool, drain_timeout: float, wait_timeout: float,
            say: Say) -> Outcome:
    chosen = _chosen(names, fleet.names)
    outcome = Outcome()
    if not rolling:
        say(f"restarting {', '.join(chosen)}")
        outcome.problems += fleet.restart(chosen, wait_timeout)
        for name in chosen:
            outcome.problems += fleet.preload(name, max(wait_timeout, 300))
        outcome.restarted = [n for n in chosen if not any(p.startswith(n + " ") for p in outcome.problems)]
        return outcome
    if fleet.engine is None:
        raise UserError(
            "restart --rolling drains each instance through the gateway, and this fleet runs none "
            "(or, installed with systemd, uses the system's nginx): restart without --rolling, or use --engine haproxy"
        )
    if len(fleet.names) == 1:
        say("warning: one instance only: while it restarts, new requests have nowhere to go")
    for name in chosen:
        started = time.monotonic()
        say(f"{name}: draining")
        left = fleet.engine.drain(fleet.drain_home, name, drain_timeout)
        if left:
            # Said, not hidden: these streams are cut by the restart.
            outcome.problems.append(f"{name}: {left} request(s) still in flight after {drain_timeout:g}s; restarted anyway")
        say(f"{name}: drained in {time.monotonic() - started:.1f}s; restarting")
        failed = fleet.restart([name], wait_timeout)
        if failed:
            outcome.problems += failed
            say(f"{name}: did not come back; stopping the roll here (it stays drained)")
            break
        outcome.problems += fleet.preload(name, max(wait_timeout, 300))
        fleet.engine.undrain(fleet.drain_home, name, wait_timeout)
        outcome.restarted.append(name)
        say(f"{name}: back in the gateway after {time.monotonic() - started:.1f}s")
    return outcome


def fleet_at(home: Path) -> Fleet:
    """The fleet `up` runs from this state dir, else the one installed with systemd."""
    if read_desired(home) is not None:
        return UpFleet(home)
    if systemd.read_manifest() is not None:
        from ollama_fleet.gateway import find_tool

        return SystemdFleet(systemd.Systemctl(find_tool("systemctl")))
    raise UserError(f"no fleet here: nothing started by `up` in {home}, and no install-systemd manifest")

