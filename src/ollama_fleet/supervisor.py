"""Start, watch and stop instances: process groups, readiness, restarts with backoff, logs.

One `Supervisor` runs either attached (`up --foreground`) or as the background process `up`
forks (launch_background, named `ollama-fleet supervisor` in ps): the same code both ways. It is the only writer of
supervisor.json and the parent of every instance, so it can reap and restart them.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ollama_fleet import pinning
from ollama_fleet.accounts import groups_of
from ollama_fleet.pinning import Device
from ollama_fleet.plan import Instance, caller_env
from ollama_fleet.processes import stop_processes
from ollama_fleet.state import (
    ACTUAL,
    DESIRED,
    SUPERVISOR_LOG,
    Actual,
    Desired,
    InstanceState,
    ProcessRecord,
    open_log,
    read_actual,
    read_desired,
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


@dataclass
class Child:
    instance: Instance
    fingerprint: str  # of the plan it runs (Desired.fingerprint)
    popen: subprocess.Popen | None = None
    started: float = 0.0  # monotonic
    started_at: float | None = None  # wall clock
    exits: int = 0
    last_exit: str | None = None
    backoff: float = BACKOFF_FIRST
    next_start: float | None = 0.0  # monotonic time to (re)start at; None while running
    reader: threading.Thread | None = field(default=None, repr=False)
    devices: list[Device] | None = None  # what this start said it uses (its log), None until it says


def _back_off(child: Child, now: float) -> None:
    """Start it again after its backoff, which doubles (to 30 s) while it keeps failing."""
    child.next_start = now + child.backoff
    child.backoff = min(child.backoff * 2, BACKOFF_MAX)


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
        hide_command_line(self.state_dir)
        while self.stop_signal is None:
            self.step()
            # Woken early by an instance's device lines: `up` waits for them in
            # supervisor.json, and should not wait a whole tick more.
            self.devices_seen.wait(TICK)
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
            name
            for name, child in self.children.items()
            if name not in wanted
            or (child.fingerprint != desired.fingerprint(wanted[name]) and name not in desired.hold)
        ]
        stopping = [self.children[name] for name in stale]
        self._stop(stopping, STOP_TIMEOUT)
        for child in stopping:
            if child.popen is not None:
                child.popen.wait()
            del self.children[child.instance.name]
        for name, inst in wanted.items():
            if name not in self.children:
                self.children[name] = Child(instance=inst, fingerprint=desired.fingerprint(inst))
        self.write_state()

    def _exited(self, child: Child, now: float) -> None:
        assert child.popen is not None
        code = child.popen.returncode
        child.exits += 1
        child.last_exit = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if now - child.started >= HEALTHY_RESET:
            child.backoff = BACKOFF_FIRST
        self._note(child, f"{child.last_exit}; restarting in {child.backoff:.0f}s")
        _back_off(child, now)
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
            kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=groups_of(account))
            env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
        inst.log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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
            _logger(inst).info("ollama-fleet: %s", child.last_exit)
            _back_off(child, time.monotonic())
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
                spec=child.fingerprint,
                pid=record.pid if record else None,
                create_time=record.create_time if record else None,
                started_at=child.started_at if running else None,
                exits=child.exits,
                last_exit=child.last_exit,
                devices=child.devices if running else None,
            )
        write_model(self.state_dir / ACTUAL, actual)


_loggers: dict[str, logging.Logger] = {}


class _PrivateLog(logging.handlers.RotatingFileHandler):
    """An instance's log: opened by state.open_log (0600, never through a link), since it
    holds Ollama's start-up lines (its proxy variables) and the request paths clients sent."""

    def _open(self) -> io.TextIOWrapper:
        return open(open_log(Path(self.baseFilename)), "a", encoding=self.encoding, errors=self.errors)


def _logger(inst: Instance) -> logging.Logger:
    """A logger writing bare lines to the instance's log, rotated at 50 MB, 3 kept."""
    key = str(inst.log)
    if key not in _loggers:
        handler = _PrivateLog(inst.log, maxBytes=LOG_BYTES, backupCount=LOG_KEEP)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger(f"ollama_fleet.instance.{key}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        _loggers[key] = logger
    return _loggers[key]


# ------------------------------------------------------------------ what `up` and `down` do


def hide_command_line(state_dir: Path) -> None:
    """The supervisor is `up` itself (forked, or attached with --foreground): its command
    line, `--env HTTPS_PROXY=http://user:pass@...` included, would stay in `ps` (which
    every user may run) for the fleet's whole life. It shows its own, which says nothing secret."""
    from setproctitle import setproctitle

    setproctitle(f"ollama-fleet supervisor --state-dir {state_dir}")


def live_supervisor(state_dir: Path) -> ProcessRecord | None:
    actual = read_actual(state_dir)
    if actual is not None and actual.supervisor.process() is not None:
        return actual.supervisor
    return None


def launch_background(state_dir: Path) -> int:
    """Fork the background supervisor and return its pid.

    A fork, not a fresh interpreter: the child already has everything imported, so the
    instances start ~0.3 s sooner, which is most of `up`'s own overhead.
    """
    log = open_log(state_dir / SUPERVISOR_LOG)
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
