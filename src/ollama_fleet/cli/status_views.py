"""The views of what runs now: `status` (GPUs, instances, models, keys, the gateway),
`front status` and `usage`, as rich tables; their JSON is each report's `json_data()`."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Column, Table
from rich.text import Text

from ollama_fleet.cli.views import size
from ollama_fleet.gateway import KeyStats
from ollama_fleet.names import canonical
from ollama_fleet.status import GatewayStatus, StatusReport, expires_in


def _view_table(*columns: Any, title: str) -> Table:
    """status's tables: light borders and single spacing, so a whole row fits 80 columns."""
    from rich import box

    return Table(*columns, title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=0, pad_edge=False)


def _gpus_table(report: StatusReport) -> Table:
    gpus = _view_table("GPU", "name", "memory", "util", "temp", "power", "instance", title="GPUs")
    used_by = {label: i.name for i in report.instances for label in i.gpus}
    for g in report.gpus:
        memory = (
            "-" if g.memory_total is None else f"{(g.memory_used or 0) / 2**30:.1f}/{g.memory_total / 2**30:.0f} GiB"
        )
        gpus.add_row(
            g.label,
            g.name,
            memory,
            "-" if g.utilization is None else f"{g.utilization}%",
            "-" if g.temperature is None else f"{g.temperature}°C",
            "-" if g.power is None else f"{g.power:.0f} W",
            used_by.get(g.label.removeprefix("gpu"), "-"),
        )
    return gpus


def _gateway_line(gw: GatewayStatus) -> Text:
    """What the gateway is doing, in one line."""
    if gw.engine is None:
        return Text(f"gateway: none ({gw.reason})")
    if gw.up:
        queue = "" if gw.queued is None else f", {gw.queued} request(s) queued"
        return Text.assemble("gateway: ", (f"{gw.engine} up", "green"), f", listening on {gw.listen}{queue}")
    return Text.assemble("gateway: ", (f"{gw.engine} DOWN ({gw.error})", "bold red"), f", should listen on {gw.listen}")


def status_view(report: StatusReport) -> Group:
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
    models = _view_table(
        "instance", "model", "VRAM", "unloads in", *(["placement"] if placement else []), title="models"
    )
    for i in report.instances:
        if i.healthy:
            health = Text(f"ok {i.latency_ms:.0f}ms", style="green")
        else:  # it does not answer; it answers but cannot serve; or it runs on devices not its own
            health = Text("DOWN" if not i.version else "FAILING" if i.failing else "WRONG GPU", style="bold red")
            problems.append(Text(f"{i.name}: {i.error}", style="red"))
        # ✓: Ollama's own log says it runs on exactly these GPUs.
        pinned = ",".join(i.gpus) + (" ✓" if i.healthy and i.devices else "")
        uptime = _duration(i.uptime_s) + (f" ↻{i.restarts}" if i.restarts else "")
        instances.add_row(
            i.name,
            pinned,
            i.address.rsplit(":", 1)[-1],
            str(i.pid or "-"),
            uptime,
            health,
            *([i.version or "-"] if len(versions) > 1 else []),
            *([_server(i.gateway)] if queues else []),
            style=None if i.healthy else "red",
        )
        for m in i.models:
            left = expires_in(m.expires_at)
            stray = canonical(m.name) in i.stray
            mark = Text("stray: placed elsewhere", style="bold yellow") if stray else ("placed" if i.placed else "")
            models.add_row(
                i.name,
                m.name,
                size(m.size_vram),
                "never" if left is None else _duration(left),
                *([mark] if placement else []),
            )
        for name in i.missing:
            models.add_row(i.name, name, "-", "-", Text("missing: placed here, not loaded", style="bold yellow"))
    gw = report.gateway
    parts: list[Any] = [_gpus_table(report)] if report.gpus else []
    parts += [instances, *problems]
    parts += [models] if models.rows else []
    parts += [keys_table(gw.keys)] if gw.keys else []
    notes = [Text(f"note: {gw.note}", style="yellow")] if gw.note else []
    return Group(*parts, _gateway_line(gw), *notes)


def keys_table(keys: dict[str, Any]) -> Table:
    """Per key name (never the key): its requests and what they do now."""
    table = _view_table(
        "key",
        *(Column(h, justify="right") for h in ("requests", "in flight", "queued", "429s", "bytes out")),
        title="keys",
    )
    for name, k in sorted(keys.items()):
        table.add_row(name, str(k.requests), str(k.in_flight), str(k.queued), str(k.rejected), str(k.bytes_out))
    return table


def usage_table(keys: dict[str, dict[str, Any]], since: str) -> Table:
    """`usage`: per key name, from the gateway's log."""

    def ms(values: dict[str, float | None]) -> str:
        return "-" if values["p50"] is None else f"{values['p50']:.0f} / {values['p99']:.0f}"

    table = _view_table(
        "key",
        *(Column(h, justify="right") for h in ("requests", "errors", "429s", "bytes out")),
        Column("queue ms p50/p99", justify="right"),
        Column("TTFB ms p50/p99", justify="right"),
        title=f"usage, last {since}",
    )
    for name, u in sorted(keys.items()):
        table.add_row(
            name, str(u["requests"]), str(u["errors"]), str(u["rejected"]), str(u["bytes_out"]),
            ms(u["queue_ms"]), ms(u["ttfb_ms"]),
        )  # fmt: skip
    return table


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


def front_view(data: dict[str, Any]) -> Group:
    """`front status`: one row per box."""
    table = _view_table(
        "box",
        "address",
        "state",
        Column("slots", justify="right"),
        Column("in flight", justify="right"),
        Column("queued", justify="right"),
        "models",
        title=f"front {data['url']}",
    )
    for box in data["boxes"]:
        style = "green" if box["state"] == "UP" else "yellow" if box["state"] in ("DRAIN", "MAINT") else "red"
        models = ", ".join(f"{m} ({n})" for m, n in box["models"].items()) or "any"
        table.add_row(
            box["name"],
            box["address"] or "-",
            Text(box["state"], style=style),
            str(box["slots"] or "-"),
            str(box["in_flight"]),
            str(box["queued"]),
            models,
        )
    queued = "-" if data["queued"] is None else str(data["queued"])
    keys = {name: KeyStats(**counts) for name, counts in data["keys"].items()}
    return Group(table, Text(f"queued at the front for any box: {queued}"), *([keys_table(keys)] if keys else []))
