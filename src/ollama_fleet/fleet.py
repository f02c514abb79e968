"""Which fleet is here: the one `up` started from a state dir, else the one install-systemd
installed. `status`, `restart` and `logs` ask it for its instances, its gateway, how to
restart an instance and where its logs are; none of them tells the two kinds apart."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from ollama_fleet import probe
from ollama_fleet.errors import UserError
from ollama_fleet.gateway import Engine, engine_named
from ollama_fleet.pinning import Device
from ollama_fleet.plan import GpuRef
from ollama_fleet.processes import listener
from ollama_fleet.readiness import wait_ready
from ollama_fleet.state import DESIRED, read_actual, read_desired, read_gateway, write_model
from ollama_fleet.supervisor import live_supervisor
from ollama_fleet.systemctl import Systemctl, journal_lines, journal_tail, unit_facts
from ollama_fleet.systemd import MANIFEST, read_manifest, unit_of
from ollama_fleet.values import Placement
from ollama_fleet.waiting import wait_until


@dataclass
class Member:
    """One instance as the fleet knows it now."""

    name: str
    address: str
    pin: tuple[GpuRef, ...]
    pid: int | None = None
    started_at: float | None = None  # wall clock
    restarts: int | None = None
    devices: list[Device] | None = None  # what this run of Ollama said it uses


@dataclass
class GatewayFacts:
    engine: str | None  # None: the fleet runs without one
    reason: str | None = None  # why there is none
    listen: str | None = None
    url: str | None = None
    pid: int | None = None
    prefix: Path | None = None  # its runtime files (an admin socket)
    unit: str | None = None  # the systemd unit that serves it (an installed fleet)


class Fleet:
    """What a command needs to know of a fleet, whichever kind it is."""

    source: str  # "up" or "systemd"
    names: list[str]
    models: dict[str, Placement]
    engine: Engine | None  # the gateway engine that can drain an instance, if any
    drain_home: Path  # where the engine finds its gateway (state dir, or its runtime dir)

    def members(self) -> list[Member]:
        raise NotImplementedError

    def gateway(self) -> GatewayFacts:
        raise NotImplementedError

    def restart(self, names: list[str], timeout: float) -> dict[str, str]:
        """Restart these instances and wait until they answer; returns those that did not,
        each with why."""
        raise NotImplementedError

    def loads(self, name: str) -> list[tuple[str, str, str]]:
        """What this instance loads after a (re)start, as (instance, model, keep_alive); the
        first one is what `status` asks it to load to prove it serves."""
        return []

    def address(self, name: str) -> str:
        raise NotImplementedError

    def preload(self, name: str, timeout: float) -> list[str]:
        return probe.preload({name: self.address(name)}, self.loads(name), timeout)

    def log_sources(self, names: list[str]) -> dict[str, Path | list[str]]:
        """Per instance: its log file, or the command that prints its journal."""
        raise NotImplementedError


class UpFleet(Fleet):
    """A fleet `up` started. The supervisor restarts what changed in fleet.json: a restart
    is a new generation of the instance there (Desired.restarted), and releasing an
    instance `up --rolling` holds on its old plan (Desired.released) lets the new one apply."""

    source = "up"

    def __init__(self, home: Path) -> None:
        desired = read_desired(home)
        if desired is None:
            raise UserError(f"no fleet in {home}: start it with `ollama-fleet up`")
        self.home = home
        self.desired = desired
        self.names = [i.name for i in desired.instances]
        self.models = desired.models
        gw = read_gateway(home)
        live = gw is not None and gw.engine is not None and gw.process is not None and gw.process.process()
        self.engine = engine_named(gw.engine) if live and gw and gw.engine else None
        self.drain_home = home

    def members(self) -> list[Member]:
        actual = read_actual(self.home)
        states = actual.instances if actual is not None else {}
        found = []
        for inst in self.desired.instances:
            st = states.get(inst.name)
            record = st.record if st is not None else None
            alive = st is not None and record is not None and record.process() is not None
            found.append(
                Member(
                    name=inst.name,
                    address=inst.address,
                    pin=inst.gpus,
                    pid=record.pid if alive and record else None,
                    started_at=st.started_at if alive and st else None,
                    restarts=st.exits if st else None,
                    devices=st.devices if alive and st else None,
                )
            )
        return found

    def gateway(self) -> GatewayFacts:
        gw = read_gateway(self.home)
        if gw is None or gw.engine is None:
            return GatewayFacts(engine=None, reason=gw.reason if gw else "not started")
        live = gw.process.process() if gw.process else None
        return GatewayFacts(
            engine=gw.engine, listen=gw.listen, url=gw.url, pid=live.pid if live else None, prefix=gw.prefix
        )

    def restart(self, names: list[str], timeout: float) -> dict[str, str]:
        supervisor = live_supervisor(self.home)
        if supervisor is None:
            raise UserError(f"the fleet's supervisor is not running; run `ollama-fleet up` in {self.home}")
        desired = read_desired(self.home) or self.desired
        held = [n for n in names if n in desired.hold]
        self.desired = desired.released(held) if held else desired.restarted(names)
        write_model(self.home / DESIRED, self.desired)
        os.kill(supervisor.pid, signal.SIGHUP)  # it restarts what changed
        subset = self.desired.model_copy(
            update={"instances": tuple(i for i in self.desired.instances if i.name in names)}
        )
        return wait_ready(self.home, subset, timeout, tick=lambda: None).failed

    def address(self, name: str) -> str:
        return next(i.address for i in self.desired.instances if i.name == name)

    def loads(self, name: str) -> list[tuple[str, str, str]]:
        return [job for job in self.desired.loads if job[0] == name]

    def log_sources(self, names: list[str]) -> dict[str, Path | list[str]]:
        return {i.name: i.log for i in self.desired.instances if i.name in names}


class SystemdFleet(Fleet):
    """A fleet install-systemd installed: systemd runs and restarts its units."""

    source = "systemd"

    def __init__(self, root: Path = Path("/")) -> None:
        manifest = read_manifest(root)
        if manifest is None:
            raise UserError("no fleet here: nothing started by `up` and no install-systemd manifest")
        self.manifest = manifest
        self.names = [m.name for m in manifest.instances]
        self.models = manifest.models
        gw = manifest.gateway
        engine = engine_named(gw.engine) if gw else None
        self.engine = engine if engine is not None and engine.drains_installed else None
        self.drain_home = gw.prefix if gw and gw.prefix else Path("/run/ollama-fleet")

    def members(self) -> list[Member]:
        found = []
        for m in self.manifest.instances:
            unit = unit_of(m.name)
            # systemd knows the process and its restarts and tells any user; sockets of
            # another user's processes are root's to see, so the listener is the fallback.
            facts = unit_facts(unit)
            proc = _process(int(facts.get("MainPID") or 0)) or listener(m.port)
            lines = journal_lines(unit) if proc else None
            restarts = facts.get("NRestarts", "")
            found.append(
                Member(
                    name=m.name,
                    address=m.address,
                    pin=m.gpus,
                    pid=proc.pid if proc else None,
                    started_at=proc.create_time() if proc else None,
                    restarts=int(restarts) if restarts.isdigit() else None,
                    devices=_devices(lines),
                )
            )
        return found

    def gateway(self) -> GatewayFacts:
        gw = self.manifest.gateway
        if gw is None:
            return GatewayFacts(engine=None, reason="not installed")
        return GatewayFacts(engine=gw.engine, listen=gw.listen, url=gw.url, prefix=gw.prefix, unit=gw.unit or None)

    def restart(self, names: list[str], timeout: float) -> dict[str, str]:
        from ollama_fleet.processes import find_tool

        Systemctl(find_tool("systemctl"))("restart", *map(unit_of, names))
        return wait_installed({m.name: m.address for m in self.manifest.instances if m.name in names}, timeout)

    def address(self, name: str) -> str:
        return next(m.address for m in self.manifest.instances if m.name == name)

    def loads(self, name: str) -> list[tuple[str, str, str]]:
        if self.manifest.loads:
            return [job for job in self.manifest.loads if job[0] == name]
        # A manifest from before loads were recorded: its placed models, with no keep_alive
        # of their own (the instance's OLLAMA_KEEP_ALIVE, in its env file, applies).
        return [
            (name, model, placed.keep_alive or "") for model, placed in self.models.items() if name in placed.instances
        ]

    def log_sources(self, names: list[str]) -> dict[str, Path | list[str]]:
        return {n: ["journalctl", "-u", unit_of(n), "-o", "cat", "--no-pager"] for n in names}


CRASH_LOOP = 2  # restarts of a unit without an answer that make a crash loop


def restarts_of(name: str) -> int:
    """How often systemd restarted the instance's unit (NRestarts)."""
    restarts = unit_facts(unit_of(name)).get("NRestarts", "")
    return int(restarts) if restarts.isdigit() else 0


def wait_installed(
    pending: dict[str, str],
    timeout: float,
    *,
    versions: Callable[[list[str]], dict[str, str | None]] = probe.versions,
    restarts: Callable[[str], int] = restarts_of,
    explain: Callable[[str], str] = lambda name: journal_tail(unit_of(name)),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Until every instance of an installed fleet (name -> address) answers GET /api/version:
    returns those that did not, each with why and its journal (`explain`). A unit that
    systemd restarted CRASH_LOOP times meanwhile is a crash loop, which ends the wait at once
    instead of at its end (an `ollama` that exits at once restarts every RestartSec=3)."""
    waiting = dict(pending)
    before = {name: restarts(name) for name in waiting}
    looping: dict[str, int] = {}

    def answered() -> bool:
        for (name, _), version in zip(list(waiting.items()), versions(list(waiting.values())).values(), strict=True):
            if version is not None:
                waiting.pop(name)
        looping.update({n: r for n in waiting if (r := restarts(n) - before[n]) >= CRASH_LOOP})
        return not waiting or bool(looping)

    wait_until(answered, timeout, interval=0.2, clock=clock, sleep=sleep)
    if looping:
        return {
            n: f"{n} exited and was restarted {r} times without answering (a crash loop){explain(n)}"
            for n, r in looping.items()
        }
    return {n: f"{n} did not answer GET /api/version within {timeout:g}s{explain(n)}" for n in waiting}


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid) if pid > 0 else None
    except psutil.Error:
        return None


def _devices(lines: list[str] | None) -> list[Device] | None:
    from ollama_fleet import pinning

    return pinning.devices(lines) if lines is not None else None


def locate(state_dir: Path, system_root: Path = Path("/")) -> Fleet:
    """The fleet `up` runs from this state dir, else the one installed with systemd."""
    if read_desired(state_dir) is not None:
        return UpFleet(state_dir)
    if read_manifest(system_root) is not None:
        return SystemdFleet(system_root)
    raise UserError(
        f"no fleet here: nothing started by `up` in {state_dir}, and no install-systemd manifest"
        f" ({MANIFEST}); start one with `ollama-fleet up`"
    )
