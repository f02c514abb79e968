"""API keys, named: who may use a gateway (box or front), at which priority, within which
limits. Read from the keys file, one key per line with optional fields

    sk-alice-0123456789 name=alice priority=interactive max_concurrent=8 rate=120/m
    sk-nightly-987654321 name=embedder priority=batch

or, in a `.toml` file, one table per name: `[alice] key = "sk-..." priority = "interactive"`.
A key is checked so it cannot break out of a config; a name is what logs, status and
metrics show (never the key). Bad input is one line naming the line (or table), never the
key."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ollama_fleet.errors import BadInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Ubuntu 22.04 ships Python 3.10
    import tomli as tomllib

# RFC 6750 bearer token characters: nothing that could end a quoted nginx or HAProxy string.
# At least 16 characters: a short key is guessed through the gateway's own answers.
KEY = re.compile(r"[A-Za-z0-9._~+/=-]{16,200}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
RATE = re.compile(r"(\d{1,9})/(s|m|h)")
PERIOD = {"s": 1, "m": 60, "h": 3600}
# HAProxy serves a lower class first (set-priority-class): interactive before normal before batch.
PRIORITY_CLASS = {"interactive": -1, "normal": 0, "batch": 1}
FIELDS = ("name", "priority", "max_concurrent", "rate")


class Rate(BaseModel):
    model_config = ConfigDict(frozen=True)
    requests: int = Field(ge=1)
    period: int  # seconds: 1, 60 or 3600

    def __str__(self) -> str:
        unit = {v: k for k, v in PERIOD.items()}[self.period]
        return f"{self.requests}/{unit}"

    @property
    def retry_after(self) -> int:
        """Seconds until a request would fit again, at most, for Retry-After."""
        return max(1, -(-self.period // self.requests))


class ApiKey(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # Anchored: pydantic's pattern matches anywhere in the value.
    key: str = Field(pattern=f"^{KEY.pattern}$")
    name: str = Field(pattern=f"^{NAME.pattern}$")
    priority: Literal["interactive", "normal", "batch"] = "normal"
    max_concurrent: int | None = Field(None, ge=1, le=100_000)
    rate: Rate | None = None

    @property
    def priority_class(self) -> int:
        return PRIORITY_CLASS[self.priority]

    def rules(self) -> tuple[Any, ...]:
        """What the key's name stands for: keys sharing a name must agree on it."""
        return (self.priority, self.max_concurrent, self.rate)


def parse_rate(text: str) -> Rate:
    match = RATE.fullmatch(text)
    if not match:
        raise ValueError("rate is N/s, N/m or N/h (requests per second, minute or hour)")
    return Rate(requests=int(match[1]), period=PERIOD[match[2]])


def _entry(fields: dict[str, Any], number: int) -> ApiKey:
    values = dict(fields)
    values.setdefault("name", f"key{number}")
    if isinstance(values.get("rate"), str):
        values["rate"] = parse_rate(values["rate"])
    return ApiKey.model_validate(values)


def _problem(exc: Exception) -> str:
    """What is wrong, without echoing any value (it may be a secret with a typo)."""
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "key"
        if field == "key":
            return "the key is not 16-200 of A-Z a-z 0-9 . _ ~ + / = - (a # in a key is refused, not cut)"
        if error["type"] == "extra_forbidden":
            return f"unknown field {field!r} (fields: {', '.join(FIELDS)})"
        message = re.sub(r"^Value error, ", "", error["msg"])
        return f"{field}: {message}"
    return str(exc)


def _lines(text: str, field: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        # A comment starts a line or follows a space: a `#` inside a key is part of it (and
        # refused), never a silent cut to a shorter key that works.
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        key, *pairs = line.split()
        fields: dict[str, Any] = {"key": key}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep:  # never echoed: it may be half of a key with a space in it
                raise BadInput(
                    f"{field}: line {number} of {path}: after the key come field=value pairs "
                    f"({', '.join(FIELDS)}), separated by spaces"
                )
            fields[name] = value
        entries.append((number, fields))
    return entries


def read_keys(path: Path, field: str = "api_keys_file") -> tuple[ApiKey, ...]:
    """Every key of the file, checked; BadInput naming the line (or table) of the first bad one."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"{field}: cannot read {path} ({exc.strerror})") from None
    where = "line"
    try:
        if path.suffix == ".toml":
            where = "table"
            tables = tomllib.loads(text)
            entries: list[tuple[Any, dict[str, Any]]] = [
                (name, {"name": name, **table}) if isinstance(table, dict) else (name, {"key": None})
                for name, table in tables.items()
            ]
        else:
            entries = list(_lines(text, field, path))
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{field}: {path} is not TOML ({exc})") from None
    keys: list[ApiKey] = []
    names: dict[str, ApiKey] = {}
    for n, (label, fields) in enumerate(entries, 1):
        try:
            entry = _entry(fields, n)
        except (ValidationError, ValueError) as exc:
            raise BadInput(f"{field}: {where} {label} of {path}: {_problem(exc)}") from None
        if entry.name in names and names[entry.name].rules() != entry.rules():
            raise BadInput(
                f"{field}: {where} {label} of {path}: name {entry.name!r} is given again with other "
                "priority or limits (keys that share a name share its limits)"
            )
        names.setdefault(entry.name, entry)
        if all(k.key != entry.key for k in keys):
            keys.append(entry)
    if not keys:
        raise BadInput(f"{field}: {path} holds no key")
    return tuple(keys)


def tenants(keys: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
    """One key per name: the rules each name stands for."""
    seen: dict[str, ApiKey] = {}
    for key in keys:
        seen.setdefault(key.name, key)
    return tuple(seen.values())


# HAProxy orders its queue by priority class with a clock that wraps for requests queued
# longer than ~524 s: with classes on, no request may wait that long.
PRIORITY_QUEUE_MAX = 520


def queue_context(keys: tuple[ApiKey, ...], read_timeout: int) -> dict[str, Any]:
    """What an HAProxy template needs of the keys: one rule set per name, the rate periods
    (one stick table each), and the queue timeout (kept under the priority clock's wrap)."""
    named = tenants(keys)
    prioritized = any(t.priority != "normal" for t in named)
    return {
        "tenants": named,
        "rate_periods": sorted({t.rate.period for t in named if t.rate}),
        "queue_timeout": min(read_timeout, PRIORITY_QUEUE_MAX) if prioritized else read_timeout,
    }
