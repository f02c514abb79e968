"""Start, watch and stop instances: process groups, readiness, restarts with backoff, logs.

One `Supervisor` runs either attached (`up --foreground`) or as the background process `up`
starts (`ollama-fleet supervise`): the same code both ways. It is the only writer of
supervisor.json and the parent of every instance, so it can reap and restart them.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import psutil

from ollama_fleet import pinning, probe
from ollama_fleet.errors import Missing, UserError
from ollama_fleet.pinning import Device
from ollama_fleet.plan import Instance, Plan, caller_env
from ollama_fleet.state import (
    ACTUAL,
    DESIRED,
    GATEWAY,
    SUPERVISOR_LOG,
    Actual,
    Desired,
    InstanceState,
    ProcessRecord,
    read_actual,
    read_desired,
    read_gateway,
    write_model,
)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
HEALTHY_RESET = 60.0  # a run this long resets the backoff
LOG_BYTES = 50 * 2**20  # rotate instance logs at 50 MB, keep 3
LOG_KEEP = 3
STOP_TIMEOUT = 10.0
TICK = 0.1

Echo = Callable[[str, str], None]  # (instance name, line)


# ------------------------------------------------------------------ processes


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group a process leads (an instance and its runners), else the process."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:  # an attached `up --foreground` shares its shell's group: signal it alone
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (ESRCH), or no longer ours (EPERM)


def stop_processes(records: Iterable[ProcessRecord], timeout: float) -> int:
    """SIGTERM each recorded process group, SIGKILL what is left after `timeout`.

    A record whose pid now names another process (create time differs) is never signalled.
    Returns how many live processes it found.
    """
    procs = [proc for record in records if (proc := record.process()) is not None]
    for proc in procs:
        _signal_group(proc.pid, signal.SIGTERM)
    alive = _wait_gone(procs, timeout)
    for proc in alive:
        _signal_group(proc.pid, signal.SIGKILL)
    _wait_gone(alive, 5)
    return len(procs)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has exited; return those still running.

    A zombie counts as gone: once its parent (the supervisor) is gone too, only pid 1 reaps
    it, and in many containers pid 1 never does, which would make psutil.wait_procs wait out
    the whole timeout.
    """
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive:
        alive = [proc for proc in alive if is_alive(proc)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return alive


def is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def port_holder(port: int, host: str = "127.0.0.1") -> str | None:
    """Who listens on the port ("pid 123 (ollama)"), "another process" if psutil cannot tell,
    or None when the port is free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go listens: TIME_WAIT is free
        try:
            sock.bind((host, port))
            return None
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return f"unusable ({exc.strerror})"
    proc = listener(port)
    try:
        return f"pid {proc.pid} ({proc.name()})" if proc else "another process"
    except psutil.Error:
        return "another process"


def listener(port: int) -> psutil.Process | None:
    """The process listening on this TCP port, if psutil can tell (how `port_holder` names a
    stranger, and how `status` finds a systemd-managed instance)."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return psutil.Process(conn.pid)
    except psutil.Error:
        pass
    return None


def foreign_ollama(ours: set[int]) -> list[str]:
    """Every `ollama serve` this fleet did not start (a stock ollama.service, a hand-started
    one), as "pid 123 (user ollama, 127.0.0.1:11434)": it may hold GPU memory the fleet's
    instances need (DESIGN.md §4)."""
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "username"]):
        try:
            cmdline = proc.info["cmdline"] or []
            # The binary itself, or a script named ollama run by its interpreter.
            named = proc.info["name"] == "ollama" or any(Path(arg).name == "ollama" for arg in cmdline[:2])
            if not named or "serve" not in cmdline[1:] or proc.pid in ours or _fleet_unit(proc.pid):
                continue
            ports = [f"{c.laddr.ip}:{c.laddr.port}" for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
        where = ", ".join(ports) or "not listening"
        found.append(f"pid {proc.pid} (user {proc.info['username']}, {where})")
    return found


def _fleet_unit(pid: int) -> bool:
    """Does the process run in one of the fleet's own systemd units (ollama-fleet@gpu0.service)?"""
    try:
        return "/ollama-fleet@" in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False


def with_log_tail(message: str, path: Path, lines: int = 10) -> str:
    """The message, then (indented) the last lines of the log that explains it."""
    try:
        with path.open(errors="replace") as fh:
            tail = [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except OSError:
        tail = []
    if not tail:
        return message
    return f"{message}; last lines of {path}:\n" + "\n".join("    " + line for line in tail)


def resolve_binary(name: Path) -> str:
    found = shutil.which(str(name))
    if found is None:
        raise Missing(f"ollama_bin: {name} not found (install Ollama, or pass --ollama-bin PATH)")
    return str(Path(found).absolute())


# ------------------------------------------------------------------ supervisor


@dataclass
class Child:
    instance: Instance
    spec: str
    popen: subprocess.Popen | None = None
    started: float = 0.0  # monotonic
    started_at: float | None = None  # wall clock
    exits: int = 0
    last_exit: str | None = None
    backoff: float = BACKOFF_FIRST
    next_start: float | None = 0.0  # monotonic time to (re)start at; None while running
    reader: threading.Thread | None = field(default=None, repr=False)
    devices: list[Device] | None = None  # what this start said it uses (its log), None until it says


class Supervisor:
    def __init__(self, state_dir: Path, echo: Echo | None = None, foreground: bool = False) -> None:
        self.state_dir = state_dir
        self.echo = echo
        self.foreground = foreground
        self.children: dict[str, Child] = {}
        self.desired: Desired | None = None
        self.reload_requested = True
        self.devices_seen = threading.Event()  # a reader thread saw an instance's devices
        self.stop_signal: int | None = None
        self.me = ProcessRecord.of(os.getpid())

    # -- signals: the handlers only set flags; the loop acts on them
    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: object) -> None:
            if self.stop_signal is None:
                self.stop_signal = signum

        def reload(_signum: int, _frame: object) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    # -- one pass of the loop
    def step(self) -> None:
        if self.reload_requested:
            self.reload_requested = False
            self._reconcile()
        now = time.monotonic()
        changed = False
        for child in self.children.values():
            if child.popen is not None and child.popen.poll() is not None:
                self._exited(child, now)
                changed = True
            if child.next_start is not None and child.next_start <= now and self.stop_signal is None:
                self._start(child)
                changed = True
        if self.devices_seen.is_set():
            self.devices_seen.clear()
            changed = True
        if changed:
            self.write_state()

    def run(self) -> int:
        """Loop until SIGTERM/SIGINT; stop everything; return 143 or 130."""
        while self.stop_signal is None:
            self.step()
            time.sleep(TICK)
        self.stop_all()
        return 128 + self.stop_signal

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> None:
        self._stop(self.children.values(), timeout)
        for child in self.children.values():
            if child.popen is not None:
                child.popen.poll()  # reap
        for path in (self.state_dir / ACTUAL, self.state_dir / DESIRED):
            path.unlink(missing_ok=True)

    # -- internals
    @staticmethod
    def _running(child: Child) -> bool:
        return child.popen is not None and child.popen.poll() is None

    def _stop(self, children: Iterable[Child], timeout: float) -> None:
        stop_processes([ProcessRecord.of(c.popen.pid) for c in children if self._running(c) and c.popen], timeout)

    def _reconcile(self) -> None:
        desired = read_desired(self.state_dir)
        if desired is None:
            return
        self.desired = desired
        wanted = {inst.name: inst for inst in desired.instances}
        stale = [
            name for name, child in self.children.items()
            if name not in wanted or (child.spec != desired.spec(wanted[name]) and name not in desired.hold)
        ]
        stopping = [self.children[name] for name in stale]
        self._stop(stopping, STOP_TIMEOUT)
        for child in stopping:
            if child.popen is not None:
                child.popen.wait()
            del self.children[child.instance.name]
        for name, inst in wanted.items():
            if name not in self.children:
                self.children[name] = Child(instance=inst, spec=desired.spec(inst))
        self.write_state()

    def _exited(self, child: Child, now: float) -> None:
        assert child.popen is not None
        code = child.popen.returncode
        child.exits += 1
        child.last_exit = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if now - child.started >= HEALTHY_RESET:
            child.backoff = BACKOFF_FIRST
        child.next_start = now + child.backoff
        self._note(child, f"{child.last_exit}; restarting in {child.backoff:.0f}s")
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)
        if child.reader is not None:
            child.reader.join(timeout=1)
        child.popen = None

    def _start(self, child: Child) -> None:
        assert self.desired is not None
        inst = child.instance
        env = {**caller_env(os.environ), **inst.env}
        kwargs: dict = {}
        account = self._account()
        if account is not None:  # root drops to the models dir's owner (or --user)
            kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=_groups(account))
            env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
        inst.log.parent.mkdir(parents=True, exist_ok=True)
        try:
            child.popen = subprocess.Popen(
                [self.desired.ollama_bin, "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its pid is its process group: stop the whole group
                cwd="/",
                **kwargs,
            )
        except OSError as exc:
            child.exits += 1
            child.last_exit = f"could not start: {exc}"
            child.next_start = time.monotonic() + child.backoff
            child.backoff = min(child.backoff * 2, BACKOFF_MAX)
            _logger(inst).info("ollama-fleet: %s", child.last_exit)
            return
        child.started = time.monotonic()
        child.started_at = time.time()
        child.next_start = None
        child.devices = None
        child.reader = threading.Thread(target=self._pump, args=(child, child.popen), daemon=True)
        child.reader.start()

    def _account(self) -> pwd.struct_passwd | None:
        assert self.desired is not None
        if os.geteuid() != 0 or not self.desired.user:
            return None
        account = pwd.getpwnam(self.desired.user)
        return None if account.pw_uid == 0 else account

    def _pump(self, child: Child, popen: subprocess.Popen) -> None:
        """Copy the instance's output to its rotated log (and to the terminal when attached)."""
        logger = _logger(child.instance)
        assert popen.stdout is not None
        for raw in popen.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            logger.info(line)
            if (dev := pinning.device(line)) is not None:
                # Its devices, to check against its pin (up) and show (status).
                child.devices = [*(child.devices or []), dev]
                self.devices_seen.set()
            if self.echo is not None:
                self.echo(child.instance.name, line)

    def _note(self, child: Child, message: str) -> None:
        _logger(child.instance).info("ollama-fleet: %s", message)
        if self.echo is not None:
            self.echo(child.instance.name, f"[ollama-fleet] {message}")

    def write_state(self) -> None:
        actual = Actual(supervisor=self.me, foreground=self.foreground)
        for name, child in self.children.items():
            running = self._running(child)
            record = ProcessRecord.of(child.popen.pid) if running and child.popen else None
            actual.instances[name] = InstanceState(
                name=name,
                port=child.instance.port,
                spec=child.spec,
                pid=record.pid if record else None,
                create_time=record.create_time if record else None,
                started_at=child.started_at if running else None,
                status="running" if running else "backoff",
                exits=child.exits,
                last_exit=child.last_exit,
                devices=child.devices if running else None,
            )
        write_model(self.state_dir / ACTUAL, actual)


def _groups(account: pwd.struct_passwd) -> list[int]:
    # The `video`/`render` groups give access to /dev/nvidia* on some distributions.
    return os.getgrouplist(account.pw_name, account.pw_gid)


_loggers: dict[str, logging.Logger] = {}


def _logger(inst: Instance) -> logging.Logger:
    """A logger writing bare lines to the instance's log, rotated at 50 MB, 3 kept."""
    key = str(inst.log)
    if key not in _loggers:
        inst.log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(inst.log, maxBytes=LOG_BYTES, backupCount=LOG_KEEP)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger(f"ollama_fleet.instance.{key}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        _loggers[key] = logger
    return _loggers[key]


# ------------------------------------------------------------------ what `up` and `down` do


@dataclass
class Change:
    name: str
    action: str  # "start", "keep", "restart", "stop"
    why: str = ""


def changes(old: Desired | None, actual: Actual | None, new: Desired) -> list[Change]:
    """What converging to `new` does to each instance, for `up` to say before it acts."""
    live = {
        name: st for name, st in (actual.instances.items() if actual else [])
        if st.record is not None and st.record.process() is not None
    }
    previous = {inst.name: inst for inst in (old.instances if old else ())}
    result = []
    for inst in new.instances:
        state = live.get(inst.name)
        if state is None:
            result.append(Change(inst.name, "start"))
        elif state.spec == new.spec(inst):
            result.append(Change(inst.name, "keep"))
        else:
            result.append(Change(inst.name, "restart", _diff(previous.get(inst.name), inst, old, new)))
    wanted = {inst.name for inst in new.instances}
    result += [Change(name, "stop", "no longer in the plan") for name in live if name not in wanted]
    return result


def _diff(before: Instance | None, after: Instance, old: Desired | None, new: Desired) -> str:
    if before is None or old is None:
        return "plan changed"
    keys = sorted(k for k in set(before.env) | set(after.env) if before.env.get(k) != after.env.get(k))
    parts = [f"{k} {before.env.get(k, '(unset)')} → {after.env.get(k, '(unset)')}" for k in keys]
    if old.ollama_bin != new.ollama_bin:
        parts.append(f"ollama binary {old.ollama_bin} → {new.ollama_bin}")
    if old.user != new.user:
        parts.append(f"user {old.user} → {new.user}")
    return "plan changed: " + ", ".join(parts) if parts else "plan changed"


def live_supervisor(state_dir: Path) -> ProcessRecord | None:
    actual = read_actual(state_dir)
    if actual is not None and actual.supervisor.process() is not None:
        return actual.supervisor
    return None


def preflight(plan: Plan, new: Desired, actual: Actual | None) -> None:
    """Refuse to start what cannot run: a missing models dir (3), a port taken by a stranger (1)."""
    md = plan.models_dir
    if not md.exists:
        raise Missing(f"models_dir: {md.path} does not exist (create it, or pass --models-dir)")
    if not md.readable:
        raise Missing(f"models_dir: {md.path} is not readable by this user")
    ours = {
        st.port for st in (actual.instances.values() if actual else [])
        if st.record is not None and st.record.process() is not None
    }
    for inst in plan.instances:
        if inst.port in ours:
            continue
        holder = port_holder(inst.port, inst.host)
        if holder is not None:
            raise UserError(f"port {inst.port} (for {inst.name}) is taken by {holder}; pass another --base-port")


def launch_background(state_dir: Path) -> int:
    """Fork the background supervisor and return its pid.

    A fork, not a fresh interpreter: the child already has everything imported, so the
    instances start ~0.3 s sooner, which is most of `up`'s own overhead.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    log = os.open(state_dir / SUPERVISOR_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(log)
        return pid
    code = 1
    try:
        os.setsid()  # its own session: survives the terminal that ran `up`
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        supervisor = Supervisor(state_dir)
        supervisor.install_signal_handlers()
        code = supervisor.run()
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)  # never return into the CLI that forked us


def exited(pid: int) -> bool:
    """Has our forked child exited? (Reaps it if so.)"""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


DEVICES_GRACE = 3.0  # seconds an answering instance gets to have its device lines read


@dataclass
class Readiness:
    versions: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why, with its log tail
    # name -> the devices it logged; None: it answered but logged none (an Ollama that does
    # not, or lines not yet read after DEVICES_GRACE): its pinning is unverified.
    devices: dict[str, list[Device] | None] = field(default_factory=dict)


def wait_ready(
    state_dir: Path,
    desired: Desired,
    timeout: float,
    tick: Callable[[], None],
    progress: Callable[[int, int], None] = lambda ready, total: None,
) -> Readiness:
    """Poll until every instance of `desired` answers `GET /api/version` and its device lines
    are read (or DEVICES_GRACE passed), exits, or times out.

    `tick` runs the supervisor's loop when it is attached, or checks the background one lives.
    """
    result = Readiness()
    baseline: dict[str, int] = {}
    answered: dict[str, float] = {}  # name -> when it first answered
    pending = {inst.name: inst for inst in desired.instances}
    deadline = time.monotonic() + timeout
    while pending:
        tick()
        actual = read_actual(state_dir)
        states = actual.instances if actual else {}
        probing = {}
        for name, inst in pending.items():
            st = states.get(name)
            if st is None or st.spec != desired.spec(inst):
                continue  # the supervisor has not taken this plan yet
            baseline.setdefault(name, st.exits)
            if st.exits > baseline[name]:
                result.failed[name] = with_log_tail(f"{name} exited during start-up ({st.last_exit})", inst.log)
            elif name in answered:
                # Ollama logs its devices before it serves; the supervisor reads them a
                # moment later. An Ollama that never logs them is let go after the grace.
                if st.devices is not None or time.monotonic() - answered[name] > DEVICES_GRACE:
                    result.devices[name] = st.devices
            elif st.pid is not None:
                probing[name] = inst.address
        for name in [*result.failed, *result.devices]:
            pending.pop(name, None)
        for name in result.failed:
            result.versions.pop(name, None)
        for address_name, version in zip(probing, probe.versions(list(probing.values()), timeout=1.0).values()):
            if version is not None:
                result.versions[address_name] = version
                answered[address_name] = time.monotonic()
        progress(len(result.devices), len(desired.instances))
        if pending and time.monotonic() > deadline:
            for name, inst in pending.items():
                if name in answered:
                    result.devices[name] = None
                else:
                    result.failed[name] = with_log_tail(
                        f"{name} did not answer GET /api/version within {timeout:g}s", inst.log
                    )
            break
        if pending:
            time.sleep(0.05)
    return result


def stop_fleet(state_dir: Path, timeout: float) -> tuple[int, bool] | None:
    """`down`: the gateway, the supervisor (so it restarts nothing), every instance group.

    Returns how many instances were stopped and whether a gateway was, or None when there
    was nothing to stop.
    """
    actual = read_actual(state_dir)
    desired_path = state_dir / DESIRED
    gateway = read_gateway(state_dir)
    if actual is None and gateway is None and not desired_path.exists():
        return None
    # SIGTERM to nginx's master: its fast shutdown.
    gateway_stopped = bool(gateway and gateway.process and stop_processes([gateway.process], timeout))
    (state_dir / GATEWAY).unlink(missing_ok=True)
    stopped = 0
    if actual is not None:
        instances = [st.record for st in actual.instances.values() if st.record is not None]
        live = [r for r in instances if r.process() is not None]
        stop_processes([actual.supervisor, *live], timeout)
        stopped = len(live)
        # The supervisor may have restarted one between our read and its exit.
        again = read_actual(state_dir)
        if again is not None:
            stopped += stop_processes(
                [st.record for st in again.instances.values() if st.record is not None and st.record not in live],
                timeout,
            )
    for path in (state_dir / ACTUAL, desired_path):
        path.unlink(missing_ok=True)
    return stopped, gateway_stopped
