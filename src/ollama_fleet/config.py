"""FleetConfig, and loading it: defaults < TOML file < OLLAMA_FLEET_* env < CLI flags."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ollama_fleet.accounts import check_trusted
from ollama_fleet.errors import BadInput
from ollama_fleet.names import canonical
from ollama_fleet.values import (
    BoxUrl,
    Listen,
    Model,
    Network,
    Placement,
    SafePath,
    box_name,
    env_pairs,
    go_duration,
    model_name,
    model_pairs,
    parse_listen,
    parse_resolver,
    server_name,
    split_list,
    srv_name,
    unloads_at_once,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Ubuntu 22.04 ships Python 3.10
    import tomli as tomllib

CONFIG_FILE_NAME = "ollama-fleet.toml"
# Settings whose flag is not `--` + their name (a repeated flag reads better singular).
FLAGS = {"gateway": "--no-gateway", "boxes": "--box", "server_names": "--server-name"}
ENV_PREFIX = "OLLAMA_FLEET_"

# Variables the fleet sets on every instance itself, and the setting that controls each.
RESERVED_ENV = {
    "CUDA_VISIBLE_DEVICES": "gpus",
    "OLLAMA_HOST": "base_port",
    "OLLAMA_MODELS": "models_dir",
    "OLLAMA_KEEP_ALIVE": "keep_alive",
    "OLLAMA_VULKAN": "none: the fleet sets OLLAMA_VULKAN=0, since Vulkan ignores CUDA_VISIBLE_DEVICES",
    "OLLAMA_NOPRUNE": "none: every instance but the writer runs with OLLAMA_NOPRUNE=1 so a restart never deletes a pull",
}

_ENV_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")
_GPU_ID = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z-]+")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SIZE = re.compile(r"\d+[kKmMgG]?")


class FleetConfig(BaseModel):
    """Every setting of the fleet (the README's settings table is generated from it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: Literal["all"] | tuple[str, ...] = Field(
        "all", description="GPUs to use: `all`, indices `0,1,3` or UUIDs `GPU-...,MIG-...`"
    )
    gpus_per_instance: int = Field(1, ge=1, le=64, description="GPUs per `ollama serve` (2 for a 70B over two cards)")
    base_port: int = Field(11534, ge=1, le=65535, description="port of the first instance; the k-th gets base_port + k")
    models_dir: SafePath | None = Field(
        None,
        description="models dir shared by all instances (default /usr/share/ollama/.ollama/models if it exists, else ~/.ollama/models)",
    )
    keep_alive: Annotated[str, AfterValidator(go_duration)] = Field(
        "5m", description="OLLAMA_KEEP_ALIVE: Go duration or whole seconds; negative keeps models loaded forever"
    )
    ollama_bin: SafePath = Field(Path("ollama"), description="the ollama executable (looked up on PATH)")
    user: str | None = Field(
        None, description="user the instances run as when started by root (default: owner of the models dir)"
    )
    state_dir: SafePath | None = Field(
        None,
        description="state, logs and gateway files (default /var/lib/ollama-fleet as root, else $XDG_STATE_HOME/ollama-fleet)",
    )
    wait_timeout: float = Field(
        60, gt=0, le=3600, description="seconds `up`, `restart` and `install-systemd` wait for each instance to answer"
    )
    preload: tuple[Model, ...] = Field((), description="models to load on every instance after start (repeatable)")
    env: dict[str, str] = Field({}, description="extra environment for every instance, `KEY=VALUE` (repeatable)")
    env_file: SafePath | None = Field(
        None,
        description="file of `KEY=VALUE` lines for every instance (`#` comments; --env wins): "
        "secrets such as a proxy's password stay off the command line, which `ps` shows to every user",
    )
    gateway: bool = Field(
        True, description="start the gateway with `up`, install it with `install-systemd` (`--no-gateway` skips it)"
    )
    engine: Literal["nginx", "haproxy"] = Field(
        "nginx", description="gateway engine: nginx, or haproxy (queues requests at the gateway, active health checks)"
    )
    listen: Annotated[Listen, BeforeValidator(parse_listen)] = Field(
        Listen(host="0.0.0.0", port=8080), description="where the gateway listens: [HOST:]PORT, [::]:PORT for IPv6"
    )
    allow: tuple[Network, ...] = Field(
        (), description="client networks allowed through the gateway, besides 127.0.0.1 and ::1 (repeatable)"
    )
    server_names: tuple[Annotated[str, AfterValidator(server_name)], ...] = Field(
        (),
        description="host names clients reach the gateway by (repeatable; `*.example.com` for all under it), "
        "besides localhost, IP addresses and this host's name: any other Host is refused (DNS rebinding)",
    )
    api_keys_file: SafePath | None = Field(
        None,
        description="file of bearer API keys, one per line (`KEY name=N priority=P max_concurrent=N rate=N/m`), `#` comments",
    )
    balance: Literal["least_conn", "round_robin", "random"] = Field(
        "least_conn", description="gateway balancing; random = power of two choices with least_conn"
    )
    read_timeout: int = Field(600, ge=1, le=86400, description="seconds the gateway waits on a silent instance")
    max_body_size: str = Field("100m", description="largest request body the gateway accepts (nginx size: 100m, 1g)")
    metrics_port: int = Field(
        8405, ge=1, le=65535, description="loopback port of HAProxy's Prometheus exporter (haproxy engine)"
    )
    models: dict[str, Placement] = Field(
        {},
        description="model placement: `MODEL=gpu0,gpu1` (repeatable), TOML `[models]`; unplaced models go to every instance",
    )
    tls_cert: SafePath | None = Field(None, description="TLS certificate for the gateway (with tls_key)")
    tls_key: SafePath | None = Field(
        None, validate_default=True, description="TLS private key for the gateway (with tls_cert)"
    )
    name: Annotated[str, AfterValidator(box_name)] | None = Field(
        None, description="this box's name in its `/fleet/info` and at a front (default: the host name)"
    )
    boxes: tuple[BoxUrl, ...] = Field(
        (),
        description="front: the boxes' gateways, `URL` or `URL,slots=N` for a plain Ollama (repeatable), TOML `boxes`",
    )
    box_srv: Annotated[str, AfterValidator(srv_name)] | None = Field(
        None, description="front: boxes from DNS SRV records (`_ollama-fleet._tcp.example.com`), with box_slots"
    )
    box_slots: int | None = Field(
        None, ge=1, le=4096, validate_default=True, description="front: slots of each box found by box_srv"
    )
    resolver: Annotated[Listen, BeforeValidator(parse_resolver)] | None = Field(
        None, description="front: the DNS server for box_srv, `IP[:PORT]` (default: /etc/resolv.conf)"
    )
    box_key_file: SafePath | None = Field(
        None, description="front: file holding the API key the front presents to the boxes"
    )

    @property
    def state_path(self) -> Path:
        """`state_dir`, which load_config() fills with its default when none is given."""
        if self.state_dir is None:
            raise AssertionError("state_dir is filled by load_config()")
        return self.state_dir

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == "all":
            return "all"
        items = [str(item) for item in (split_list(value) if not isinstance(value, int) else [value])]
        if not items:
            raise ValueError("empty: give `all`, indices like 0,1 or GPU UUIDs")
        for item in items:
            if not _GPU_ID.fullmatch(item):
                raise ValueError(f"{item!r} is neither a GPU index nor a GPU-/MIG- UUID")
        if len(set(items)) != len(items):
            raise ValueError("lists a GPU twice")
        return tuple(items)

    @field_validator("preload", "allow", "server_names", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("boxes", mode="before")
    @classmethod
    def _boxes(cls, value: Any) -> Any:
        # A variable separates boxes by spaces: a comma belongs to `URL,slots=N`.
        return value.split() if isinstance(value, str) else value

    @field_validator("env")
    @classmethod
    def _env_items(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not _ENV_KEY.fullmatch(key):
                raise ValueError(f"{key!r} is not a variable name ([A-Z_][A-Z0-9_]*)")
            if key in RESERVED_ENV:
                raise ValueError(f"{key} is set by the fleet; use the setting {RESERVED_ENV[key]}")
            if "\n" in val or "\r" in val or "\0" in val:
                raise ValueError(f"the value of {key} contains a newline or NUL")
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        result: dict[str, Any] = {}
        for name, where in value.items():
            model_name(str(name))
            key = canonical(str(name))
            if key in result:
                raise ValueError(f"{name!r} is named twice (Ollama reads both names as {key!r})")
            # A list (or "gpu0,gpu1") is the instances; a table may add keep_alive.
            result[key] = where if isinstance(where, dict) else {"instances": where}
        return result

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _USER.fullmatch(value):
            raise ValueError("not a valid user name")
        return value

    @field_validator("max_body_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _SIZE.fullmatch(value):
            raise ValueError("expected a size such as 100m, 512k or 1g")
        if int(value.rstrip("kKmMgG")) == 0:
            # nginx reads 0 as "no limit", HAProxy as "refuse every body": neither is meant.
            raise ValueError("0 has no single meaning across the engines; give a size such as 100m")
        return value

    @field_validator("box_slots")
    @classmethod
    def _srv_slots(cls, value: int | None, info: ValidationInfo) -> int | None:
        if (info.data.get("box_srv") is None) != (value is None):
            raise ValueError("box_srv and box_slots go together: boxes found in DNS cannot be asked their slots")
        return value

    @field_validator("tls_key")
    @classmethod
    def _tls_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "tls_cert" in info.data and (info.data["tls_cert"] is None) != (value is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        return value


# ---------------------------------------------------------------- loading


def default_state_dir(environ: Mapping[str, str]) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/ollama-fleet")
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ollama-fleet"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise BadInput(f"config: {path}: no such file") from None
    except OSError as exc:
        raise BadInput(f"config: {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"config: {path}: TOML syntax error: {exc}") from None


def config_file(flag: Path | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """`--config PATH`, else ./ollama-fleet.toml if present, else $OLLAMA_FLEET_CONFIG."""
    if flag is not None:
        return flag
    local = cwd / CONFIG_FILE_NAME
    if local.is_file():
        return local
    from_env = environ.get(ENV_PREFIX + "CONFIG")
    return Path(from_env) if from_env else None


def load_config(
    flags: Mapping[str, Any] | None = None,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> FleetConfig:
    """Merge the layers and validate once; every bad field becomes one line of a BadInput."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def layer(values: Mapping[str, Any], label: Any) -> None:
        for key, value in values.items():
            source = label(key) if callable(label) else label
            if key in ("env", "models"):
                try:
                    value = env_pairs(value) if key == "env" else model_pairs(value)
                except ValueError as exc:
                    raise BadInput(f"{key}: {exc} [from {source}]") from None
                if isinstance(merged.get(key), dict) and isinstance(value, dict):
                    value = {**merged[key], **value}  # tables add up: a later layer wins per key
            merged[key] = value
            origin[key] = source

    path = config_file(config_path, environ, cwd or Path.cwd())
    if path is not None:
        check_trusted(path, "config")
        layer(_read_toml(path), str(path))
    layer(
        {
            name: environ[ENV_PREFIX + name.upper()]
            for name in FleetConfig.model_fields
            if ENV_PREFIX + name.upper() in environ
        },
        lambda key: ENV_PREFIX + key.upper(),
    )
    layer({k: v for k, v in (flags or {}).items() if v is not None}, flag_of)

    try:
        config = FleetConfig.model_validate(merged)
    except ValidationError as exc:
        raise BadInput([_error_line(error, origin) for error in exc.errors()]) from None
    _check_loads_stay(config, origin)
    if config.user == "root" and origin.get("user") not in ("--user", ENV_PREFIX + "USER"):
        # A config file is the one layer someone else may have written (a planted
        # ./ollama-fleet.toml): running Ollama as root is said where the caller types it.
        raise BadInput(f"user: root only as --user root, never from a file [from {origin.get('user')}]")
    if config.env_file is not None:
        config = config.model_copy(update={"env": {**read_env_file(config.env_file), **config.env}})
    # Absolute: a relative state dir would move with the working directory (the detached
    # supervisor runs in /), and a relative socket path can name an abstract socket.
    state_dir = (config.state_dir or default_state_dir(environ)).absolute()
    check_trusted(state_dir, "state_dir")
    return config.model_copy(update={"state_dir": state_dir})


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines, `#` comments, values taken as written (as `docker --env-file` reads
    them: no quotes, no expansion), each checked as an --env is."""
    check_trusted(path, "env_file")
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BadInput(f"env_file: cannot read {path} ({exc.strerror})") from None
    pairs = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:  # the line is never echoed: it may hold a secret
            raise BadInput(f"env_file: line {number} of {path} is not KEY=VALUE")
        pairs[key.strip()] = value
    try:
        FleetConfig.model_validate({"env": pairs})
    except ValidationError as exc:
        message = re.sub(r"^Value error, ", "", exc.errors()[0]["msg"])
        raise BadInput(f"env_file: {path}: {message}") from None
    return pairs


def _check_loads_stay(config: FleetConfig, origin: Mapping[str, str]) -> None:
    """What `up` loads must stay loaded: a zero keep-alive would unload it at once."""
    zero = [
        (f"models.{model}.keep_alive", "models") if placed.keep_alive else ("keep_alive", "keep_alive")
        for model, placed in config.models.items()
        if unloads_at_once(placed.keep_alive or config.keep_alive)
    ]
    if config.preload and unloads_at_once(config.keep_alive):
        zero.insert(0, ("keep_alive", "keep_alive"))
    if zero:
        field, key = zero[0]
        source = f" [from {origin[key]}]" if key in origin else ""
        raise BadInput(
            f"{field}: 0 unloads a model after every request, so a preloaded or placed model would be loaded "
            f"and unloaded at once; give a duration (5m, 1h, -1 for forever) or drop the preload{source}"
        )


def _error_line(error: Mapping[str, Any], origin: Mapping[str, str]) -> str:
    loc = error["loc"]
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    # Only the first location part names a setting; unions add a type name we drop.
    field = re.sub(r"\.(function-after|function-before|literal|tuple|str|int|lax-or-strict)\[[^\]]*\]", "", field)
    field = field or "config"
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    else:
        message = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
    given = error.get("input")
    if isinstance(given, (str, int, float)) and error["type"] != "extra_forbidden" and loc:
        message += f" (got {str(given)[:60]!r})"
    source = origin.get(str(loc[0])) if loc else None
    return f"{field}: {message}" + (f" [from {source}]" if source else "")


def flag_of(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def reference_table() -> str:
    """The README's settings reference, generated from FleetConfig (a test keeps them equal)."""
    rows = ["| setting (TOML key) | flag | environment variable | default | meaning |", "|---|---|---|---|---|"]
    for name, field in FleetConfig.model_fields.items():
        default = field.get_default()
        if isinstance(default, Listen):
            default = str(default)
        elif isinstance(default, (tuple, dict)):
            default = default or "none"
        elif isinstance(default, bool):
            default = str(default).lower()
        default = "see meaning" if default is None else f"`{default}`"
        flag = flag_of(name)
        rows.append(f"| `{name}` | `{flag}` | `{ENV_PREFIX}{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows) + "\n"
