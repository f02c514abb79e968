"""The types of setting values and their validators: paths, networks, Go durations, model
names, placements, `[HOST:]PORT`, and the `KEY=VALUE` lists of flags and variables. Nothing a
user types reaches a rendered config without passing one of these."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ollama_fleet.errors import BadInput

# Go's time.ParseDuration grammar ("1h30m", "15s", "-1m") or whole seconds ("3600", "-1"):
# exactly what Ollama accepts for OLLAMA_KEEP_ALIVE (envconfig.KeepAlive).
_GO_DURATION = re.compile(r"[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+|[-+]?\d+")


_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")


# Characters that would let a value escape its place in an nginx, HAProxy or systemd file.
_UNSAFE = re.compile(r"[\s;{}\"'#$\\`]")


def _safe_path(value: Path) -> Path:
    if _UNSAFE.search(str(value)) or not str(value):
        raise ValueError("paths may not contain whitespace, quotes or any of ; { } # $ \\ `")
    return value


def _network(value: Any) -> Any:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    try:
        # strict=False: "192.168.1.7/24" means the /24 it lies in, as nginx reads it.
        network = ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise ValueError("not a valid IP network") from None
    if network == ipaddress.ip_network("255.255.255.255/32"):
        # No client has the broadcast address, and nginx cannot parse it (INADDR_NONE).
        raise ValueError("255.255.255.255 is the broadcast address, never a client")
    return network


def go_duration(value: str) -> str:
    if not _GO_DURATION.fullmatch(value):
        raise ValueError("not a Go duration (15s, 5m, 1h30m) or whole seconds (3600, -1 for forever)")
    return value


def keep_alive_value(keep_alive: str) -> Any:
    """Ollama's API reads a keep_alive string with Go's ParseDuration, which rejects "3600"
    and "-1": whole seconds must travel as a JSON number."""
    return int(keep_alive) if re.fullmatch(r"[-+]?\d+", keep_alive) else keep_alive


def load_body(model: str, keep_alive: str) -> str:
    """The JSON of a request that loads `model` and does nothing else (an /api/embed with no
    input), kept `keep_alive` ("": the instance's OLLAMA_KEEP_ALIVE). `up`'s preload, the
    gateway's health check and `status` all send it. Compact, as it also sits in a config."""
    body: dict[str, Any] = {"model": model, "input": ""}
    if keep_alive:
        body["keep_alive"] = keep_alive_value(keep_alive)
    return json.dumps(body, separators=(",", ":"))


def unloads_at_once(keep_alive: str) -> bool:
    """A keep-alive of zero ("0", "0s", "0m0s"): Ollama unloads the model after every request,
    so a preload loads it and unloads it at once (it answers done_reason "unload")."""
    return all(float(number) == 0 for number in re.findall(r"\d+(?:\.\d*)?|\.\d+", keep_alive))


_SERVER_NAME = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*")


def server_name(value: str) -> str:
    """A host name clients may give in `Host` (`llm.example.com`, or `*.example.com` for any
    name under it): lower-case letters, digits, dots and dashes only, so it can sit in a
    regex of either engine."""
    value = value.strip().lower().rstrip(".")
    if not _SERVER_NAME.fullmatch(value):
        raise ValueError("not a host name (llm.example.com, or *.example.com for every name under it)")
    return value


def host_pattern(names: tuple[str, ...]) -> str:
    """The `Host` values a gateway serves, as one regex over the lower-cased header, port
    included: what Ollama's allowedHostsMiddleware lets through on loopback (server/routes.go:
    empty, localhost, *.localhost, *.local, *.internal, an IP address, the host's own name),
    plus the operator's server names. A DNS-rebinding page has a name of its own, never these.
    No braces or quotes, which would end the engines' config strings."""

    def name_re(name: str) -> str:
        return r"[a-z0-9.-]*\." + re.escape(name[2:]) if name.startswith("*.") else re.escape(name)

    hosts = [
        "localhost",
        r"[a-z0-9.-]*\.(localhost|local|internal)",
        r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+",
        r"\[[0-9a-f:.]+\]",
        *map(name_re, names),
    ]
    return "^((" + "|".join(hosts) + ")(:[0-9]+)?)?$"


def model_name(value: str) -> str:
    if not _MODEL.fullmatch(value):
        raise ValueError("not a valid model name")
    return value


_INSTANCE = re.compile(r"gpu\d+(_\d+)*(-mig\d+)?")


class Placement(BaseModel):
    """Where one model lives: the instances that hold it, and how long they keep it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    instances: tuple[str, ...] = Field(min_length=1)
    keep_alive: Annotated[str, AfterValidator(go_duration)] | None = None

    @field_validator("instances", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        value = split_list(value)
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("empty: name the instances that hold the model (gpu0, gpu1, ...)")
        for name in value if isinstance(value, (list, tuple)) else []:
            if not isinstance(name, str) or not _INSTANCE.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not an instance name like gpu0, gpu0_1 or gpu0-mig1 (ranges are not accepted)"
                )
        if isinstance(value, (list, tuple)) and len(set(value)) != len(value):
            raise ValueError("lists an instance twice")
        return value


def _pairs(value: Any, items: Callable[[str], list[str]], shape: str) -> Any:
    """`NAME=VALUE` entries (repeated flags, or a variable split by `items`) as a table;
    TOML tables pass through."""
    if not isinstance(value, (str, list, tuple)):
        return value
    result = {}
    for entry in items(value) if isinstance(value, str) else value:
        name, sep, rest = str(entry).partition("=")
        if not sep:
            raise ValueError(f"{entry!r} is not {shape}")
        result[name] = rest
    return result


def model_pairs(value: Any) -> Any:
    """`MODEL=gpu0,gpu1` entries: a variable separates them by spaces (the instances use commas)."""
    return _pairs(value, str.split, "MODEL=INSTANCE[,INSTANCE...]")


def env_pairs(value: Any) -> Any:
    """`KEY=VALUE` pairs: a variable separates them by commas."""
    return _pairs(value, split_list, "KEY=VALUE")


def split_list(value: Any) -> Any:
    """Lists in environment variables and flags are comma-separated."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


SafePath = Annotated[Path, AfterValidator(_safe_path)]


def checked_path(value: str, field: str) -> Path:
    """A path flag that is no setting (`--prefix`), checked like the settings' paths."""
    try:
        return _safe_path(Path(value))
    except ValueError as exc:
        raise BadInput(f"{field}: {exc} (got {value[:60]!r})") from None


Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]


Model = Annotated[str, AfterValidator(model_name)]


class Listen(BaseModel):
    """Where the gateway listens: `[HOST:]PORT`, `[::]:PORT` for IPv6."""

    model_config = ConfigDict(frozen=True)
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: Any) -> Any:
    if isinstance(value, (Listen, dict)):
        return value
    text = str(value).strip()
    match = re.fullmatch(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]:|(?P<v4>[0-9.]+):)?(?P<port>\d+)", text)
    if not match:
        raise ValueError("expected [HOST:]PORT, e.g. 8080, 127.0.0.1:8080 or [::]:8080")
    host = match["v6"] or match["v4"] or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return {"host": host, "port": port}


# A DNS host name (RFC 1123 labels) or an IP address: what a box URL or a resolver may name.
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# `_service._proto.domain`, as SRV records are named (RFC 2782).
_SRV = re.compile(r"_[A-Za-z0-9-]{1,62}\._(tcp|udp)\.[A-Za-z0-9.-]{1,200}")
# A box's name (its /fleet/info and the front's server name): no quote, space or `/`.
_BOX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")


def box_name(value: str) -> str:
    if not _BOX_NAME.fullmatch(value):
        raise ValueError("a name is 1-63 of A-Z a-z 0-9 . _ : - (starting with a letter or digit)")
    return value


def srv_name(value: str) -> str:
    if not _SRV.fullmatch(value):
        raise ValueError("expected an SRV name like _ollama-fleet._tcp.example.com")
    return value


class Box(BaseModel):
    """One box of a front: a fleet's gateway (or a plain Ollama) at `url`. `slots` given means
    the box is not asked for its /fleet/info (a plain Ollama, or a box that does not describe
    itself)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scheme: str
    host: str
    port: int
    slots: int | None = Field(None, ge=1, le=4096)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.url


def parse_box(value: Any) -> Any:
    """`URL[,slots=N]` (a flag, a variable's item or a TOML string), or a TOML table
    `{url = "...", slots = N}`."""
    if isinstance(value, Box):
        return value
    if isinstance(value, dict):
        extra = {k: v for k, v in value.items() if k != "url"}
        text = str(value.get("url", ""))
    else:
        text, *options = str(value).strip().split(",")
        extra = {}
        for option in options:
            key, sep, val = option.strip().partition("=")
            if key != "slots" or not sep:
                raise ValueError(f"{option.strip()!r} is not an option of a box (only slots=N)")
            extra["slots"] = val
    match = re.fullmatch(
        r"(?P<scheme>https?)://(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^/:\[\]]+))(?::(?P<port>\d+))?/?", text
    )
    if not match:
        raise ValueError(f"{text[:60]!r} is not a box URL like http://10.0.0.2:8080")
    host = match["v6"] or match["host"]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host[:60]!r} is neither an IP address nor a host name") from None
    port = int(match["port"] or (443 if match["scheme"] == "https" else 80))
    if not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return {"scheme": match["scheme"], "host": host, "port": port, **extra}


BoxUrl = Annotated[Box, BeforeValidator(parse_box)]


def parse_resolver(value: Any) -> Any:
    """`IP[:PORT]` of a DNS server (port 53 unless given)."""
    if isinstance(value, (Listen, dict)):
        return value
    text = str(value).strip()
    if not re.fullmatch(r"([0-9.]+|\[[0-9a-fA-F:.]+\])(:\d+)?", text):
        raise ValueError("expected IP[:PORT] of a DNS server, e.g. 10.0.0.53 or 10.0.0.53:5353")
    return parse_listen(text if re.search(r"(^[0-9.]+|\]):\d+$", text) else f"{text}:53")
