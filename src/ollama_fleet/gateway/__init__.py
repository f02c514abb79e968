"""The gateway: one small engine interface (render, check, start, reload, stop, status).

`GatewaySpec` is everything an engine needs, built from the config and the plan; building
it is where user input is read and validated (the API keys file, the TLS files), so the
templates only ever see checked values.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from ollama_fleet.config import FleetConfig, Listen
from ollama_fleet.errors import BadInput, Missing, UserError
from ollama_fleet.names import spellings
from ollama_fleet.plan import Plan
from ollama_fleet.state import GATEWAY, GatewayState, ProcessRecord, read_gateway, write_atomic, write_model

# RFC 6750 bearer token characters: nothing that could end a quoted nginx string.
_KEY = re.compile(r"[A-Za-z0-9._~+/=-]{8,200}")
REDACTED = "<redacted>"
TOOL_DIRS = "/usr/sbin:/sbin"  # a non-root PATH on Debian lacks them


class Backend(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    address: str
    slots: int = 1  # the instance's OLLAMA_NUM_PARALLEL: requests it serves at once


class ModelRoute(BaseModel):
    """A placed model: the names a request may give it, and the instances that serve it."""

    model_config = ConfigDict(frozen=True)
    model: str  # "qwen3:latest"
    names: tuple[str, ...]  # ("qwen3", "qwen3:latest", "library/qwen3", ...): all mean it
    instances: tuple[Backend, ...]


class Tls(BaseModel):
    model_config = ConfigDict(frozen=True)
    cert: Path
    key: Path


class GatewaySpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    instances: tuple[Backend, ...]
    listen: Listen
    allow: tuple[str, ...]
    api_keys: tuple[str, ...]
    balance: str
    read_timeout: int
    max_body_size: str
    tls: Tls | None
    metrics_port: int = 8405
    models: tuple[ModelRoute, ...] = ()
    drained: tuple[str, ...] = ()  # instances sent no new request (a rolling restart)

    def redacted(self) -> GatewaySpec:
        return self.model_copy(update={"api_keys": tuple(REDACTED for _ in self.api_keys)})

    @property
    def probe_url(self) -> str:
        """Where the gateway answers from this machine (a wildcard listen answers on loopback)."""
        host = self.listen.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.listen.port}"


def read_api_keys(path: Path) -> tuple[str, ...]:
    """One key per line, `#` comments; each key checked so it cannot break out of a config."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"api_keys_file: cannot read {path} ({exc.strerror})") from None
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not _KEY.fullmatch(line):
            # Never echo the line: it may be a secret with a typo.
            raise BadInput(f"api_keys_file: line {number} of {path} is not a key (8-200 of A-Z a-z 0-9 . _ ~ + / = -)")
        if line not in keys:
            keys.append(line)
    if not keys:
        raise BadInput(f"api_keys_file: {path} holds no key")
    return tuple(keys)


def spec_from(config: FleetConfig, plan: Plan) -> GatewaySpec:
    tls = None
    if config.tls_cert is not None and config.tls_key is not None:
        for field, path in (("tls_cert", config.tls_cert), ("tls_key", config.tls_key)):
            if not path.is_file():
                raise BadInput(f"{field}: {path} does not exist")
        tls = Tls(cert=config.tls_cert.absolute(), key=config.tls_key.absolute())
    backends = {i.name: Backend(name=i.name, address=i.address, slots=_slots(i.env)) for i in plan.instances}
    routes = tuple(
        ModelRoute(
            model=model,
            names=spellings(model),
            instances=tuple(backends[name] for name in placed.instances),
        )
        for model, placed in plan.models.items()
    )
    return GatewaySpec(
        instances=tuple(backends.values()),
        models=routes,
        listen=config.listen,
        allow=tuple(str(net) for net in config.allow),
        api_keys=read_api_keys(config.api_keys_file) if config.api_keys_file else (),
        balance=config.balance,
        read_timeout=config.read_timeout,
        max_body_size=config.max_body_size,
        tls=tls,
        metrics_port=config.metrics_port,
    )


def _slots(env: dict[str, str]) -> int:
    value = env.get("OLLAMA_NUM_PARALLEL", "").strip()
    if not value:
        return 1  # Ollama's default when the variable is unset
    if not value.isdigit() or not 1 <= int(value) <= 1024:
        raise BadInput(f"env: OLLAMA_NUM_PARALLEL must be a whole number from 1 to 1024 (got {value!r})")
    return int(value)


def run_tool(argv: list[str], what: str, markers: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Run a gateway tool; on failure raise its own words (the lines carrying `markers`),
    each said once (nginx repeats a failed bind() five times)."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        lines = list(dict.fromkeys(line.strip() for line in text.splitlines() if any(m in line for m in markers)))
        detail = "\n".join(lines or text.strip().splitlines()[-3:])
        raise UserError(f"{what} failed ({' '.join(argv)}):\n{detail}")
    return proc


def exposure_warning(spec: GatewaySpec) -> str | None:
    """Listening beyond loopback with neither keys nor a narrow allowlist deserves a word."""
    if ipaddress.ip_address(spec.listen.host).is_loopback or spec.api_keys:
        return None
    wide = [net for net in spec.allow if ipaddress.ip_network(net).num_addresses > 2**16]
    if not wide:
        return None
    return (
        f"the gateway listens on {spec.listen} and lets {', '.join(wide)} in without API keys; "
        "anyone there can use (and pull models onto) the fleet. Add --api-keys-file or narrow --allow"
    )


def find_tool(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + TOOL_DIRS)


def require_tool(name: str) -> str:
    found = find_tool(name)
    if found is None:
        raise Missing(f"{name} is not installed (apt-get install {name})")
    return found


def secret_mode(spec: GatewaySpec) -> int:
    """Files that hold API keys are readable by owner and group only."""
    return 0o640 if spec.api_keys else 0o644


class Engine(Protocol):
    """What `up`, `down` and `render-*` need from a gateway engine."""

    name: str

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


class GatewayStats(BaseModel):
    queued: int  # requests waiting at the gateway for any free instance
    servers: dict[str, ServerStats]


# ------------------------------------------------------------------ run by `up` and `down`


def engine_named(name: str) -> Engine:
    from ollama_fleet.gateway.haproxy import Haproxy
    from ollama_fleet.gateway.nginx import Nginx

    engines: dict[str, Engine] = {"nginx": Nginx(), "haproxy": Haproxy()}
    return engines[name]


def worker_user(run_as: str | None) -> tuple[str, str] | None:
    """The user nginx workers run as when root starts it: the service user, never root."""
    import grp
    import pwd

    if os.geteuid() != 0:
        return None
    name = run_as if run_as and run_as != "root" else "nobody"
    account = pwd.getpwnam(name)
    return (account.pw_name, grp.getgrgid(account.pw_gid).gr_name)


def preflight(spec: GatewaySpec, state_dir: Path, engine: Engine) -> None:
    """Refuse before anything starts: a spec this engine cannot render (exit 2: a placement
    on nginx, a TLS key HAProxy cannot read), or a stranger on a port it needs (exit 1)."""
    from ollama_fleet.supervisor import port_holder

    engine.render(spec, standalone=True, prefix=state_dir / "gateway", user=None)

    ours = read_gateway(state_dir)
    if ours is not None and ours.process is not None and ours.process.process() is not None:
        return  # our own gateway holds them; `up` reloads it
    ports = [("listen", spec.listen.port, spec.listen.host)]
    if engine.name == "haproxy":
        ports.append(("metrics_port", spec.metrics_port, "127.0.0.1"))
    for field, port, host in ports:
        holder = port_holder(port, host)
        if holder is not None:
            flag = "--" + field.replace("_", "-")
            raise UserError(f"{field}: port {port} for the gateway is taken by {holder}; pass another {flag} or --no-gateway")


def _write_config(engine: Engine, spec: GatewaySpec, prefix: Path, config: Path, user: tuple[str, str] | None) -> bool:
    """Render and check the standalone config, write it atomically; True when it changed."""
    content = engine.render(spec, standalone=True, prefix=prefix, user=user, config=config)
    engine.check(content, standalone=True, prefix=prefix)
    changed = not config.exists() or config.read_text() != content
    write_atomic(config, content, secret_mode(spec))
    return changed


def _record(state_dir: Path, state: GatewayState, spec: GatewaySpec) -> GatewayState:
    """gateway.json, with the spec it was rendered from (API keys included: 0640 then)."""
    state = state.model_copy(update={"spec": spec.model_dump(mode="json")})
    write_model(state_dir / GATEWAY, state, secret_mode(spec))
    return state


def converge(engine: Engine, spec: GatewaySpec, state_dir: Path, user: tuple[str, str] | None) -> tuple[str, GatewayState]:
    """Start the gateway, or reload it when its config changed (never restart it).

    Returns what was done ("started", "reloaded", "unchanged") and the new state.
    """
    prefix = state_dir / "gateway"
    config = prefix / f"{engine.name}.conf"
    previous = read_gateway(state_dir)
    live = previous.process if previous and previous.process and previous.process.process() else None
    changed = _write_config(engine, spec, prefix, config, user)
    if live is not None and previous is not None and previous.engine != engine.name:
        from ollama_fleet.supervisor import stop_processes

        stop_processes([live], 10)  # the other engine holds the port: it goes first
        live = None
    if live is not None:
        action = "reloaded" if changed else "unchanged"
        if changed:
            engine.reload(prefix, config)
        record = live
    else:
        record = ProcessRecord.of(engine.start(prefix, config))
        action = "started"
    state = GatewayState(
        engine=engine.name, process=record, prefix=prefix, config=config, url=spec.probe_url, listen=str(spec.listen),
        worker=user,
    )
    return action, _record(state_dir, state, spec)


def redrain(engine: Engine, state_dir: Path, state: GatewayState, drained: tuple[str, ...]) -> GatewayState:
    """Re-render the running gateway's config with `drained` instances, check it, reload."""
    assert state.spec is not None and state.prefix is not None and state.config is not None
    spec = GatewaySpec.model_validate(state.spec).model_copy(update={"drained": drained})
    _write_config(engine, spec, state.prefix, state.config, state.worker)
    engine.reload(state.prefix, state.config)
    return _record(state_dir, state, spec)
