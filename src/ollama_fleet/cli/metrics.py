"""The Prometheus textfile format (node-exporter's) for `status` and `front status`: one
HELP/TYPE block per metric, every gauge named in GAUGES."""

from __future__ import annotations

from typing import Any

from ollama_fleet.gateway import KeyStats
from ollama_fleet.status import StatusReport


def key_samples(sample: Any, keys: dict[str, Any]) -> None:
    for name, k in keys.items():
        sample("key_requests", k.requests, key=name)
        sample("key_in_flight", k.in_flight, key=name)
        sample("key_queued", k.queued, key=name)
        sample("key_rejected", k.rejected, key=name)
        sample("key_bytes_out", k.bytes_out, key=name)


def _labels(**labels: object) -> str:
    def escape(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}" if labels else ""


def _number(value: float) -> str:
    """Exact: byte counts stay integers, not 5.36871e+08."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


# Every gauge `status --format prometheus` writes, with its help text (all prefixed ollama_fleet_).
GAUGES = {
    "up": "1 when every instance and the gateway are healthy",
    "gpu_memory_used_bytes": "GPU memory in use",
    "gpu_memory_total_bytes": "GPU memory in all",
    "gpu_utilization_ratio": "GPU busy fraction over NVML's last sample period",
    "gpu_temperature_celsius": "GPU temperature",
    "gpu_power_watts": "GPU power draw",
    "instance_up": "1 when the instance answers GET /api/version",
    "instance_probe_seconds": "GET /api/version round trip",
    "instance_uptime_seconds": "seconds since the instance process started",
    "instance_models_loaded": "models the instance holds (GET /api/ps)",
    "instance_models_missing": "models placed on the instance that it does not hold",
    "instance_models_stray": "models the instance holds that are placed elsewhere",
    "instance_queued": "requests waiting at the gateway for this instance (HAProxy)",
    "instance_in_flight": "requests the instance serves now, as the gateway counts them (HAProxy)",
    "model_vram_bytes": "GPU memory a loaded model holds",
    "model_size_bytes": "memory a loaded model holds in all",
    "gateway_up": "1 when the gateway answers",
    "gateway_queued": "requests waiting at the gateway for a free instance (HAProxy)",
    "key_requests": "requests with this key name since the gateway (re)started",
    "key_in_flight": "requests with this key name being answered",
    "key_queued": "requests with this key name waiting at the queue",
    "key_rejected": "requests with this key name answered 429 by a limit",
    "key_bytes_out": "bytes sent for this key name's finished requests",
    "front_up": "1 when the front runs and every box is UP",
    "front_queued": "requests waiting at the front for any box with a free slot",
    "front_box_up": "1 when the front sees the box UP",
    "front_box_slots": "the box's slots: the most requests the front sends it at once",
    "front_box_in_flight": "requests the box serves for the front now",
    "front_box_queued": "requests waiting at the front for this very box",
}


class _Samples:
    """Samples of the node-exporter textfile format, grouped by metric (one HELP/TYPE each)."""

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = {}

    def __call__(self, metric: str, value: float | int | bool | None, **labels: object) -> None:
        if value is not None:
            self.found.setdefault(metric, []).append(f"ollama_fleet_{metric}{_labels(**labels)} {_number(value)}")

    def text(self) -> str:
        lines = []
        for metric, found in self.found.items():
            lines += [f"# HELP ollama_fleet_{metric} {GAUGES[metric]}", f"# TYPE ollama_fleet_{metric} gauge", *found]
        return "\n".join(lines) + "\n"


def prometheus(report: StatusReport) -> str:
    """The node-exporter textfile format: one HELP/TYPE block per metric, one sample each."""
    sample = _Samples()

    def ratio(value: float | None, scale: float) -> float | None:
        return None if value is None else value / scale

    sample("up", report.healthy)
    for g in report.gpus:
        labels = dict(gpu=g.label, uuid=g.uuid or "", name=g.name)
        sample("gpu_memory_used_bytes", g.memory_used, **labels)
        sample("gpu_memory_total_bytes", g.memory_total, **labels)
        sample("gpu_utilization_ratio", ratio(g.utilization, 100), **labels)
        sample("gpu_temperature_celsius", g.temperature, **labels)
        sample("gpu_power_watts", g.power, **labels)
    for i in report.instances:
        labels = dict(instance=i.name, address=i.address)
        sample("instance_up", i.healthy, **labels)
        sample("instance_probe_seconds", ratio(i.latency_ms, 1000), **labels)
        sample("instance_uptime_seconds", i.uptime_s, **labels)
        sample("instance_models_loaded", len(i.models), **labels)
        sample("instance_models_missing", len(i.missing) if i.healthy and i.placed else None, **labels)
        sample("instance_models_stray", len(i.stray) if i.healthy else None, **labels)
        sample("instance_queued", i.gateway.queued if i.gateway else None, **labels)
        sample("instance_in_flight", i.gateway.in_flight if i.gateway else None, **labels)
        for m in i.models:
            sample("model_vram_bytes", m.size_vram, instance=i.name, model=m.name)
            sample("model_size_bytes", m.size, instance=i.name, model=m.name)
    if report.gateway.engine is not None:
        labels = dict(engine=report.gateway.engine, listen=report.gateway.listen or "")
        sample("gateway_up", report.gateway.up, **labels)
        sample("gateway_queued", report.gateway.queued, **labels)
    key_samples(sample, report.gateway.keys)
    return sample.text()


def front_prometheus(data: dict[str, Any]) -> str:
    """`front status --format prometheus`, from the status's JSON data."""
    sample = _Samples()
    sample("front_up", data["healthy"])
    sample("front_queued", data["queued"])
    for box in data["boxes"]:
        labels = dict(box=box["name"], address=box["address"] or "")
        sample("front_box_up", box["state"] == "UP", **labels)
        sample("front_box_slots", box["slots"], **labels)
        sample("front_box_in_flight", box["in_flight"], **labels)
        sample("front_box_queued", box["queued"], **labels)
    key_samples(sample, {name: KeyStats(**counts) for name, counts in data["keys"].items()})
    return sample.text()
