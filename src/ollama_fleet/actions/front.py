"""The front's verbs: `front up|down|status|render|drain|undrain|install-systemd`, and `pull`.

The front lives in `<state_dir>/front/`: its haproxy.cfg, pid file, admin socket, and
front.json (what it was rendered from), which this module alone writes. Installed under
systemd, its files are /etc/ollama-fleet/front.cfg and ollama-fleet-front.service, its
socket in /run/ollama-fleet-front, and front.json still records the spec.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_fleet import probe
from ollama_fleet.accounts import make_state_dir
from ollama_fleet.actions import Progress
from ollama_fleet.config import FleetConfig
from ollama_fleet.errors import BadInput, UserError
from ollama_fleet.gateway import front
from ollama_fleet.gateway.front import FrontBox, FrontSpec, FrontStats
from ollama_fleet.gateway.haproxy import SOCKET, Haproxy, check_access, installed_worker
from ollama_fleet.gateway.spec import GatewaySpec, exposure_warnings
from ollama_fleet.processes import port_holder, stop_processes
from ollama_fleet.state import (
    FRONT,
    PRIVATE,
    FrontState,
    ProcessRecord,
    read_front,
    read_gateway,
    write_atomic,
    write_changed,
    write_model,
)
from ollama_fleet.waiting import wait_until

INFO_TIMEOUT = 3.0  # seconds a box has to answer /fleet/info when the front renders


def front_dir(state_dir: Path) -> Path:
    return state_dir / "front"


def read_boxes(cfg: FleetConfig, previous: FrontSpec | None, progress: Progress) -> list[FrontBox]:
    """Every box of the config: those without `slots=` described by their /fleet/info, read
    at once. A box that does not answer keeps what it said last time (a warning), else it
    is an error: the front cannot know its slots."""
    key = front.box_key(cfg)
    asked = [box for box in cfg.boxes if box.slots is None]
    answers = probe.box_infos([box.url for box in asked], key, INFO_TIMEOUT)
    known = {box.url: box for box in previous.boxes} if previous else {}
    found = []
    for box in cfg.boxes:
        if box.slots is not None:
            found.append(front.plain(box))
            continue
        answer = answers[box.url]
        if not isinstance(answer, str):
            found.append(front.described(box, answer))
        elif box.url in known and known[box.url].described:
            progress.warn(f"{box} does not answer /fleet/info ({answer}); keeping what it said last time")
            found.append(known[box.url])
        else:
            raise UserError(
                f"boxes: {box} does not answer /fleet/info ({answer}); start its fleet (ollama-fleet up), "
                f"or give its slots: --box {box},slots=N"
            )
    return front.unique_names(found)


def _spec(cfg: FleetConfig, previous: FrontState | None, progress: Progress) -> FrontSpec:
    before = FrontSpec.model_validate(previous.spec) if previous else None
    spec = front.spec_from(cfg, read_boxes(cfg, before, progress), drained=before.drained if before else ())
    for warning in exposure_warnings(spec, cfg):
        progress.warn(warning.replace("the gateway", "the front"))
    return spec


@dataclass
class FrontReport:
    action: str  # started, reloaded, unchanged
    url: str
    spec: FrontSpec
    stats: FrontStats | None = None


def _write_config(spec: FrontSpec, prefix: Path, config: Path, user: tuple[str, str] | None = None) -> bool:
    """Render, check with `haproxy -c`, write atomically; True when it changed."""
    content = front.render(spec, prefix=prefix, config=config, user=user)
    Haproxy().check(content)
    return write_changed(config, content, PRIVATE)


def _record(home: Path, state: FrontState, spec: FrontSpec) -> None:
    state = state.model_copy(update={"spec": spec.model_dump(mode="json")})
    write_model(home / FRONT, state)


def front_up(cfg: FleetConfig, progress: Progress) -> FrontReport:
    """Start the front, or re-read the boxes and reload it (streams go on in old workers)."""
    home = front_dir(cfg.state_path)
    previous = read_front(home)
    if previous is not None and previous.unit is not None:
        raise UserError(f"the front is installed as {previous.unit}: re-run `front install-systemd` to change it")
    spec = _spec(cfg, previous, progress)
    live = previous.process if previous and previous.process and previous.process.process() else None
    if live is None:
        holder = port_holder(spec.listen.port, spec.listen.host)
        if holder is not None:
            raise UserError(
                f"listen: port {spec.listen.port} for the front is taken by {holder}; pass another --listen"
            )
    make_state_dir(cfg.state_path)
    home.mkdir(mode=0o755, exist_ok=True)  # the workers pass through it: its files are 0600
    config = home / "haproxy.cfg"
    changed = _write_config(spec, home, config, _worker())
    engine = Haproxy()
    if live is not None:
        action = "reloaded" if changed else "unchanged"
        if changed:
            engine.reload(home, config)
    else:
        live = ProcessRecord.of(engine.start(home, config))
        action = "started"
    _record(home, FrontState(process=live, prefix=home, config=config, url=spec.probe_url, spec={}), spec)
    progress.status("waiting for the boxes' first checks")
    wait_until(lambda: _checked(home / SOCKET), 5)
    return FrontReport(action=action, url=spec.probe_url, spec=spec, stats=_stats_or_none(home / SOCKET))


def _checked(sock: Path) -> bool:
    found = _stats_or_none(sock, keys=False)
    return found is not None and all(not box.state.startswith(("UP ", "DOWN ")) for box in found.boxes.values())


def _stats_or_none(sock: Path, keys: bool = True) -> FrontStats | None:
    try:
        return front.stats(sock, keys)
    except UserError:
        return None


def front_down(state_dir: Path, timeout: float) -> bool:
    """Stop the front `front up` started; False when there was none. An installed front is
    systemd's to stop (UserError saying how)."""
    home = front_dir(state_dir)
    state = read_front(home)
    if state is not None and state.unit is not None:
        raise UserError(f"the front is installed: systemctl disable --now {state.unit}")
    if state is None or state.process is None:
        return False
    stop_processes([state.process], timeout)
    (home / FRONT).unlink(missing_ok=True)
    return True


@dataclass
class FrontStatus:
    url: str
    running: bool
    spec: FrontSpec
    stats: FrontStats | None
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.running and self.stats is not None and all(b.state == "UP" for b in self.stats.boxes.values())

    @property
    def reasons(self) -> list[str]:
        """Why it is not healthy, a line each."""
        if not self.running:
            return [*self.problems, "the front is not running: `ollama-fleet front up` starts it"]
        if self.stats is None:
            return [*self.problems, "the front's HAProxy does not answer on its admin socket"]
        down = [f"box {name}: {box.state}" for name, box in self.stats.boxes.items() if box.state != "UP"]
        return [*self.problems, *down]

    def json_data(self) -> dict[str, Any]:
        boxes = {box.name: box for box in self.spec.boxes}
        rows = self.stats.boxes if self.stats else {}
        return {
            "schema": 1,
            "url": self.url,
            "running": self.running,
            "healthy": self.healthy,
            "queued": self.stats.queued if self.stats else None,
            "boxes": [
                {
                    "name": name,
                    "url": boxes[name].url if name in boxes else None,
                    "address": row.address,
                    "state": row.state,
                    "slots": boxes[name].slots if name in boxes else (self.spec.srv.slots if self.spec.srv else None),
                    "in_flight": row.in_flight,
                    "queued": row.queued,
                    "models": boxes[name].models if name in boxes else {},
                    "version": boxes[name].version if name in boxes else None,
                }
                for name, row in rows.items()
            ],
            "keys": {name: k.model_dump() for name, k in (self.stats.keys if self.stats else {}).items()},
        }


def recorded_front(state_dir: Path) -> FrontState:
    """The front recorded here (by `front up` or `front install-systemd`), else UserError."""
    state = read_front(front_dir(state_dir))
    if state is None:
        raise UserError(f"no front is recorded in {front_dir(state_dir)}: start one with `ollama-fleet front up`")
    return state


def _located(state_dir: Path) -> FrontState:
    """The recorded front, whose admin socket this user may use."""
    state = recorded_front(state_dir)
    check_access(state.prefix / SOCKET)
    return state


def front_status(state_dir: Path) -> FrontStatus:
    state = _located(state_dir)
    spec = FrontSpec.model_validate(state.spec)
    running = state.process.process() is not None if state.process else (state.prefix / SOCKET).exists()
    stats = _stats_or_none(state.prefix / SOCKET) if running else None
    problems = [] if stats is not None else [f"the front's HAProxy does not answer on {state.prefix / SOCKET}"]
    return FrontStatus(url=state.url, running=running and stats is not None, spec=spec, stats=stats, problems=problems)


def _known(sock: Path, name: str) -> None:
    """BadInput unless the front has this box."""
    boxes = front.stats(sock, keys=False).boxes
    if name not in boxes:
        raise BadInput(f"box: the front has no box {name!r} (its boxes: {', '.join(sorted(boxes)) or 'none'})")


def _redrain(state: FrontState, spec: FrontSpec, home: Path) -> None:
    """Keep a drain across reloads: the config on disk gets the box's `weight 0` (read at
    the next reload), front.json remembers it."""
    user = _worker(state)
    _write_config(spec, state.prefix, state.config, user)
    _record(home, state, spec)


def _worker(state: FrontState | None = None) -> tuple[str, str] | None:
    """Who HAProxy's workers run as: started by root (`front up` as root, or systemd), the
    distribution's `haproxy` user, never root; else the caller itself."""
    return installed_worker() if (state is not None and state.unit) or os.geteuid() == 0 else None


def _mark_drained(state_dir: Path, name: str, drained: bool) -> FrontState:
    """Put the box on the front's drained list, or take it off (config and front.json)."""
    state = _located(state_dir)
    _known(state.prefix / SOCKET, name)
    spec = FrontSpec.model_validate(state.spec)
    if (name in spec.drained) != drained:
        others = tuple(n for n in spec.drained if n != name)
        _redrain(
            state, spec.model_copy(update={"drained": (*others, name) if drained else others}), front_dir(state_dir)
        )
    return state


def front_drain(state_dir: Path, name: str, timeout: float, progress: Progress) -> int:
    """Send the box no new request; wait (up to `timeout`) until it serves none for the
    front. Its streams go on. Returns how many requests were still busy at the timeout."""
    state = _mark_drained(state_dir, name, True)
    progress.status(f"waiting for {name}'s requests to finish")
    return Haproxy().drain(state.prefix, name, timeout)


def front_undrain(state_dir: Path, name: str, timeout: float) -> None:
    """Send the box requests again; wait until the front sees it UP."""
    state = _mark_drained(state_dir, name, False)
    Haproxy().undrain(state.prefix, name, timeout)


def front_render(cfg: FleetConfig, output: Path | None, prefix: Path, check: bool, progress: Progress) -> str:
    """The front's config for an HAProxy of your own, from the boxes' answers now: written
    whole to `output`, or returned with its keys (the clients' and the box key) redacted,
    since what goes to stdout ends up in terminals, scrollback and CI logs."""
    spec = _spec(cfg, None, progress)
    content = front.render(spec, prefix=prefix, config=output)
    if check:
        Haproxy().check(content)
    if output is None:
        return Haproxy().redact(content)
    prefix.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_atomic(output, content, spec.file_mode)
    return content


@dataclass
class PullTargets:
    urls: dict[str, str]  # name -> gateway URL
    key: str | None  # the key presented to them


def pull_targets(cfg: FleetConfig) -> PullTargets:
    """Where `pull` pulls: the boxes given, else the boxes of the front here (with the key
    it presents), else this box's own gateway (its writer instance does the pull)."""
    key = front.box_key(cfg)
    if cfg.boxes:
        return PullTargets({str(box): box.url for box in cfg.boxes}, key)
    state = read_front(front_dir(cfg.state_path))
    if state is not None:
        spec = FrontSpec.model_validate(state.spec)
        return PullTargets({box.name: box.url for box in spec.boxes}, key or spec.box_key)
    gateway = read_gateway(cfg.state_path)
    if gateway is not None and gateway.url:
        # A gateway.json of an older version holds plain strings; GatewaySpec reads both.
        keys = GatewaySpec.model_validate(gateway.spec).api_keys if gateway.spec else ()
        return PullTargets({"this box": gateway.url}, key or (keys[0].key if keys else None))
    raise BadInput("box: no box to pull on: give --box URL (repeatable), or run it where a fleet or a front is up")


def pull(targets: PullTargets, model: str, report: Callable[[str, dict[str, Any]], None]) -> dict[str, str | None]:
    """Pull `model` on every target at once, each through its own gateway; name -> error."""
    return probe.pull(targets.urls, model, targets.key, report)


def front_install(cfg: FleetConfig, root: Path, enable: bool, progress: Progress) -> list[str]:
    """The front as ollama-fleet-front.service: its config (checked by `haproxy -c`) and unit
    written under `root`, then, with `enable`, started, or reloaded when the config changed."""
    from ollama_fleet.accounts import is_root
    from ollama_fleet.processes import find_tool, require_tool
    from ollama_fleet.render import render
    from ollama_fleet.systemctl import Systemctl
    from ollama_fleet.systemd import on_root

    if root == Path("/") and not is_root():
        raise UserError(
            "front install-systemd writes to /etc/systemd/system: run it as root, or stage the files with --root DIR"
        )
    home = front_dir(cfg.state_path)
    spec = _spec(cfg, read_front(home), progress)
    user = installed_worker()
    content = front.render(spec, prefix=front.RUN_DIR, config=front.INSTALLED_CONFIG, user=user)
    Haproxy().check(content)
    unit = render("front/ollama-fleet-front.service.j2", haproxy=require_tool("haproxy"), config=front.INSTALLED_CONFIG)
    written = []
    for path, text, mode in ((front.INSTALLED_CONFIG, content, spec.file_mode), (front.UNIT_FILE, unit, 0o644)):
        if write_changed(on_root(root, path), text, mode):
            written.append(str(path))
    state = FrontState(
        unit=front.UNIT, prefix=front.RUN_DIR, config=front.INSTALLED_CONFIG, url=spec.probe_url, spec={}
    )
    if root == Path("/"):
        home.mkdir(mode=0o755, parents=True, exist_ok=True)
        _record(home, state, spec)
    if enable:
        systemctl = Systemctl(find_tool("systemctl"))
        systemctl("daemon-reload")
        active = systemctl.is_active(front.UNIT)
        systemctl("enable", "--now", front.UNIT)
        if active and str(front.INSTALLED_CONFIG) in written:
            systemctl("reload", front.UNIT)
    return written
