"""What any gateway serves, whatever its engine: `GatewaySpec`, built from the config and
the plan. Building it is where user input is read and validated (the API keys file, the TLS
files), so the templates only ever see checked values."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator

from ollama_fleet.config import FleetConfig
from ollama_fleet.errors import BadInput
from ollama_fleet.keys import ApiKey, read_keys
from ollama_fleet.names import canonical, spellings
from ollama_fleet.plan import Plan
from ollama_fleet.values import Listen, host_pattern, load_body

if TYPE_CHECKING:
    from ollama_fleet.gateway.front import FrontSpec

REDACTED = "<redacted>"


class Backend(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    address: str
    slots: int = 1  # the instance's OLLAMA_NUM_PARALLEL: requests it serves at once


class ServeCheck(BaseModel):
    """What a health check asks of an instance to prove it can serve: load this model, kept
    as long as `up` keeps it (values.load_body). `GET /api/version` alone answers 200 on a GPU
    that cannot load anything (its memory taken by another process: Ollama answers 500)."""

    model_config = ConfigDict(frozen=True)
    model: str
    keep_alive: str

    @property
    def body(self) -> str:
        return load_body(self.model, self.keep_alive)


class ModelRoute(BaseModel):
    """A placed model: the names a request may give it, and the instances that serve it."""

    model_config = ConfigDict(frozen=True)
    model: str  # "qwen3:latest"
    names: tuple[str, ...]  # ("qwen3", "qwen3:latest", "library/qwen3", ...): all mean it
    instances: tuple[Backend, ...]
    check: ServeCheck | None = None  # None in a gateway.json from before checks loaded models


class Tls(BaseModel):
    model_config = ConfigDict(frozen=True)
    cert: Path
    key: Path


class GatewaySpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    instances: tuple[Backend, ...]
    listen: Listen
    allow: tuple[str, ...]
    # The Host values it serves (values.host_pattern): anything else is a DNS-rebinding page.
    hosts: str = host_pattern(())
    api_keys: tuple[ApiKey, ...]
    balance: str
    read_timeout: int
    max_body_size: str
    tls: Tls | None
    metrics_port: int = 8405
    models: tuple[ModelRoute, ...] = ()
    # How the instances prove they serve the models not placed anywhere: a --preload model,
    # which every instance holds; None: no model is known, only `GET /api/version` is asked.
    check: ServeCheck | None = None
    drained: tuple[str, ...] = ()  # instances sent no new request (a rolling restart)
    # GET /fleet/info: the box described to a front (fleet_info()), JSON the gateway
    # answers itself, so it never waits for a slot. In the config, so the description and
    # the routing it describes are always the same render.
    info: str = "{}"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _plain_keys(cls, value: Any) -> Any:
        # gateway.json written before keys had names holds plain strings: read them as
        # the keys file does (key1, key2 ...), so a running fleet survives the upgrade.
        if isinstance(value, (list, tuple)):
            return [{"key": k, "name": f"key{n}"} if isinstance(k, str) else k for n, k in enumerate(value, 1)]
        return value

    def redacted(self) -> GatewaySpec:
        return self.model_copy(
            update={"api_keys": tuple(k.model_copy(update={"key": REDACTED}) for k in self.api_keys)}
        )

    @property
    def probe_url(self) -> str:
        return local_url(self.listen, self.tls is not None)

    @property
    def file_mode(self) -> int:
        """Of the files that hold its API keys (its configs, gateway.json): owner and group."""
        return 0o640 if self.api_keys else 0o644


def local_url(listen: Listen, tls: bool) -> str:
    """Where a gateway (or the front) answers from this machine: a wildcard listen answers
    on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen.host, listen.host)
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{listen.port}"


def tls_of(config: FleetConfig) -> Tls | None:
    """The TLS pair of a gateway or the front, both files there (config.py checked they go together)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    for field, path in (("tls_cert", config.tls_cert), ("tls_key", config.tls_key)):
        if not path.is_file():
            raise BadInput(f"{field}: {path} does not exist")
    return Tls(cert=config.tls_cert.absolute(), key=config.tls_key.absolute())


def spec_from(config: FleetConfig, plan: Plan) -> GatewaySpec:
    backends = {i.name: Backend(name=i.name, address=i.address, slots=_slots(i.env)) for i in plan.instances}
    routes = tuple(
        ModelRoute(
            model=model,
            names=spellings(model),
            instances=tuple(backends[name] for name in placed.instances),
            check=ServeCheck(model=model, keep_alive=placed.keep_alive or config.keep_alive),
        )
        for model, placed in plan.models.items()
    )
    everywhere = [m for m in map(canonical, config.preload) if m not in plan.models]
    return GatewaySpec(
        info=fleet_info(config.name or host_name(), tuple(backends.values()), routes),
        instances=tuple(backends.values()),
        models=routes,
        check=ServeCheck(model=everywhere[0], keep_alive=config.keep_alive) if everywhere else None,
        listen=config.listen,
        allow=tuple(str(net) for net in config.allow),
        hosts=served_hosts(config),
        api_keys=read_keys(config.api_keys_file) if config.api_keys_file else (),
        balance=config.balance,
        read_timeout=config.read_timeout,
        max_body_size=config.max_body_size,
        tls=tls_of(config),
        metrics_port=config.metrics_port,
    )


INFO_SCHEMA = 1


def fleet_info(name: str, instances: tuple[Backend, ...], models: tuple[ModelRoute, ...]) -> str:
    """What `GET /fleet/info` answers (README: "A box describes itself"): the box's slots,
    per instance and per placed model, which a front turns into its servers' maxconn."""
    from ollama_fleet import __version__

    info = {
        "schema": INFO_SCHEMA,
        "name": name,
        "version": __version__,
        "slots": sum(i.slots for i in instances),
        "instances": [{"name": i.name, "slots": i.slots} for i in instances],
        "models": {route.model: sum(i.slots for i in route.instances) for route in models},
    }
    return json.dumps(info, separators=(",", ":"))


def served_hosts(config: FleetConfig) -> str:
    """The Host regex of a gateway or the front: Ollama's own rule, this machine's names
    (as Ollama compares os.Hostname()), and the operator's --server-name."""
    own = {socket.gethostname().lower(), socket.gethostname().lower().split(".")[0]}
    names = [n for n in sorted(own) if re.fullmatch(r"[a-z0-9.-]+", n)]
    return host_pattern((*names, *config.server_names))


def host_name() -> str:
    """This machine's short host name, as a box name (anything a name may not hold dropped)."""
    short = re.sub(r"[^A-Za-z0-9._:-]", "", socket.gethostname().split(".")[0])[:63].lstrip("._:-")
    return short or "box"


def _slots(env: dict[str, str]) -> int:
    value = env.get("OLLAMA_NUM_PARALLEL", "").strip()
    if not value:
        return 1  # Ollama's default when the variable is unset
    if not value.isdigit() or not 1 <= int(value) <= 1024:
        raise BadInput(f"env: OLLAMA_NUM_PARALLEL must be a whole number from 1 to 1024 (got {value!r})")
    return int(value)


def exposure_warnings(spec: GatewaySpec | FrontSpec, config: FleetConfig) -> list[str]:
    """What deserves a word before a gateway (or the front) serves: listening beyond loopback
    with neither keys nor a narrow allowlist, and a file of keys that other users can read."""
    found = [
        f"{field}: {path} is readable by every user of this machine (chmod 600 {path}, or 640 for a group)"
        for field, path in (("api_keys_file", config.api_keys_file), ("box_key_file", config.box_key_file))
        if path is not None and path.exists() and path.stat().st_mode & 0o004
    ]
    if ipaddress.ip_address(spec.listen.host).is_loopback or spec.api_keys:
        return found
    wide = [net for net in spec.allow if ipaddress.ip_network(net).num_addresses > 2**16]
    if wide:
        found.append(
            f"the gateway listens on {spec.listen} and lets {', '.join(wide)} in without API keys; "
            "anyone there can use (and pull models onto) the fleet. Add --api-keys-file or narrow --allow"
        )
    return found
