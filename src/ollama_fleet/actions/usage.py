"""`usage`: the gateway's log summarised per key name (HAProxy engine).

HAProxy writes one JSON line per request (`log-format` in templates/haproxy/haproxy.cfg.j2):
under `up` into `<state_dir>/gateway/access.log` (HAProxy runs in the foreground there, its
stdout that file: `log stdout` writes nothing under `-D`), under systemd into the journal of
its unit. Each line names the key's name, never the key.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_fleet.errors import BadInput, UserError
from ollama_fleet.systemctl import journal_since

ACCESS_LOG = "access.log"
_SINCE = re.compile(r"(\d+)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_seconds(text: str) -> int:
    match = _SINCE.fullmatch(text.strip())
    if not match:
        raise BadInput(f"since: expected a duration like 30m, 24h or 7d (got {text[:20]!r})")
    return int(match[1]) * _SECONDS[match[2]]


@dataclass
class KeyUsage:
    requests: int = 0
    errors: int = 0  # 5xx answers, and requests that got no answer
    rejected: int = 0  # 429: over a limit
    bytes_out: int = 0
    queue_ms: list[int] = field(default_factory=list)  # time waiting for a slot, answered requests
    ttfb_ms: list[int] = field(default_factory=list)  # until the answer's first byte

    def add(self, line: dict[str, Any]) -> None:
        self.requests += 1
        status = int(line.get("status", -1))
        self.rejected += status == 429
        self.errors += status >= 500 or status < 0
        self.bytes_out += max(0, int(line.get("bytes", 0)))
        if int(line.get("queue_ms", -1)) >= 0:
            self.queue_ms.append(int(line["queue_ms"]))
        if int(line.get("ttfb_ms", -1)) >= 0:
            self.ttfb_ms.append(int(line["ttfb_ms"]))

    def json_data(self) -> dict[str, Any]:
        from ollama_fleet.bench import quantile

        def q(values: list[int], p: float) -> float | None:
            return round(quantile([float(v) for v in values], p), 1) if values else None

        return {
            "requests": self.requests,
            "errors": self.errors,
            "rejected": self.rejected,
            "bytes_out": self.bytes_out,
            "queue_ms": {"p50": q(self.queue_ms, 0.5), "p99": q(self.queue_ms, 0.99)},
            "ttfb_ms": {"p50": q(self.ttfb_ms, 0.5), "p99": q(self.ttfb_ms, 0.99)},
        }


def summarise(lines: list[str], since: int, now: float | None = None) -> dict[str, KeyUsage]:
    """Per key name ("-": requests without a named key), the requests logged in the last
    `since` seconds. Lines that are not the fleet's JSON (HAProxy's own notices) are skipped."""
    start = (now if now is not None else time.time()) - since
    found: dict[str, KeyUsage] = {}
    for raw in lines:
        text = raw.strip()
        if not text.startswith("{"):
            continue
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if not isinstance(line, dict) or float(line.get("t", 0)) < start:
            continue
        found.setdefault(str(line.get("key", "-")), KeyUsage()).add(line)
    return found


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UserError(f"cannot read the gateway's log {path} ({exc.strerror})") from None


def log_lines(state_dir: Path, since: int) -> list[str]:
    """The gateway's log: `up`'s access.log, else the journal of the installed gateway's unit."""
    from ollama_fleet.fleet import locate
    from ollama_fleet.gateway import ENGINES, engine_named

    fleet = locate(state_dir)
    gateway = fleet.gateway()
    if gateway.engine is None or not engine_named(gateway.engine).logs_requests:
        logging = " or ".join(f"--engine {e}" for e in ENGINES if engine_named(e).logs_requests)
        raise UserError(
            "usage reads the gateway's log of requests per key name, which this fleet's gateway "
            f"({gateway.engine or 'none'}) does not keep; run it with {logging}"
        )
    if fleet.source == "up":
        assert gateway.prefix is not None
        return _read(gateway.prefix / ACCESS_LOG)
    if gateway.unit is None:  # a manifest from before units were recorded
        raise UserError("the install manifest does not name the gateway's unit: run install-systemd again")
    return journal_since(gateway.unit, since)


def front_log_lines(state_dir: Path, since: int) -> list[str]:
    """The front's log: its access.log under `front up`, else its unit's journal."""
    from ollama_fleet.actions.front import recorded_front

    state = recorded_front(state_dir)
    return journal_since(state.unit, since) if state.unit else _read(state.prefix / ACCESS_LOG)


def usage(state_dir: Path, since: str, front: bool = False) -> dict[str, KeyUsage]:
    """Per key name, the requests of the last `since` through this box's gateway (or the front)."""
    seconds = since_seconds(since)
    return summarise((front_log_lines if front else log_lines)(state_dir, seconds), seconds)
