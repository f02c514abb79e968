"""systemd units and env files from the plan; install and uninstall them with a manifest.

`render_units()` is pure. `install()` / `uninstall()` write under a root (`/`, or a staging
dir for packaging and tests) and, when given a `Systemctl`, tell systemd. The manifest
(`/etc/ollama-fleet/manifest.json`) records every file install wrote, so uninstall removes
exactly those, and the instances, so `status` finds a systemd-managed fleet.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import pwd
import stat
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from pydantic import BaseModel

from ollama_fleet.config import Placement
from ollama_fleet.errors import Missing, UserError
from ollama_fleet.gateway import Engine, GatewaySpec, require_tool, secret_mode
from ollama_fleet.plan import GpuRef, Instance
from ollama_fleet.render import RenderedFile, render
from ollama_fleet.state import write_atomic

UNIT_DIR = PurePosixPath("/etc/systemd/system")
CONF_DIR = PurePosixPath("/etc/ollama-fleet")
NGINX_SNIPPET = PurePosixPath("/etc/nginx/conf.d/ollama-fleet.conf")
HAPROXY_CFG = CONF_DIR / "haproxy.cfg"
GATEWAY_UNIT = "ollama-fleet-gateway.service"
NGINX_UNIT = "nginx.service"
RUN_DIR = PurePosixPath("/run/ollama-fleet")  # the gateway unit's RuntimeDirectory=
MANIFEST = CONF_DIR / "manifest.json"
TEMPLATE_UNIT = "ollama-fleet@.service"
TARGET = "ollama-fleet.target"
DEFAULT_USER = "ollama"  # as the official installer


def unit_of(name: str) -> str:
    return f"ollama-fleet@{name}.service"


def useradd_hint(user: str) -> str:
    return (
        f"useradd --system --user-group --create-home --home-dir /usr/share/ollama --shell /usr/sbin/nologin {user}"
    )


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
    instances: tuple[Instance, ...], service: Service, gateway: Sequence[RenderedFile] = ()
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
        RenderedFile(Path(UNIT_DIR / TARGET), render(
            "systemd/ollama-fleet.target.j2", instances=instances,
            gateway_unit=GATEWAY_UNIT if any(f.path == Path(UNIT_DIR / GATEWAY_UNIT) for f in gateway) else None,
        )),
    ]
    # 0600: --env values may be tokens; systemd reads the file as root.
    files += [
        RenderedFile(Path(CONF_DIR / f"{i.name}.env"), render("systemd/instance.env.j2", name=i.name, env=i.env), 0o600)
        for i in instances
    ]
    return files + list(gateway)


@dataclass(frozen=True)
class GatewayInstall:
    """The gateway's files, what to tell systemd when one changes, and what the manifest says."""

    files: tuple[RenderedFile, ...]
    reloads: dict[str, tuple[str, ...]]  # path -> systemctl arguments to run when it changed
    manifest: ManifestGateway
    unit: str  # the systemd unit that serves it (its journal explains a failure)


def gateway_install(engine: Engine, spec: GatewaySpec, haproxy_user: tuple[str, str] | None) -> GatewayInstall:
    """nginx: a snippet in the distribution's conf.d, reloaded with nginx. HAProxy: its own
    config and unit (DESIGN.md §6). Either is checked by the engine before it is written."""
    mode = secret_mode(spec)
    if engine.name == "nginx":
        content = engine.render(spec, standalone=False, prefix=Path(RUN_DIR))
        engine.check(content, standalone=False)
        return GatewayInstall(
            files=(RenderedFile(Path(NGINX_SNIPPET), content, mode),),
            reloads={str(NGINX_SNIPPET): ("reload", NGINX_UNIT)},
            manifest=ManifestGateway(engine="nginx", listen=str(spec.listen), url=spec.probe_url),
            unit=NGINX_UNIT,
        )
    content = engine.render(spec, standalone=True, prefix=Path(RUN_DIR), user=haproxy_user)
    engine.check(content, standalone=True)
    unit = render("systemd/ollama-fleet-gateway.service.j2", haproxy=require_tool("haproxy"), config=HAPROXY_CFG)
    return GatewayInstall(
        files=(RenderedFile(Path(HAPROXY_CFG), content, mode), RenderedFile(Path(UNIT_DIR / GATEWAY_UNIT), unit)),
        # try-: a gateway this install is about to start is started by `enable --now` instead.
        reloads={str(HAPROXY_CFG): ("try-reload-or-restart", GATEWAY_UNIT)},
        manifest=ManifestGateway(engine="haproxy", listen=str(spec.listen), url=spec.probe_url, prefix=Path(RUN_DIR)),
        unit=GATEWAY_UNIT,
    )


# ------------------------------------------------------------------ manifest


class ManifestGateway(BaseModel):
    engine: str
    listen: str
    url: str
    prefix: Path | None = None  # its runtime files (HAProxy's admin socket)


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


# ------------------------------------------------------------------ systemctl (the seam)


class Systemctl:
    """`systemctl`, refusing early when it is absent or systemd is not the init system."""

    def __init__(self, path: str | None) -> None:
        hint = "stage the files with --root DIR, or write them without starting anything with --no-enable"
        if path is None:
            raise Missing(f"systemctl not found: this machine does not run systemd; {hint}")
        self.path = path
        state = subprocess.run([path, "is-system-running"], capture_output=True, text=True).stdout.strip()
        # offline: systemd is not PID 1 (a container, another init). "degraded" is fine.
        if state in ("offline", "unknown", ""):
            raise Missing(f"systemd is not the init system here (systemctl is-system-running: {state or 'no answer'}); {hint}")

    def __call__(self, *args: str) -> None:
        proc = subprocess.run([self.path, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()
            raise UserError(f"systemctl {' '.join(args)} failed: {detail[-1] if detail else f'exit {proc.returncode}'}")

    def is_active(self, unit: str) -> bool:
        return subprocess.run([self.path, "is-active", "--quiet", unit], capture_output=True).returncode == 0


def unit_facts(unit: str) -> dict[str, str]:
    """`systemctl show` of a unit (MainPID, NRestarts, InvocationID, ...): readable by any
    user, unlike the listening sockets of another user's processes. Empty without systemd."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return {}
    shown = subprocess.run([systemctl, "show", "-p", "MainPID", "-p", "NRestarts", "-p", "InvocationID", unit],
                           capture_output=True, text=True)
    if shown.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


def journal_tail(unit: str, lines: int = 10) -> str:
    """The unit's last journal lines, indented, to explain a failure ("" when unreadable)."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return ""
    proc = subprocess.run([journalctl, "-u", unit, "-n", str(lines), "-o", "cat", "--no-pager", "-q"],
                          capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines() if proc.returncode == 0 else []
    return f"; last lines of journalctl -u {unit}:\n" + "\n".join("    " + line for line in tail) if tail else ""


def wait_started(instances: tuple[Instance, ...], gateway_url: str | None, gateway_unit: str | None,
                 timeout: float) -> list[str]:
    """After `enable --now`: every instance answers GET /api/version on its own GPUs (its
    journal's "inference compute" lines) and the gateway answers, within `timeout`; else
    what did not, with its journal's last lines."""
    from ollama_fleet import pinning, probe

    pending = {i.address: i for i in instances}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        answered = probe.versions(list(pending), timeout=1.0)
        for address, version in answered.items():
            if version is not None:
                pending.pop(address)
        if pending:
            time.sleep(0.2)
    problems = [f"{i.name} did not answer GET /api/version within {timeout:g}s{journal_tail(unit_of(i.name))}"
                for i in pending.values()]
    answering = [i for i in instances if i.address not in pending]
    found = {}
    for inst in answering:
        lines = journal_lines(unit_of(inst.name))
        found[inst.name] = pinning.devices(lines) if lines is not None else None
    wrong, _ = pinning.check(answering, found)
    problems += [why + journal_tail(unit_of(name)) for name, why in wrong.items()]
    if gateway_url is not None and not probe.gateway_answers(gateway_url, max(1.0, deadline - time.monotonic())):
        problems.append(f"the gateway did not answer on {gateway_url}{journal_tail(gateway_unit or NGINX_UNIT)}")
    return problems


def journal_lines(unit: str) -> list[str] | None:
    """What the unit's current run wrote (its journal entries under its InvocationID), or
    None where the journal cannot tell (no systemd, or no right to read it: as a user, join
    the systemd-journal group)."""
    invocation = unit_facts(unit).get("InvocationID")
    journalctl = shutil.which("journalctl")
    if not invocation or journalctl is None:
        return None
    proc = subprocess.run([journalctl, f"_SYSTEMD_INVOCATION_ID={invocation}", "-o", "cat", "--no-pager", "-q"],
                          capture_output=True, text=True)
    return proc.stdout.splitlines() if proc.returncode == 0 else None


# ------------------------------------------------------------------ install / uninstall


@dataclass
class InstallReport:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # instances new to the fleet
    restarted: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    diff: str = ""
    notes: list[str] = field(default_factory=list)  # what it did beyond the fleet's own units


def _current(path: Path) -> tuple[str, int] | None:
    try:
        return path.read_text(), stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def _diff(path: str, current: tuple[str, int] | None, new: RenderedFile, redact: Callable[[str], str]) -> str:
    """A unified diff with secrets redacted; a change of secrets alone is said, not shown."""
    old = current[0] if current else ""
    lines = lambda text: text.splitlines(keepends=True)  # noqa: E731
    diff = "".join(
        difflib.unified_diff(lines(redact(old)), lines(redact(new.content)), "/dev/null" if current is None else path, path)
    )
    raw = difflib.unified_diff(lines(old), lines(new.content), n=0)
    if any(line[:1] in "+-" and line[:3] not in ("+++", "---") and redact(line[1:]) != line[1:] for line in raw):
        diff += f"{path}: API keys change (not shown)\n"
    if current is not None and current[1] != new.mode:
        diff += f"mode of {path}: {current[1]:04o} -> {new.mode:04o}\n"
    return diff


def install(
    files: list[RenderedFile],
    instances: tuple[Instance, ...],
    gateway: ManifestGateway | None,
    *,
    root: Path,
    dry_run: bool = False,
    systemctl: Systemctl | None = None,
    redact: Callable[[str], str] = str,
    reloads: dict[str, tuple[str, ...]] | None = None,
    models: dict[str, Placement] | None = None,
) -> InstallReport:
    """Write what changed (atomically), remove what the last install wrote and this one does
    not, then (with a systemctl) reload systemd and restart only what changed."""
    report = InstallReport()
    old = read_manifest(root)
    changed: set[str] = set()
    for f in files:
        target = on_root(root, f.path)
        current = _current(target)
        if current == (f.content, f.mode):
            report.unchanged.append(str(f.path))
            continue
        changed.add(str(f.path))
        report.written.append(str(f.path))
        if dry_run:
            report.diff += _diff(str(f.path), current, f, redact)
        else:
            write_atomic(target, f.content, f.mode)
    new_paths = {str(f.path) for f in files}
    stale = sorted(set(old.files) - new_paths) if old else []
    for path in stale:
        report.removed.append(path)
        if dry_run:
            report.diff += f"removed: {path}\n"
        else:
            on_root(root, Path(path)).unlink(missing_ok=True)

    old_names = {i.name for i in old.instances} if old else set()
    names = [i.name for i in instances]
    report.stopped = sorted(old_names - set(names))
    report.started = [n for n in names if n not in old_names]
    template_changed = str(UNIT_DIR / TEMPLATE_UNIT) in changed
    report.restarted = [
        n for n in names if n in old_names and (template_changed or str(CONF_DIR / f"{n}.env") in changed)
    ]
    if dry_run:
        return report
    manifest = Manifest(
        files={str(f.path): _digest(f.content) for f in files},
        instances=tuple(Member(name=i.name, host=i.host, port=i.port, gpus=i.gpus) for i in instances),
        gateway=gateway,
        models=models or {},
    ).model_dump_json(indent=2)
    if _current(on_root(root, MANIFEST)) != (manifest, 0o644):
        write_atomic(on_root(root, MANIFEST), manifest)
    if systemctl is not None:
        units_changed = any(p.startswith(str(UNIT_DIR)) for p in [*changed, *stale])
        if report.stopped:
            systemctl("stop", *map(unit_of, report.stopped))
        if units_changed:
            systemctl("daemon-reload")
        if report.restarted:
            # Applies a changed env file or unit; a stream in flight on it is cut (plain restart).
            systemctl("try-restart", *map(unit_of, report.restarted))
        if str(UNIT_DIR / GATEWAY_UNIT) in changed and old and str(UNIT_DIR / GATEWAY_UNIT) in old.files:
            systemctl("try-restart", GATEWAY_UNIT)
        systemctl("enable", "--now", TARGET)
        # A gateway that moves (nginx <-> HAProxy) hands the port over with no gap: both
        # listen with SO_REUSEPORT, so the new one binds beside the old, which goes after.
        if str(NGINX_SNIPPET) in new_paths:
            _ensure_nginx(systemctl, report, reload=str(NGINX_SNIPPET) in changed)
        for path, args in (reloads or {}).items():
            if path in changed and path != str(NGINX_SNIPPET):
                systemctl(*args)
        if str(UNIT_DIR / GATEWAY_UNIT) in stale:  # the gateway moved to nginx
            systemctl("stop", GATEWAY_UNIT)
        if str(NGINX_SNIPPET) in stale:  # the gateway moved away from nginx
            systemctl("reload", NGINX_UNIT)
    return report


def _ensure_nginx(systemctl: Systemctl, report: InstallReport, reload: bool) -> None:
    """The snippet is served only by a running nginx: reload it when the snippet changed,
    and start it when it is not running (every install checks, so a second run mends what
    a failed first one left)."""
    if not systemctl.is_active(NGINX_UNIT):
        systemctl("start", NGINX_UNIT)
        report.notes.append(f"{NGINX_UNIT} was not running: started it")
    elif reload:
        systemctl("reload", NGINX_UNIT)


def uninstall(root: Path, systemctl: Systemctl | None = None) -> list[str] | None:
    """Stop and disable the fleet, remove exactly the files the manifest lists (and the
    manifest). Returns the removed paths, or None when nothing is installed."""
    manifest = read_manifest(root)
    if manifest is None:
        return None
    if systemctl is not None:
        systemctl("disable", "--now", TARGET)  # PartOf=: stopping the target stops every instance
    removed = []
    for path in sorted(manifest.files):
        target = on_root(root, Path(path))
        if target.exists():
            target.unlink()
            removed.append(path)
    on_root(root, MANIFEST).unlink()
    conf_dir = on_root(root, CONF_DIR)
    if conf_dir.is_dir() and not any(conf_dir.iterdir()):
        conf_dir.rmdir()
    if systemctl is not None:
        systemctl("daemon-reload")
        if str(NGINX_SNIPPET) in manifest.files:
            systemctl("reload", "nginx.service")
    return removed


# ------------------------------------------------------------------ the service user


def service_account(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise Missing(f"user: no user {user!r} to run the instances; create it ({useradd_hint(user)}) or pass --user") from None


def can_use(path: Path, account: pwd.struct_passwd) -> bool:
    """Whether this user may read and write the dir, every parent on the way included."""
    return can_use_dir(path, account, os.R_OK | os.W_OK | os.X_OK)


def can_use_dir(path: Path, account: pwd.struct_passwd, mode: int) -> bool:
    """access(path, mode) as the user: asked of the kernel itself, in a child process that
    becomes the user."""
    pid = os.fork()
    if pid == 0:  # the child: become the user, ask, exit with the answer
        try:
            os.setgroups(os.getgrouplist(account.pw_name, account.pw_gid))
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            os._exit(0 if os.access(path, mode) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def why_not_usable(path: Path, account: pwd.struct_passwd) -> str:
    """Why the user cannot use the dir, said once: a parent it can never pass (/root is
    0700), or the dir itself, which a chown mends."""
    for parent in reversed(path.parents):
        if not can_use_dir(parent, account, os.X_OK):
            mode = stat.S_IMODE(parent.stat().st_mode) if parent.exists() else 0
            return (f"user {account.pw_name} can never reach {path}: {parent} (mode {mode:04o}) does not let it "
                    f"through; put the models elsewhere (--models-dir {home_of(account.pw_name)}/.ollama/models), "
                    "or pass --user")
    return f"user {account.pw_name} cannot read and write {path} (chown -R {account.pw_name}: {path}, or pass --user)"


def prepare_home(account: pwd.struct_passwd) -> None:
    """~/.ollama of the service user, owned by it: Ollama writes its key there at start
    (cmd/cmd.go initializeKeypair) and exits when it cannot."""
    home = Path(account.pw_dir)
    if not home.is_dir():
        raise Missing(
            f"user: the home of {account.pw_name}, {home}, does not exist; Ollama keeps its key in ~/.ollama "
            f"(mkdir -p {home} && chown {account.pw_name}: {home}, or pass --user)"
        )
    state = home / ".ollama"
    if not state.is_dir():
        state.mkdir(mode=0o755)
        os.chown(state, account.pw_uid, account.pw_gid)


def group_of(user: str) -> str:
    """The user's primary group, or a group of the same name (useradd --user-group)."""
    import grp

    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


def home_of(user: str) -> Path:
    try:
        return Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        return Path("/usr/share/ollama")  # the official installer's home for `ollama`


def haproxy_user() -> tuple[str, str]:
    """Who the HAProxy gateway's workers run as: the distribution's `haproxy` user, else nobody."""
    import grp

    for name in ("haproxy", "nobody"):
        try:
            account = pwd.getpwnam(name)
            return account.pw_name, grp.getgrgid(account.pw_gid).gr_name
        except KeyError:
            continue
    return "nobody", "nogroup"


def is_root() -> bool:
    return os.geteuid() == 0
