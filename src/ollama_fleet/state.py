"""The state dir: what `up` asked for (fleet.json), what the supervisor runs (supervisor.json).

Each file has one writer and is replaced atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ValidationError

from ollama_fleet.errors import UserError
from ollama_fleet.pinning import Device
from ollama_fleet.plan import Instance
from ollama_fleet.values import Placement

DESIRED = "fleet.json"  # written by `up`
ACTUAL = "supervisor.json"  # written by the supervisor
SUPERVISOR_LOG = "supervisor.log"
# The files of the state dir: what they say (a fleet's --env values, API keys, request
# paths in logs) is its owner's alone.
PRIVATE = 0o600


def write_atomic(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Write a temp file beside `path`, then rename it over: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_log(path: Path) -> int:
    """A log of the state dir opened for appending, as a file descriptor: never through a
    link (someone who could plant one would have root append to a file of their choice),
    and private (0600, also when an older version left it 0644)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, PRIVATE)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        path.unlink()  # a link where a log belongs is not ours: the log takes its place
        fd = os.open(path, flags | os.O_EXCL, PRIVATE)
    os.fchmod(fd, PRIVATE)
    return fd


def write_changed(path: Path, content: str, mode: int = 0o644) -> bool:
    """Write atomically; True when the content differs from what was there."""
    changed = not path.exists() or path.read_text() != content
    write_atomic(path, content, mode)
    return changed


class ProcessRecord(BaseModel):
    """A pid and its create time: together they name one process, even after pid reuse."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        return cls(pid=pid, create_time=psutil.Process(pid).create_time())

    def process(self) -> psutil.Process | None:
        """The live process this record names, or None if it is gone or the pid was reused."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None


class Desired(BaseModel):
    """What `up` asked for: the instances and how to start them."""

    state_format: int = 1
    instances: tuple[Instance, ...]
    ollama_bin: str  # absolute
    user: str | None  # run instances as this user (only when the supervisor is root)
    # What to load after a (re)start, as (instance, model, keep_alive), and where models live.
    loads: tuple[tuple[str, str, str], ...] = ()
    models: dict[str, Placement] = {}
    # Bumped by `restart`: a new generation is a changed spec, which the supervisor restarts.
    generations: dict[str, int] = {}
    # Instances the supervisor keeps running on their old spec for now (`up --rolling`
    # releases them one at a time, each drained first).
    hold: tuple[str, ...] = ()

    # The rolling-restart protocol, in one place: a restart is a new generation of an
    # instance (a changed fingerprint, which the supervisor restarts); `up --rolling` holds
    # changed instances on their old plan and releases them one at a time, each drained first.
    def restarted(self, names: list[str]) -> Desired:
        bumped = {n: self.generations.get(n, 0) + 1 for n in names}
        return self.model_copy(update={"generations": {**self.generations, **bumped}})

    def holding(self, names: tuple[str, ...]) -> Desired:
        return self.model_copy(update={"hold": names})

    def released(self, names: list[str]) -> Desired:
        return self.model_copy(update={"hold": tuple(n for n in self.hold if n not in names)})

    def fingerprint(self, instance: Instance) -> str:
        """A hash of everything that, when it changes, means the instance must be restarted."""
        parts: list[Any] = [instance.model_dump(mode="json"), self.ollama_bin, self.user]
        if self.generations.get(instance.name):
            parts.append(self.generations[instance.name])
        text = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class InstanceState(BaseModel):
    name: str
    port: int
    spec: str  # the fingerprint of the plan it runs (Desired.fingerprint)
    pid: int | None = None
    create_time: float | None = None
    started_at: float | None = None  # wall clock, for uptime
    exits: int = 0  # how many times it exited (or failed to start) under this supervisor
    last_exit: str | None = None
    # The devices this start of Ollama said it uses ("inference compute"); None until then.
    devices: list[Device] | None = None

    @property
    def record(self) -> ProcessRecord | None:
        if self.pid is None or self.create_time is None:
            return None
        return ProcessRecord(pid=self.pid, create_time=self.create_time)


class Actual(BaseModel):
    """What the supervisor runs now."""

    state_format: int = 1
    supervisor: ProcessRecord
    foreground: bool = False
    instances: dict[str, InstanceState] = {}


def _read(path: Path, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        raise UserError(
            f"state file {path} is unreadable ({exc.__class__.__name__}); remove it to start afresh"
        ) from None


def read_desired(state_dir: Path) -> Desired | None:
    return _read(state_dir / DESIRED, Desired)


def read_actual(state_dir: Path) -> Actual | None:
    return _read(state_dir / ACTUAL, Actual)


def write_model(path: Path, value: BaseModel, mode: int = PRIVATE) -> None:
    write_atomic(path, value.model_dump_json(indent=2), mode)


GATEWAY = "gateway.json"  # written by `up`


class GatewayState(BaseModel):
    """The gateway `up` runs, or why it runs none."""

    engine: str | None  # None: running without a gateway
    reason: str | None = None
    process: ProcessRecord | None = None
    prefix: Path | None = None
    config: Path | None = None
    url: str | None = None
    listen: str | None = None
    # What it was rendered from (a GatewaySpec, API keys included: this file is then 0640)
    # and for whom, so `restart --rolling` can re-render it with an instance drained.
    spec: dict[str, Any] | None = None
    worker: tuple[str, str] | None = None


def read_gateway(state_dir: Path) -> GatewayState | None:
    return _read(state_dir / GATEWAY, GatewayState)


FRONT = "front.json"  # in <state_dir>/front, written by actions/front.py


class FrontState(BaseModel):
    """The front: the HAProxy `front up` runs (process None: installed under systemd), and
    what it was rendered from (a FrontSpec, keys included: this file is then 0640)."""

    process: ProcessRecord | None = None
    unit: str | None = None  # the systemd unit, when installed
    prefix: Path  # its admin socket and pid file
    config: Path
    url: str
    spec: dict[str, Any]


def read_front(front_dir: Path) -> FrontState | None:
    return _read(front_dir / FRONT, FrontState)
