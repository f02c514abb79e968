"""`install-systemd` / `uninstall-systemd`: the fleet as systemd units, written under a root
(`/`, or a staging dir for packaging and tests) with a manifest of every file, then systemd
told what changed, then each instance and the gateway asked whether they came up."""

from __future__ import annotations

import difflib
import pwd
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ollama_fleet import accounts, pinning, probe
from ollama_fleet.actions import Progress
from ollama_fleet.config import FleetConfig
from ollama_fleet.errors import Missing, UserError
from ollama_fleet.fleet import wait_installed
from ollama_fleet.gateway import InstallLayout
from ollama_fleet.plan import Instance, ModelsDir, loads
from ollama_fleet.processes import find_tool, resolve_binary
from ollama_fleet.render import RenderedFile
from ollama_fleet.state import write_atomic
from ollama_fleet.systemctl import Systemctl, journal_lines, journal_tail
from ollama_fleet.systemd import (
    CONF_DIR,
    DEFAULT_USER,
    MANIFEST,
    TARGET,
    TEMPLATE_UNIT,
    UNIT_DIR,
    Manifest,
    ManifestGateway,
    Member,
    Service,
    _digest,
    on_root,
    read_manifest,
    render_units,
    unit_of,
)
from ollama_fleet.values import Placement


def wait_started(
    instances: tuple[Instance, ...], gateway_url: str | None, gateway_unit: str | None, timeout: float
) -> list[str]:
    """After `enable --now`: every instance answers GET /api/version on its own GPUs (its
    journal's "inference compute" lines) and the gateway answers, within `timeout`; else
    what did not, with its journal's last lines."""
    deadline = time.monotonic() + timeout
    failed = wait_installed({i.name: i.address for i in instances}, timeout)
    problems = list(failed.values())
    if not failed:  # every instance answers: on its own GPUs?
        found = {}
        for inst in instances:
            lines = journal_lines(unit_of(inst.name))
            found[inst.name] = pinning.devices(lines) if lines is not None else None
        wrong, _ = pinning.check(list(instances), found)
        problems += [why + journal_tail(unit_of(name)) for name, why in wrong.items()]
    left = 1.0 if failed else max(1.0, deadline - time.monotonic())  # a crash loop ends the wait
    if gateway_url is not None and not probe.gateway_answers(gateway_url, left):
        problems.append(
            f"the gateway did not answer on {gateway_url}{journal_tail(gateway_unit) if gateway_unit else ''}"
        )
    return problems


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
        difflib.unified_diff(
            lines(redact(old)), lines(redact(new.content)), "/dev/null" if current is None else path, path
        )
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
    gateway: tuple[InstallLayout, ManifestGateway] | None,
    *,
    root: Path,
    dry_run: bool = False,
    systemctl: Systemctl | None = None,
    redact: Callable[[str], str] = str,
    models: dict[str, Placement] | None = None,
    loads: tuple[tuple[str, str, str], ...] = (),
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
        gateway=gateway[1] if gateway else None,
        models=models or {},
        loads=loads,
    ).model_dump_json(indent=2)
    if _current(on_root(root, MANIFEST)) != (manifest, 0o644):
        write_atomic(on_root(root, MANIFEST), manifest)
    if systemctl is not None:
        _tell_systemd(systemctl, report, changed, stale, gateway[0] if gateway else None, old)
    return report


def _tell_systemd(
    systemctl: Systemctl,
    report: InstallReport,
    changed: set[str],
    stale: list[str],
    layout: InstallLayout | None,
    old: Manifest | None,
) -> None:
    if report.stopped:
        systemctl("stop", *map(unit_of, report.stopped))
    if any(p.startswith(str(UNIT_DIR)) for p in [*changed, *stale]):
        systemctl("daemon-reload")
    if report.restarted:
        # Applies a changed env file or unit; a stream in flight on it is cut (plain restart).
        systemctl("try-restart", *map(unit_of, report.restarted))
    systemctl("enable", "--now", TARGET)
    # A gateway that moves to another engine hands the port over with no gap: both listen
    # with SO_REUSEPORT, so the new one binds beside the old one, which goes after.
    if layout is not None:
        if not layout.owned:
            _ensure_running(systemctl, report, layout.unit, reload=any(str(f.path) in changed for f in layout.files))
        for path, args in layout.reloads.items():
            if path in changed and old is not None and path in old.files:  # a new one was started by enable
                systemctl(*args)
    previous = old.gateway if old else None
    if previous is not None and previous.unit and (layout is None or previous.unit != layout.unit):
        systemctl("stop" if previous.owned else "reload", previous.unit)


def _ensure_running(systemctl: Systemctl, report: InstallReport, unit: str, reload: bool) -> None:
    """A system service serves the gateway's file only while it runs: start it when it does
    not (every install checks, so a second run mends what a failed first one left), else
    reload it when the file changed."""
    if not systemctl.is_active(unit):
        systemctl("start", unit)
        report.notes.append(f"{unit} was not running: started it")
    elif reload:
        systemctl("reload", unit)


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
        gateway = manifest.gateway
        if gateway is not None and gateway.unit and not gateway.owned:  # its file is gone: let it know
            systemctl("reload", gateway.unit)
    return removed


@dataclass
class Installed:
    """What `install_systemd` did, for the CLI to say."""

    report: InstallReport
    root: Path
    enabled: bool  # systemctl was told (not staged, not a dry run, not --no-enable)
    instances: int
    answered: bool = False  # it waited, and everything came up (else it raised)
    gateway: bool = False


def install_systemd(
    cfg: FleetConfig,
    *,
    root: Path | None,
    dry_run: bool,
    enable: bool,
    wait: bool,
    progress: Progress,
) -> Installed:
    from ollama_fleet.actions.planning import gateway_for, make_plan

    name = cfg.user or DEFAULT_USER
    # The service user's own ~/.ollama/models, not root's (/root is 0700: never theirs).
    result = make_plan(cfg, progress, home_of_user=str(accounts.home_of(name)))
    staging = root is not None
    base = root.absolute() if root is not None else Path("/")
    if not staging and not dry_run and not accounts.is_root():
        raise UserError(
            "install-systemd writes to /etc/systemd/system: run it as root, or stage the files with --root DIR"
        )
    systemctl = Systemctl(find_tool("systemctl")) if enable and not staging and not dry_run else None
    account = None if staging else _service_account(name, result.models_dir)
    service = Service(
        ollama_bin=resolve_binary(cfg.ollama_bin),
        user=name,
        group=accounts.group_of(name),
        models_dir=result.models_dir.path,
        home=accounts.home_of(name),
    )
    engine, spec = gateway_for(cfg, result, progress)
    gateway = None
    if engine is not None and spec is not None:
        # Checked before anything is written: a config the engine rejects leaves the old one.
        layout = engine.install_layout(spec)
        where = ManifestGateway(engine=engine.name, listen=str(spec.listen), url=spec.probe_url, **layout.manifest())
        gateway = (layout, where)
    files = render_units(result.instances, service, gateway[0] if gateway else None)
    jobs = loads(result, cfg.preload, cfg.keep_alive)
    if account is not None and not dry_run:
        # Ollama writes its key to ~/.ollama before it listens, and exits when it cannot
        # (ProtectSystem=full makes /usr read-only but for ReadWritePaths, which skips a
        # dir that does not exist): a missing one is a crash loop.
        accounts.prepare_home(account)
    report = install(
        files,
        result.instances,
        gateway,
        root=base,
        dry_run=dry_run,
        systemctl=systemctl,
        redact=engine.redact if engine else str,
        models=result.models,
        loads=tuple(jobs),
    )
    done = Installed(
        report=report,
        root=base,
        enabled=systemctl is not None,
        instances=len(result.instances),
        gateway=gateway is not None,
    )
    if systemctl is not None and wait:
        # `Type=exec` reports a start as soon as the process runs: ask each one instead.
        progress.status(f"waiting for {len(result.instances)} instance(s) and the gateway to answer")
        problems = wait_started(
            result.instances, spec.probe_url if spec else None, gateway[0].unit if gateway else None, cfg.wait_timeout
        )
        if not problems:  # as `up` does, once they answer
            addresses = {i.name: i.address for i in result.instances}
            problems = probe.preload(addresses, jobs, timeout=max(cfg.wait_timeout, probe.PRELOAD_TIMEOUT))
        if problems:
            raise UserError("\n".join(problems))
        done.answered = True
    return done


def _service_account(name: str, md: ModelsDir) -> pwd.struct_passwd:
    """The user the units run as, who must be able to use the models dir."""
    account = accounts.service_account(name)
    if not md.exists:
        raise Missing(f"models_dir: {md.path} does not exist (create it, owned by {name}, or pass --models-dir)")
    if not accounts.can_use(md.path, account):
        raise Missing(f"models_dir: {accounts.why_not_usable(md.path, account)}")
    return account


def uninstall_systemd(root: Path | None, enable: bool) -> list[str] | None:
    """Stop and disable the units, remove exactly what install wrote; None: nothing installed."""
    base = root.absolute() if root is not None else Path("/")
    if root is None and not accounts.is_root():
        raise UserError("uninstall-systemd removes files from /etc: run it as root, or pass --root DIR")
    systemctl = None
    if enable and root is None and read_manifest(base) is not None:
        systemctl = Systemctl(find_tool("systemctl"))
    return uninstall(base, systemctl)
