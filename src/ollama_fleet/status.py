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

import psutil
from pydantic import BaseModel, Field, computed_field

from ollama_fleet import pinning, probe, systemd
from ollama_fleet.config import Placement
from ollama_fleet.names import canonical
from ollama_fleet.errors import UserError
from ollama_fleet.gateway import ServerStats, engine_named
from ollama_fleet.gpus import Gpu, NvmlUnavailable, discover
from ollama_fleet.pinning import Device
from ollama_fleet.plan import GpuRef
from ollama_fleet.state import read_actual, read_desired, read_gateway
from ollama_fleet.supervisor import foreign_ollama, listener

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

    def json_data(self) -> dict:
        data = self.model_dump(mode="json")
        data = {"schema": data.pop("schema_"), **data}
        return data


class _Member(BaseModel):
    name: str
    address: str
    port: int
    pin: tuple[GpuRef, ...]
    pid: int | None = None
    started_at: float | None = None
    restarts: int | None = None
    devices: list[Device] | None = None


def _placement(models: dict[str, Placement]) -> dict[str, list[str]]:
    """instance -> the models placed on it."""
    placed: dict[str, list[str]] = {}
    for model, where in models.items():
        for name in where.instances:
            placed.setdefault(name, []).append(model)
    return placed


def _from_up(state_dir: Path) -> tuple[list[_Member], GatewayStatus, dict[str, Placement]] | None:
    desired = read_desired(state_dir)
    if desired is None:
        return None
    actual = read_actual(state_dir)
    states = actual.instances if actual is not None else {}
    members = []
    for inst in desired.instances:
        st = states.get(inst.name)
        record = st.record if st is not None else None
        alive = record is not None and record.process() is not None
        members.append(_Member(
            name=inst.name, address=inst.address, port=inst.port, pin=inst.gpus,
            pid=record.pid if alive and record else None, started_at=st.started_at if alive and st else None,
            restarts=st.exits if st else None, devices=st.devices if alive and st else None,
        ))
    gw = read_gateway(state_dir)
    if gw is None or gw.engine is None:
        gateway = GatewayStatus(engine=None, reason=gw.reason if gw else "not started")
    else:
        live = gw.process.process() if gw.process else None
        gateway = GatewayStatus(
            engine=gw.engine, listen=gw.listen, url=gw.url, pid=live.pid if live else None, prefix=gw.prefix
        )
    return members, gateway, desired.models


def _from_systemd(root: Path) -> tuple[list[_Member], GatewayStatus, dict[str, Placement]] | None:
    manifest = systemd.read_manifest(root)
    if manifest is None:
        return None
    members = []
    for m in manifest.instances:
        unit = systemd.unit_of(m.name)
        # systemd knows the process and its restarts and tells any user; sockets of another
        # user's processes are root's to see, so the listener is only the fallback.
        facts = systemd.unit_facts(unit)
        proc = _process(int(facts.get("MainPID") or 0)) or listener(m.port)
        lines = systemd.journal_lines(unit) if proc else None
        restarts = facts.get("NRestarts", "")
        members.append(_Member(
            name=m.name, address=m.address, port=m.port, pin=m.gpus,
            pid=proc.pid if proc else None, started_at=proc.create_time() if proc else None,
            restarts=int(restarts) if restarts.isdigit() else None,
            devices=pinning.devices(lines) if lines is not None else None,
        ))
    gw = manifest.gateway
    gateway = (
        GatewayStatus(engine=gw.engine, listen=gw.listen, url=gw.url, prefix=gw.prefix)
        if gw else GatewayStatus(engine=None, reason="not installed")
    )
    return members, gateway, manifest.models


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid) if pid > 0 else None
    except psutil.Error:
        return None


def _gpus() -> tuple[list[Gpu], NvmlStatus]:
    try:
        return discover(), NvmlStatus(available=True)
    except NvmlUnavailable as exc:
        return [], NvmlStatus(available=False, note=f"{exc}: GPU facts are missing")


def gather(state_dir: Path, timeout: float, system_root: Path = Path("/")) -> StatusReport:
    """The report, or UserError (exit 1) when no fleet was ever started here."""
    found = _from_up(state_dir)
    source: Literal["up", "systemd"] = "up"
    if found is None:
        found, source = _from_systemd(system_root), "systemd"
    if found is None:
        raise UserError(
            f"no fleet here: nothing started by `up` in {state_dir}, and no install-systemd manifest"
            f" ({systemd.MANIFEST}); start one with `ollama-fleet up`"
        )
    members, gateway, models = found
    placed = _placement(models)
    gpus, nvml = _gpus()
    facts, gateway_error = probe.gather_facts([m.address for m in members], gateway.url, timeout)
    try:
        counts = engine_named(gateway.engine).stats(gateway.prefix) if gateway.engine and gateway.prefix else None
    except UserError as exc:  # its counts are root's to read: say so instead of leaving them out
        counts, gateway.note = None, str(exc)
    servers = counts.servers if counts else {}
    gateway.queued = counts.queued if counts else None
    now = time.time()
    instances = []
    for m in members:
        f = facts[m.address]
        # On a GPU not its own, or the CPU: answering is not healthy.
        wrong = pinning.problem(m.pin, m.devices) if m.devices is not None else None
        instances.append(InstanceStatus(
            name=m.name, address=m.address, gpus=[g.label for g in m.pin], pid=m.pid, restarts=m.restarts,
            uptime_s=round(now - m.started_at, 1) if m.started_at else None,
            healthy=f.version is not None and wrong is None,
            latency_ms=round(f.latency_ms, 2) if f.latency_ms is not None else None,
            version=f.version, error=f.error if f.version is None else wrong,
            models=[_model(raw) for raw in f.models],
            devices=[d.label for d in m.devices] if m.devices is not None else None,
            gateway=servers.get(m.name),
            placed=placed.get(m.name, []),
        ))
        inst = instances[-1]
        if inst.healthy:
            held = {canonical(x.name) for x in inst.models}
            inst.missing = [x for x in inst.placed if x not in held]
            inst.stray = sorted(x for x in held if x in models and x not in inst.placed)
    if gateway.engine is not None:
        gateway.up = gateway_error is None
        gateway.error = gateway_error
    others = foreign_ollama({m.pid for m in members if m.pid})
    return StatusReport(source=source, nvml=nvml, gpus=gpus, instances=instances, gateway=gateway, others=others)


def _model(raw: dict) -> LoadedModel:
    return LoadedModel(
        name=str(raw.get("name") or raw.get("model") or "?"),
        size=raw.get("size"), size_vram=raw.get("size_vram"), expires_at=raw.get("expires_at"),
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


# ------------------------------------------------------------------ Prometheus textfile


def _labels(**labels: object) -> str:
    def escape(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}" if labels else ""


def _number(value: float) -> str:
    """Exact: byte counts stay integers, not 5.36871e+08."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def prometheus(report: StatusReport) -> str:
    """The node-exporter textfile format: one HELP/TYPE block per metric, one sample each."""
    metrics: dict[str, tuple[str, list[str]]] = {}

    def sample(metric: str, help_: str, value: float | int | bool | None, **labels: object) -> None:
        if value is None:
            return
        metrics.setdefault(metric, (help_, []))[1].append(f"ollama_fleet_{metric}{_labels(**labels)} {_number(value)}")

    sample("up", "1 when every instance and the gateway are healthy", report.healthy)
    for g in report.gpus:
        labels = dict(gpu=g.label, uuid=g.uuid or "", name=g.name)
        sample("gpu_memory_used_bytes", "GPU memory in use", g.memory_used, **labels)
        sample("gpu_memory_total_bytes", "GPU memory in all", g.memory_total, **labels)
        sample("gpu_utilization_ratio", "GPU busy fraction over NVML's last sample period",
               None if g.utilization is None else g.utilization / 100, **labels)
        sample("gpu_temperature_celsius", "GPU temperature", g.temperature, **labels)
        sample("gpu_power_watts", "GPU power draw", g.power, **labels)
    for i in report.instances:
        labels = dict(instance=i.name, address=i.address)
        sample("instance_up", "1 when the instance answers GET /api/version", i.healthy, **labels)
        sample("instance_probe_seconds", "GET /api/version round trip",
               None if i.latency_ms is None else i.latency_ms / 1000, **labels)
        sample("instance_uptime_seconds", "seconds since the instance process started", i.uptime_s, **labels)
        sample("instance_models_loaded", "models the instance holds (GET /api/ps)", len(i.models), **labels)
        if i.healthy and i.placed:
            sample("instance_models_missing", "models placed on the instance that it does not hold", len(i.missing), **labels)
        if i.healthy:
            sample("instance_models_stray", "models the instance holds that are placed elsewhere", len(i.stray), **labels)
        if i.gateway is not None:
            sample("instance_queued", "requests waiting at the gateway for this instance (HAProxy)",
                   i.gateway.queued, **labels)
            sample("instance_in_flight", "requests the instance serves now, as the gateway counts them (HAProxy)",
                   i.gateway.in_flight, **labels)
        for m in i.models:
            sample("model_vram_bytes", "GPU memory a loaded model holds", m.size_vram, instance=i.name, model=m.name)
            sample("model_size_bytes", "memory a loaded model holds in all", m.size, instance=i.name, model=m.name)
    if report.gateway.engine is not None:
        labels = dict(engine=report.gateway.engine, listen=report.gateway.listen or "")
        sample("gateway_up", "1 when the gateway answers", report.gateway.up, **labels)
        sample("gateway_queued", "requests waiting at the gateway for a free instance (HAProxy)",
               report.gateway.queued, **labels)
    lines = []
    for metric, (help_, samples) in metrics.items():
        lines += [f"# HELP ollama_fleet_{metric} {help_}", f"# TYPE ollama_fleet_{metric} gauge", *samples]
    return "\n".join(lines) + "\n"
