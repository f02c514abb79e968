"""The types of setting values and their validators: paths, networks, Go durations, model
names, placements, `[HOST:]PORT`, and the `KEY=VALUE` lists of flags and variables. Nothing a
user types reaches a rendered config without passing one of these."""

from __future__ import annotations

import ipaddress
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


def unloads_at_once(keep_alive: str) -> bool:
    """A keep-alive of zero ("0", "0s", "0m0s"): Ollama unloads the model after every request,
    so a preload loads it and unloads it at once (it answers done_reason "unload")."""
    return all(float(number) == 0 for number in re.findall(r"\d+(?:\.\d*)?|\.\d+", keep_alive))


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
