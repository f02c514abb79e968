"""Templates: one Jinja Environment, and RenderedFile, which only the CLI writes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ollama_fleet import __version__

if TYPE_CHECKING:
    import jinja2


@dataclass(frozen=True)
class RenderedFile:
    path: Path
    content: str
    mode: int = 0o644


def templates_dir() -> Path:
    """Inside the installed package (wheel), else the repository's top-level templates/."""
    packaged = resources.files("ollama_fleet") / "templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "templates"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    # Imported here: `up --no-gateway`, `down` and `status` render nothing, and jinja2 is
    # ~15 ms of their start-up (docs/architecture.md, "Start-up").
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        # A missing variable is a bug in our code, never an empty directive in a config.
        undefined=jinja2.StrictUndefined,
        # Config files end with a newline; Jinja would drop it.
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["regex_escape"] = re.escape
    env.filters["systemd_escape"] = systemd_escape
    env.filters["env_quote"] = env_quote
    env.globals["version"] = __version__
    return env


def systemd_escape(value: object) -> str:
    """A value in a unit file: systemd expands %-specifiers there, so a literal % is %%."""
    return str(value).replace("%", "%%")


def env_quote(value: str) -> str:
    """A value in an EnvironmentFile=: double-quoted, with \\ " $ ` escaped by a backslash.

    systemd reads EnvironmentFile= as a shell reads this subset, and expands no %-specifiers
    there, so % stays single; values never hold a newline (config.py rejects them).
    """
    escaped = "".join("\\" + c if c in '\\"$`' else c for c in value)
    return f'"{escaped}"'


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)
