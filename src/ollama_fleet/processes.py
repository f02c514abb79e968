"""The OS process seam: signalling process groups, who holds a port, Ollamas the fleet did
not start, and the instance's own log tail that explains a failure."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil

from ollama_fleet.errors import Interrupted, Missing, UserError
from ollama_fleet.state import ProcessRecord
from ollama_fleet.waiting import wait_until


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While inside: SIGINT and SIGTERM raise Interrupted where the program is, so that a
    command can put back what it changed (SIGTERM would otherwise end it on the spot)."""

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def signal_group(pid: int, sig: int) -> None:
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
        signal_group(proc.pid, signal.SIGTERM)
    alive = _wait_gone(procs, timeout)
    for proc in alive:
        signal_group(proc.pid, signal.SIGKILL)
    _wait_gone(alive, 5)
    return len(procs)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has exited; return those still running.

    A zombie counts as gone: once its parent (the supervisor) is gone too, only pid 1 reaps
    it, and in many containers pid 1 never does, which would make psutil.wait_procs wait out
    the whole timeout.
    """
    alive = list(procs)

    def gone() -> bool:
        alive[:] = [proc for proc in alive if is_alive(proc)]
        return not alive

    wait_until(gone, timeout, interval=0.02)
    return alive


def is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


RELOAD_TIMEOUT = 10.0


def workers(master: int | None) -> list[psutil.Process]:
    """A gateway master's worker processes (nginx, HAProxy in master-worker mode)."""
    try:
        return psutil.Process(master).children() if master else []
    except psutil.Error:
        return []


def _listens(proc: psutil.Process) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN for c in proc.net_connections(kind="inet"))
    except psutil.Error:
        return False  # gone: it listens no more


def wait_took_over(master: int, before: set[int], what: str, log: Path) -> None:
    """After a reload signal: wait until a worker started since listens and none of the
    workers from `before` does (an old worker stops listening as it begins to finish its
    streams), so the next request meets the new config. Without this wait a request sent
    just after `up` said "reloaded" still met the old keys. UserError after RELOAD_TIMEOUT."""

    def took_over() -> bool:
        now = workers(master)
        new = [w for w in now if w.pid not in before]
        return any(map(_listens, new)) and not any(_listens(w) for w in now if w.pid in before)

    if not wait_until(took_over, RELOAD_TIMEOUT, interval=0.01):
        raise UserError(
            with_log_tail(f"{what} did not start workers of the new config within {RELOAD_TIMEOUT:g}s", log)
        )


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
    instances need."""
    found = []
    # Name and command line only: `up` runs this before it starts anything, over every
    # process of the box, and a user name costs a passwd lookup (read only for a match).
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            # The binary itself, or a script named ollama run by its interpreter.
            named = proc.info["name"] == "ollama" or any(Path(arg).name == "ollama" for arg in cmdline[:2])
            if not named or "serve" not in cmdline[1:] or proc.pid in ours or _fleet_unit(proc.pid):
                continue
            ports = [
                f"{c.laddr.ip}:{c.laddr.port}" for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN
            ]
            user = proc.username()
        except psutil.Error:
            continue
        where = ", ".join(ports) or "not listening"
        found.append(f"pid {proc.pid} (user {user}, {where})")
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


TOOL_DIRS = "/usr/sbin:/sbin"  # a non-root PATH on Debian lacks them


def run_tool(argv: list[str], what: str, markers: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Run a gateway tool; on failure raise its own words (the lines carrying `markers`),
    each said once (nginx repeats a failed bind() five times)."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        lines = list(dict.fromkeys(line.strip() for line in text.splitlines() if any(m in line for m in markers)))
        detail = "\n".join(lines or text.strip().splitlines()[-3:])
        raise UserError(f"{what} failed ({' '.join(argv)}):\n{detail}")
    return proc


def find_tool(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + TOOL_DIRS)


def require_tool(name: str) -> str:
    found = find_tool(name)
    if found is None:
        raise Missing(f"{name} is not installed (apt-get install {name})")
    return found
