"""Gateway engines: one small interface (render, check, start, reload, drain, stats, install
layout) and a registry. Engine-specific knowledge lives in each engine's module and its
templates; `spec.py` holds what any gateway serves, `lifecycle.py` how `up` runs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from ollama_fleet.render import RenderedFile

if TYPE_CHECKING:
    from ollama_fleet.gateway.spec import GatewaySpec


class Engine(Protocol):
    """Everything about one engine: the rest of the fleet asks it, never names it."""

    name: str
    check_command: str  # what `--check` runs, as the user would say it ("nginx -t")
    always_complete: bool  # renders a complete config only (no snippet for a shared server)
    # Whether `restart --rolling` of a systemd fleet can drain through it: a gateway of the
    # fleet's own (HAProxy), not the system's shared nginx.
    drains_installed: bool
    # Whether it writes one JSON line per request naming the key's name (`usage` reads them).
    logs_requests: bool

    def ports(self, spec: GatewaySpec) -> dict[str, tuple[str, int]]:
        """The ports it binds, by the setting that chooses each: {"listen": (host, port), ...}."""
        ...

    def install_layout(self, spec: GatewaySpec) -> InstallLayout:
        """Its files under systemd, checked before they are written, and how systemd runs it."""
        ...

    def render(
        self,
        spec: GatewaySpec,
        *,
        standalone: bool,
        prefix: Path,
        user: tuple[str, str] | None,
        config: Path | None = None,
    ) -> str:
        """The config; `config` is where it will be written (its header says how to run it)."""
        ...

    def prepare(self, prefix: Path) -> None:
        """Create the directories under `prefix` that the rendered config names, so it runs
        as rendered."""
        ...

    def check(self, content: str, *, standalone: bool, prefix: Path | None = None) -> None: ...

    def redact(self, text: str) -> str: ...

    def start(self, prefix: Path, config: Path) -> int:
        """Start it detached; return the pid of its master process (stopped by `down` with
        SIGTERM to its process group, as every process the fleet records)."""
        ...

    def reload(self, prefix: Path, config: Path) -> None: ...

    def running(self, prefix: Path) -> int | None: ...

    def stats(self, prefix: Path) -> GatewayStats | None:
        """What the gateway counts (queue, in flight, health per instance), or None if it
        keeps no such count."""
        ...

    def drain(self, state_dir: Path, name: str, timeout: float) -> int:
        """Send `name` no new request, then wait (up to `timeout`) until what it serves is
        done. Returns how many requests (nginx: old workers) were still busy at the timeout."""
        ...

    def undrain(self, state_dir: Path, name: str, timeout: float) -> None:
        """Send `name` requests again, once the gateway sees it healthy."""
        ...


class ServerStats(BaseModel):
    state: str  # UP, DOWN, DRAIN, MAINT, ...
    queued: int  # requests waiting at the gateway for this very instance
    in_flight: int
    check: str | None = None  # why its health check failed, while it is not UP


class KeyStats(BaseModel):
    """One key name's counts at an HAProxy queue (its stick tables)."""

    requests: int  # since the gateway started (counts reset when it restarts or reloads)
    in_flight: int  # being answered
    queued: int  # waiting for a slot (or for an answer's first byte)
    rejected: int  # answered 429 by a limit
    bytes_out: int  # sent to clients, counted as each request ends


class GatewayStats(BaseModel):
    queued: int  # requests waiting at the gateway for any free instance
    servers: dict[str, ServerStats]
    keys: dict[str, KeyStats] = {}  # per key name, with named keys (HAProxy)


@dataclass(frozen=True)
class InstallLayout:
    """A gateway under systemd: its files, the unit that serves them, and what to tell
    systemd when a file changed."""

    files: tuple[RenderedFile, ...]
    unit: str
    # True: the fleet installs the unit itself (started with the target, stopped when the
    # gateway moves away); False: a system service the fleet only drops a file into (it
    # must run; it is reloaded when the file goes).
    owned: bool
    reloads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # path -> systemctl args
    runtime_dir: Path | None = None  # where its runtime files are (an admin socket)

    def manifest(self) -> dict[str, Any]:
        """What the install manifest keeps of it, so later commands find and steer it."""
        return {"prefix": self.runtime_dir, "unit": self.unit, "owned": self.owned}


ENGINES = ("nginx", "haproxy")


def engine_named(name: str) -> Engine:
    """The registry: an engine is one module (and its templates) plus one line here."""
    from ollama_fleet.gateway.haproxy import Haproxy
    from ollama_fleet.gateway.nginx import Nginx

    engines: dict[str, Engine] = {"nginx": Nginx(), "haproxy": Haproxy()}
    return engines[name]
