"""Views: every report as a rich table or JSON (schema 1, documented in the README): here
those of the commands that change the fleet (gpus, plan, up, install-systemd, bench); those
of what runs now (status, front status, usage) are cli/status_views.py, and the Prometheus
textfile format cli/metrics.py. Only the CLI calls them; they print nothing themselves but
the `print_*` helpers, which write to the CLI's consoles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Column, Table
from rich.text import Text

from ollama_fleet.changes import Change
from ollama_fleet.cli import out
from ollama_fleet.gpus import Discovery
from ollama_fleet.plan import Plan
from ollama_fleet.readiness import Readiness
from ollama_fleet.state import Actual, Desired


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
