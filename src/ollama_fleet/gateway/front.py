"""The front: one HAProxy queue over many boxes' fleets (README "Many boxes").

Each box is a server whose `maxconn` is its slots, so requests wait here, at the front, and
a box never receives more than it can start. What a box serves comes from its own
`GET /fleet/info` (read by actions/front.py when the front renders); boxes found in DNS SRV
records join and leave through a `server-template`, without a reload. The front runs the
same HAProxy program as the box engine: start, reload and the runtime API are that
engine's; this module adds what differs, the spec, the config and the per-box view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ollama_fleet.config import FleetConfig
from ollama_fleet.errors import BadInput, UserError
from ollama_fleet.gateway import KeyStats
from ollama_fleet.gateway.haproxy import MODEL_PATHS, body_bytes, check_inputs, key_stats, stat_rows
from ollama_fleet.gateway.spec import INFO_SCHEMA, Tls, local_url, served_hosts, tls_of
from ollama_fleet.keys import ApiKey, queue_context, read_keys
from ollama_fleet.names import canonical, spellings
from ollama_fleet.values import Box, Listen, box_name, host_pattern, model_name

# Under systemd: its own config, unit and runtime dir, beside a box's gateway on one host.
INSTALLED_CONFIG = Path("/etc/ollama-fleet/front.cfg")
UNIT = "ollama-fleet-front.service"
UNIT_FILE = Path("/etc/systemd/system") / UNIT
RUN_DIR = Path("/run/ollama-fleet-front")
MAIN = "front_boxes"  # checks every box; every other backend tracks it
SRV_SERVERS = 32  # server-template slots: at most this many boxes from SRV records
SRV_PREFIX = "srv"  # their names: srv1, srv2, ...
# What the front passes to the boxes (ollama/ollama server/routes.go GenerateRoutes): generation,
# embeddings and metadata, decoded paths; /v1/models/<model> too. Everything else, model writes
# and the account routes included, is refused at the front.
SERVED = (
    "/",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/api/show",
    *MODEL_PATHS,
    "/v1/models",
    "/v1/audio/transcriptions",
)


class BoxInfo(BaseModel):
    """A box's `GET /fleet/info`, validated: it comes from the network and reaches the config."""

    model_config = ConfigDict(extra="ignore")
    schema_: int = Field(alias="schema")
    name: str
    version: str = "?"
    slots: int = Field(ge=1, le=4096)
    models: dict[str, int] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return box_name(value)

    @field_validator("models")
    @classmethod
    def _models(cls, value: dict[str, int]) -> dict[str, int]:
        for model, slots in value.items():
            model_name(model)
            if not 1 <= slots <= 4096:
                raise ValueError(f"{model}: slots must be 1-4096")
        return {canonical(model): slots for model, slots in value.items()}


class FrontBox(BaseModel):
    """One box as the front serves it."""

    model_config = ConfigDict(frozen=True)
    name: str  # its server name: X-Fleet-Box, `front drain NAME`
    url: str
    host: str
    address: str  # host:port
    tls: bool
    slots: int
    models: dict[str, int] = {}  # placed model -> its slots on this box
    described: bool  # a fleet's gateway (checked at /fleet/info), not a plain Ollama
    version: str | None = None


class SrvBoxes(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    slots: int
    resolver: str | None = None


class FrontRoute(BaseModel):
    model_config = ConfigDict(frozen=True)
    model: str
    names: tuple[str, ...]
    boxes: tuple[tuple[str, int], ...]  # (box name, its slots for the model)


class FrontSpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    boxes: tuple[FrontBox, ...]
    srv: SrvBoxes | None = None
    listen: Listen
    allow: tuple[str, ...]
    hosts: str = host_pattern(())  # the Host values it serves
    api_keys: tuple[ApiKey, ...]
    box_key: str | None
    read_timeout: int
    max_body_size: str
    tls: Tls | None
    drained: tuple[str, ...] = ()

    @property
    def probe_url(self) -> str:
        return local_url(self.listen, self.tls is not None)

    @property
    def file_mode(self) -> int:
        """Of the files that hold its keys, the clients' or the boxes' (its config, front.json)."""
        return 0o640 if self.api_keys or self.box_key else 0o644

    @property
    def routes(self) -> tuple[FrontRoute, ...]:
        """Per placed model, the boxes that carry it: requests for it go to them only."""
        models = sorted({model for box in self.boxes for model in box.models})
        return tuple(
            FrontRoute(
                model=model,
                names=spellings(model),
                boxes=tuple((box.name, box.models[model]) for box in self.boxes if model in box.models),
            )
            for model in models
        )


def described(box: Box, raw: Any) -> FrontBox:
    """A box from its `/fleet/info` answer; BadInput naming the box when it is not one."""
    try:
        info = BoxInfo.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadInput(
            f"boxes: {box} answers /fleet/info with something else than a box's description ({where}: "
            f"{first['msg']}); give its slots with --box {box},slots=N"
        ) from None
    if info.schema_ != INFO_SCHEMA:
        raise BadInput(f"boxes: {box} describes itself in schema {info.schema_}; this front reads {INFO_SCHEMA}")
    return FrontBox(
        name=info.name,
        url=box.url,
        host=box.host,
        address=box.address,
        tls=box.scheme == "https",
        slots=info.slots,
        models=info.models,
        described=True,
        version=info.version,
    )


def plain(box: Box) -> FrontBox:
    """A box given as `URL,slots=N`: a plain Ollama (checked at /api/version), or a box not
    asked to describe itself."""
    assert box.slots is not None
    return FrontBox(
        name=box.address.replace("[", "").replace("]", ""),
        url=box.url,
        host=box.host,
        address=box.address,
        tls=box.scheme == "https",
        slots=box.slots,
        described=False,
    )


def unique_names(boxes: list[FrontBox]) -> list[FrontBox]:
    """Two boxes that call themselves alike (two hosts named `gpu`) get `-2`, `-3` ..."""
    seen: dict[str, int] = {}
    result = []
    for box in boxes:
        count = seen[box.name] = seen.get(box.name, 0) + 1
        result.append(box if count == 1 else box.model_copy(update={"name": f"{box.name}-{count}"}))
    return result


def box_key(config: FleetConfig) -> str | None:
    if config.box_key_file is None:
        return None
    keys = read_keys(config.box_key_file, field="box_key_file")
    if len(keys) != 1:
        raise BadInput(f"box_key_file: {config.box_key_file} holds {len(keys)} keys; the front presents one")
    return keys[0].key


def spec_from(config: FleetConfig, boxes: list[FrontBox], drained: tuple[str, ...] = ()) -> FrontSpec:
    if not boxes and config.box_srv is None:
        raise BadInput("boxes: a front needs boxes: --box URL (repeatable) or --box-srv NAME --box-slots N")
    srv = None
    if config.box_srv is not None and config.box_slots is not None:
        srv = SrvBoxes(
            name=config.box_srv, slots=config.box_slots, resolver=str(config.resolver) if config.resolver else None
        )
    names = {box.name for box in boxes}
    return FrontSpec(
        boxes=tuple(boxes),
        srv=srv,
        listen=config.listen,
        allow=tuple(str(net) for net in config.allow),
        hosts=served_hosts(config),
        api_keys=read_keys(config.api_keys_file) if config.api_keys_file else (),
        box_key=box_key(config),
        read_timeout=config.read_timeout,
        max_body_size=config.max_body_size,
        tls=tls_of(config),
        drained=tuple(name for name in drained if name in names),
    )


def render(spec: FrontSpec, *, prefix: Path, config: Path | None = None, user: tuple[str, str] | None = None) -> str:
    """The front's haproxy.cfg: pure. `prefix` holds its pid file and admin socket."""
    from ollama_fleet.render import render as render_template

    check_inputs(prefix, spec.tls)
    return render_template(
        "front/haproxy.cfg.j2",
        spec=spec,
        routes=spec.routes,
        plain=[box for box in spec.boxes if not box.described],
        everyone=[(box.name, box.slots) for box in spec.boxes],
        by_name={box.name: box for box in spec.boxes},
        model_paths=MODEL_PATHS,
        served=SERVED,
        max_body_bytes=body_bytes(spec.max_body_size),
        **queue_context(spec.api_keys, spec.read_timeout),
        srv_servers=SRV_SERVERS,
        srv_prefix=SRV_PREFIX,
        main=MAIN,
        prefix=prefix,
        config=config,
        user=user,
    )


class BoxStats(BaseModel):
    state: str  # HAProxy's: UP, DOWN, DRAIN, MAINT, "UP 1/2" ...
    address: str | None
    in_flight: int  # requests the box is serving for the front, over every backend
    queued: int  # requests waiting at the front for this very box


class FrontStats(BaseModel):
    queued: int  # requests waiting at the front for any box with a free slot
    boxes: dict[str, BoxStats]
    keys: dict[str, KeyStats] = {}  # per key name, with named keys


def stats(sock: Path, keys: bool = True) -> FrontStats:
    """Per box (and per key name, unless `keys` is false: a wait on the boxes' states need
    not read the key tables), from the runtime API; UserError when HAProxy does not answer."""
    rows = stat_rows(sock)
    boxes: dict[str, BoxStats] = {}
    queued = 0
    for row in rows:
        if not row.get("pxname", "").startswith("front_"):
            continue
        if row["svname"] == "BACKEND":
            queued += int(row["qcur"] or 0)
            continue
        if row["svname"] == "FRONTEND":
            continue
        if row["svname"].startswith(SRV_PREFIX) and (not row.get("addr") or "resolution" in row["status"]):
            continue  # a server-template slot no SRV record fills (now): no box behind it
        previous = boxes.get(row["svname"])
        in_flight = int(row["scur"] or 0) + (previous.in_flight if previous else 0)
        waiting = int(row["qcur"] or 0) + (previous.queued if previous else 0)
        state = previous.state if previous and row["pxname"] != MAIN else row["status"]
        boxes[row["svname"]] = BoxStats(
            state=state, address=row.get("addr") or None, in_flight=in_flight, queued=waiting
        )
    if not boxes and not rows:
        raise UserError(f"the front's HAProxy does not answer on {sock}")
    return FrontStats(queued=queued, boxes=boxes, keys=key_stats(sock) if keys else {})
