"""systemd units and env files from the plan (pure), and the install manifest.

`render_units()` is pure: the files install-systemd writes, at their absolute paths. The
manifest (`/etc/ollama-fleet/manifest.json`) records every file install wrote, so uninstall
removes exactly those, and the instances and gateway, so `status`, `restart` and `logs` find
a systemd-managed fleet. Writing and telling systemd is `actions/install.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydantic import BaseModel

from ollama_fleet.errors import UserError
from ollama_fleet.gateway import InstallLayout
from ollama_fleet.plan import GpuRef, Instance
from ollama_fleet.render import RenderedFile, render
from ollama_fleet.values import Placement

UNIT_DIR = PurePosixPath("/etc/systemd/system")
CONF_DIR = PurePosixPath("/etc/ollama-fleet")
MANIFEST = CONF_DIR / "manifest.json"
TEMPLATE_UNIT = "ollama-fleet@.service"
TARGET = "ollama-fleet.target"
DEFAULT_USER = "ollama"  # as the official installer


def unit_of(name: str) -> str:
    return f"ollama-fleet@{name}.service"


# ------------------------------------------------------------------ pure rendering


@dataclass(frozen=True)
class Service:
    """Who runs the instances and where they keep their files."""

    ollama_bin: str  # absolute
    user: str
    group: str
    models_dir: Path
    home: Path  # the user's home: Ollama keeps its key in ~/.ollama


def render_units(
    instances: tuple[Instance, ...], service: Service, gateway: InstallLayout | None = None
) -> list[RenderedFile]:
    """Every file install-systemd writes, at its absolute path on the target system."""
    models = service.models_dir.absolute()
    protect_home = not any(models.is_relative_to(p) for p in ("/home", "/root")) and not any(
        service.home.is_relative_to(p) for p in ("/home", "/root")
    )
    unit = render(
        "systemd/ollama-fleet@.service.j2",
        conf_dir=CONF_DIR,
        ollama_bin=service.ollama_bin,
        user=service.user,
        group=service.group,
        models_dir=models,
        state_home=service.home / ".ollama",
        protect_home=protect_home,
    )
    files = [
        RenderedFile(Path(UNIT_DIR / TEMPLATE_UNIT), unit),
        RenderedFile(
            Path(UNIT_DIR / TARGET),
            render(
                "systemd/ollama-fleet.target.j2",
                instances=instances,
                # A gateway unit of the fleet's own starts and stops with it.
                gateway_unit=gateway.unit if gateway is not None and gateway.owned else None,
            ),
        ),
    ]
    # 0600: --env values may be tokens; systemd reads the file as root.
    files += [
        RenderedFile(Path(CONF_DIR / f"{i.name}.env"), render("systemd/instance.env.j2", name=i.name, env=i.env), 0o600)
        for i in instances
    ]
    return files + list(gateway.files if gateway is not None else ())


# ------------------------------------------------------------------ manifest


class ManifestGateway(BaseModel):
    engine: str
    listen: str
    url: str
    prefix: Path | None = None  # its runtime files (an admin socket)
    unit: str = ""  # the systemd unit that serves it
    owned: bool = False  # a unit of the fleet's own (True), or a system service it drops a file into


class Member(BaseModel):
    """An installed instance, as `status` needs it (its env stays in its 0600 env file)."""

    name: str
    host: str
    port: int
    gpus: tuple[GpuRef, ...]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Manifest(BaseModel):
    """What install-systemd wrote: its files (path -> sha256) and the fleet they run."""

    manifest_format: int = 1
    files: dict[str, str]
    instances: tuple[Member, ...]
    gateway: ManifestGateway | None = None
    models: dict[str, Placement] = {}  # where each placed model lives
    # What to load after a (re)start, as (instance, model, keep_alive): placed models and
    # --preload (plan.loads). Empty in a manifest from before it was recorded.
    loads: tuple[tuple[str, str, str], ...] = ()


def on_root(root: Path, path: Path | PurePosixPath) -> Path:
    return root / str(path).lstrip("/")


def read_manifest(root: Path = Path("/")) -> Manifest | None:
    path = on_root(root, MANIFEST)
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"install manifest {path} is unreadable ({exc.__class__.__name__})") from None


def _digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()
