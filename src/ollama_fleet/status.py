"""`status`: GPU, process and HTTP facts about the running fleet, gathered into one report.

The fleet is the one `up` recorded in the state dir, else the one `install-systemd` recorded
in its manifest. Instance processes come from the supervisor's records (for `up`) or from
whoever listens on the instance's port (for systemd). Every HTTP probe runs at once.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, computed_field

from ollama_fleet import pinning, probe
from ollama_fleet.errors import UserError
from ollama_fleet.fleet import locate
from ollama_fleet.gateway import KeyStats, ServerStats, engine_named
from ollama_fleet.gpus import Gpu, NvmlUnavailable, discover
from ollama_fleet.names import canonical
from ollama_fleet.processes import foreign_ollama
from ollama_fleet.values import Placement

SCHEMA = 1


class LoadedModel(BaseModel):
    name: str
    size: int | None = None  # bytes, in all
    size_vram: int | None = None  # bytes on the GPU
    expires_at: str | None = None  # RFC 3339, as Ollama says it


class InstanceStatus(BaseModel):
    name: str
    address: str
    gpus: list[str]  # labels: "0", "0-mig1"
    pid: int | None = None
    uptime_s: float | None = None
    restarts: int | None = None  # exits the supervisor restarted it after (a fleet started by `up`)
    healthy: bool = False
    latency_ms: float | None = None
    version: str | None = None
    error: str | None = None
    # It answers, but cannot serve: what it answered when asked to load its first model
    # (a GPU whose memory another process took answers 500 at once), or the gateway took
    # it out of rotation (its health check, which loads that model, failed).
    failing: str | None = None
    models: list[LoadedModel] = []
    # The devices Ollama said this run uses ("inference compute" in its log); None: unknown.
    devices: list[str] | None = None
    # What the gateway itself knows of this instance (HAProxy): UP/DOWN/DRAIN, queued, in flight.
    gateway: ServerStats | None = None
    # Placement: the models this instance should hold, those of them it does not hold now,
    # and those it holds although they are placed elsewhere.
    placed: list[str] = []
    missing: list[str] = []
    stray: list[str] = []


class GatewayStatus(BaseModel):
    engine: str | None  # None: the fleet runs without a gateway
    prefix: Path | None = Field(None, exclude=True)  # where its runtime files are (admin socket)
    listen: str | None = None
    url: str | None = None
    pid: int | None = None
    up: bool = False
    error: str | None = None
    reason: str | None = None  # why there is no gateway
    queued: int | None = None  # requests waiting at the gateway for a free instance (HAProxy)
    keys: dict[str, KeyStats] = {}  # per key name (HAProxy with named keys)
    note: str | None = None  # why its own counts are missing (no right to read them)


class NvmlStatus(BaseModel):
    available: bool
    note: str | None = None


class StatusReport(BaseModel):
    schema_: int = SCHEMA
    source: Literal["up", "systemd"]
    nvml: NvmlStatus
    gpus: list[Gpu]
    instances: list[InstanceStatus]
    gateway: GatewayStatus
    # `ollama serve` processes the fleet did not start (a stock ollama.service): they may
    # hold GPU memory the instances need.
    others: list[str] = []

    @computed_field  # type: ignore[prop-decorator]
    @property
    def healthy(self) -> bool:
        gateway_ok = self.gateway.engine is None or self.gateway.up
        return gateway_ok and all(i.healthy for i in self.instances)

    @property
    def problems(self) -> list[str]:
        """Why it is not healthy, a line each."""
        found = [f"{i.name}: {i.error or 'not healthy'}" for i in self.instances if not i.healthy]
        if self.gateway.engine is not None and not self.gateway.up:
            found.append(f"gateway: {self.gateway.engine} does not answer ({self.gateway.error})")
        return found

    def json_data(self) -> dict:
        data = self.model_dump(mode="json")
        data = {"schema": data.pop("schema_"), **data}
        return data


def _placement(models: dict[str, Placement]) -> dict[str, list[str]]:
    """instance -> the models placed on it."""
    placed: dict[str, list[str]] = {}
    for model, where in models.items():
        for name in where.instances:
            placed.setdefault(name, []).append(model)
    return placed


def _gpus() -> tuple[list[Gpu], NvmlStatus]:
    try:
        return discover(), NvmlStatus(available=True)
    except NvmlUnavailable as exc:
        return [], NvmlStatus(available=False, note=f"{exc}: GPU facts are missing")


def gather(state_dir: Path, timeout: float, system_root: Path = Path("/")) -> StatusReport:
    """The report, or UserError (exit 1) when no fleet was ever started here."""
    fleet = locate(state_dir, system_root)
    members = fleet.members()
    facts = fleet.gateway()
    gateway = GatewayStatus(
        engine=facts.engine, reason=facts.reason, listen=facts.listen, url=facts.url, pid=facts.pid, prefix=facts.prefix
    )
    placed = _placement(fleet.models)
    gpus, nvml = _gpus()
    # Each instance proves it serves by loading its first model (a no-op while it is loaded),
    # with the keep-alive `up` gave it: the request the gateway's health check sends.
    checks = {m.address: job[1:] for m in members for job in fleet.loads(m.name)[:1]}
    answers, gateway_error = probe.gather_facts([m.address for m in members], gateway.url, timeout, checks)
    try:
        counts = engine_named(gateway.engine).stats(gateway.prefix) if gateway.engine and gateway.prefix else None
    except UserError as exc:  # its counts are root's to read: say so instead of leaving them out
        counts, gateway.note = None, str(exc)
    servers = counts.servers if counts else {}
    gateway.queued = counts.queued if counts else None
    gateway.keys = counts.keys if counts else {}
    now = time.time()
    instances = []
    for m in members:
        f = answers[m.address]
        # On a GPU not its own, or the CPU: answering is not healthy.
        wrong = pinning.problem(m.pin, m.devices) if m.devices is not None else None
        server = servers.get(m.name)
        taken_out = server is not None and server.state.startswith("DOWN")
        failing = f.cannot_serve or (
            f"the gateway took it out of rotation ({server.check or 'its health check failed'})"
            if taken_out and server
            else None
        )
        inst = InstanceStatus(
            name=m.name,
            address=m.address,
            gpus=[g.number for g in m.pin],
            pid=m.pid,
            restarts=m.restarts,
            uptime_s=round(now - m.started_at, 1) if m.started_at else None,
            healthy=f.version is not None and wrong is None and failing is None,
            latency_ms=round(f.latency_ms, 2) if f.latency_ms is not None else None,
            version=f.version,
            error=f.error if f.version is None else wrong or failing,
            failing=failing if f.version is not None and wrong is None else None,
            models=[_model(raw) for raw in f.models],
            devices=[d.label for d in m.devices] if m.devices is not None else None,
            gateway=server,
            placed=placed.get(m.name, []),
        )
        if inst.healthy:
            held = {canonical(x.name) for x in inst.models}
            inst.missing = [x for x in inst.placed if x not in held]
            inst.stray = sorted(x for x in held if x in fleet.models and x not in inst.placed)
        instances.append(inst)
    if gateway.engine is not None:
        gateway.up = gateway_error is None
        gateway.error = gateway_error
    others = foreign_ollama({m.pid for m in members if m.pid})
    return StatusReport(source=fleet.source, nvml=nvml, gpus=gpus, instances=instances, gateway=gateway, others=others)


def _model(raw: dict) -> LoadedModel:
    return LoadedModel(
        name=str(raw.get("name") or raw.get("model") or "?"),
        size=raw.get("size"),
        size_vram=raw.get("size_vram"),
        expires_at=raw.get("expires_at"),
    )


def parse_rfc3339(text: str) -> datetime | None:
    """Go's RFC 3339 with nanoseconds (`2026-11-29T10:00:00.123456789+01:00`, trailing zeros
    dropped, so 1 to 9 digits): Python 3.10's fromisoformat reads only 3 or 6, so the
    fraction is cut or padded to 6 first."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if match is None:
        return None
    head, fraction, offset = match.groups()
    micro = "." + (fraction or "")[:6].ljust(6, "0")
    try:
        return datetime.fromisoformat(head + micro + ("+00:00" if offset == "Z" else offset))
    except ValueError:
        return None


def expires_in(expires_at: str | None, now: datetime | None = None) -> float | None:
    """Seconds until Ollama unloads the model; None when unknown or kept forever."""
    if not expires_at:
        return None
    when = parse_rfc3339(expires_at)
    if when is None:
        return None
    if when.year > 2200:  # keep_alive -1: Ollama reports a date centuries away
        return None
    return (when - (now or datetime.now(when.tzinfo))).total_seconds()
