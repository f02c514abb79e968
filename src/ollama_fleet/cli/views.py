"""Views: every report as a rich table or JSON (schema 1, documented in the README); the
Prometheus textfile format is cli/metrics.py. Only the CLI calls them; they print nothing
themselves but the `print_*` helpers, which write to the CLI's consoles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Column, Table
from rich.text import Text

from ollama_fleet.changes import Change
from ollama_fleet.cli import out
from ollama_fleet.gateway import KeyStats
from ollama_fleet.gpus import Discovery
from ollama_fleet.names import canonical
from ollama_fleet.plan import Plan
from ollama_fleet.readiness import Readiness
from ollama_fleet.state import Actual, Desired
from ollama_fleet.status import StatusReport, expires_in


def print_json(data: Any) -> None:
    # Plain print, not rich: JSON must reach pipes byte for byte, without wrapping.
    print(json.dumps(data, indent=2))


def size(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f} GiB"


def gpus_table(found: Discovery) -> Table:
    table = Table("GPU", "UUID", "name", "memory used / total", "util", "PCI bus")
    for g in found.gpus:
        table.add_row(
            g.label,
            Text(g.uuid or "-", overflow="fold"),
            g.name,
            f"{size(g.memory_used)} / {size(g.memory_total)}",
            "-" if g.utilization is None else f"{g.utilization}%",
            g.pci_bus_id or "-",
        )
    return table


def plan_view(result: Plan) -> list[Any]:
    md = result.models_dir
    state = Text(f"owner {md.owner}") if md.exists else Text.assemble(("missing", "red"), ": `up` will refuse to start")
    table = Table("instance", "GPUs", "address", "CUDA_VISIBLE_DEVICES")
    for inst in result.instances:
        table.add_row(
            inst.name,
            ",".join(g.number for g in inst.gpus),
            inst.address,
            Text(inst.env["CUDA_VISIBLE_DEVICES"], overflow="fold"),
        )
    # What every instance gets alike (the writer alone prunes: it lacks OLLAMA_NOPRUNE).
    shared = {
        k: v
        for k, v in result.instances[0].env.items()
        if k not in ("CUDA_VISIBLE_DEVICES", "OLLAMA_HOST") and all(i.env.get(k) == v for i in result.instances)
    }
    # Printed one by one, soft-wrapped: the env line is copied and pasted, never cut.
    return [
        Text.assemble(f"models dir: {md.path} (", state, ")"),
        table,
        Text(f"logs: {result.instances[0].log.parent}/<instance>.log"),
        Text("every instance also gets: " + " ".join(f"{k}={v}" for k, v in shared.items())),
    ]


_COLORS = ["cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta"]


def echo(name: str, line: str) -> None:
    color = _COLORS[sum(map(ord, name)) % len(_COLORS)]
    out().print(Text.assemble((f"{name:>9} | ", color), line), soft_wrap=True)


def up_table(new: Desired, todo: list[Change], ready: Readiness, actual: Actual | None) -> Table:
    action = {c.name: c.action for c in todo}
    label = {"start": "started", "keep": "unchanged", "restart": "restarted", "roll": "rolling"}
    table = Table("instance", "GPUs", "address", "pid", "state", "version")
    states = actual.instances if actual else {}
    for inst in new.instances:
        st = states.get(inst.name)
        failed = inst.name in ready.failed
        table.add_row(
            inst.name,
            ",".join(g.number for g in inst.gpus),
            inst.address,
            str(st.pid) if st and st.pid else "-",
            Text("failed", style="bold red") if failed else label.get(action.get(inst.name, ""), "?"),
            ready.versions.get(inst.name, "-"),
        )
    return table


def _view_table(*columns: Any, title: str) -> Table:
    """status's tables: light borders and single spacing, so a whole row fits 80 columns."""
    from rich import box

    return Table(*columns, title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=0, pad_edge=False)


def status_view(report: StatusReport) -> Group:
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
        else:  # it answers, but on devices not its own (its log says which), or it does not answer
            health = Text("WRONG GPU" if i.version else "DOWN", style="bold red")
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
    if gw.engine is None:
        gateway = Text(f"gateway: none ({gw.reason})")
    elif gw.up:
        queue = "" if gw.queued is None else f", {gw.queued} request(s) queued"
        gateway = Text.assemble("gateway: ", (f"{gw.engine} up", "green"), f", listening on {gw.listen}{queue}")
    else:
        gateway = Text.assemble(
            "gateway: ", (f"{gw.engine} DOWN ({gw.error})", "bold red"), f", should listen on {gw.listen}"
        )
    parts: list[Any] = [gpus] if report.gpus else []
    parts += [instances, *problems]
    parts += [models] if models.rows else []
    parts += [keys_table(gw.keys)] if gw.keys else []
    notes = [Text(f"note: {gw.note}", style="yellow")] if gw.note else []
    return Group(*parts, gateway, *notes)


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


def print_bench(s: dict[str, Any]) -> None:
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
    out().print(table)
    if s["errors"]:
        out().print("errors: " + ", ".join(f"{k}: {v}" for k, v in s["errors"].items()))
    split = s["split"]
    if list(split) != ["-"]:
        out().print("split per instance: " + ", ".join(f"{k} {v}" for k, v in split.items()), soft_wrap=True)


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


def install_lines(done: Any, dry_run: bool) -> list[str]:
    """What install-systemd says it did (an `actions.install.Installed`)."""
    from ollama_fleet.systemd import TARGET

    report = done.report
    if dry_run:
        return [
            f"dry run: {len(report.written)} file(s) would change, {len(report.removed)} removed, "
            f"{len(report.unchanged)} unchanged; nothing written"
        ]
    lines = [f"wrote   {path}" for path in report.written] + [f"removed {path}" for path in report.removed]
    if not report.written and not report.removed:
        lines.append(f"unchanged: {len(report.unchanged)} file(s) already as planned under {done.root}")
    if done.enabled:
        lines += [
            f"{verb}: {', '.join(names)}"
            for verb, names in (
                ("started", report.started),
                ("restarted", report.restarted),
                ("stopped", report.stopped),
            )
            if names
        ]
    lines += report.notes
    if not done.enabled:
        what = "staged" if done.root != Path("/") else "written"
        return [*lines, f"{what}; to start: systemctl daemon-reload && systemctl enable --now {TARGET}"]
    lines.append(f"enabled {TARGET}; logs: journalctl -u 'ollama-fleet@*'")
    if done.answered:
        lines.append(
            f"all {done.instances} instance(s) answer on their own GPUs" + (", and the gateway" if done.gateway else "")
        )
    return lines
