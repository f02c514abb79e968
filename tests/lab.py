"""Hosts made of Linux network namespaces, for the front's tests and benchmarks.

A bridge lives in a namespace of its own; each host is a namespace with one veth pair into
it and an address from 198.18.0.0/24 (the benchmarking range, RFC 2544), which exists only
inside these namespaces. Each box runs a real `ollama-fleet up --engine haproxy` over fake
Ollamas; the front runs in a namespace too. Clients run in threads that joined a host's
namespace (setns is per thread), so test traffic never leaves the namespaces.

Clean-up is by pid and by `ip netns del`, also when a test fails: every namespace name
starts with this run's prefix, and `close()` kills whatever still runs inside them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.helpers import (
    CONSOLE_SCRIPT,
    FAKE_OLLAMA,
    as_root_on_purpose,
    fake_home,
    require_root,
    require_tool,
    subprocess_env,
)

NET = "198.18.0"
CLONE_NEWNET = 0x40000000
PORT = 8080  # every gateway and the front listen on it, each on its own address


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _enter(ns: str) -> None:
    """Move the calling thread into namespace `ns` (a thread initializer)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
    finally:
        os.close(fd)


class Lab:
    _made = 0

    def __init__(self) -> None:
        require_root()
        require_tool("ip")
        # Unique per lab, also within one test process (a module's lab and a test's own run
        # side by side): names are how clean-up finds what to kill.
        Lab._made += 1
        self.prefix = f"ofl{os.getpid() % 100000}x{Lab._made}"
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-lab-"))
        self.hosts: dict[str, str] = {}  # name -> address
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.pools: list[concurrent.futures.ThreadPoolExecutor] = []
        self.dns: list[subprocess.Popen] = []
        self.bridge = self._namespace("br")
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")

    def _namespace(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # a leftover of a killed run
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def host(self, name: str, last_octet: int) -> str:
        """A host `name` at 198.18.0.<last_octet>; returns its address."""
        ns = self._namespace(name)
        peer = f"v{name}"[:15]
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", self.bridge)
        _ip("-n", ns, "addr", "add", f"{NET}.{last_octet}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", self.bridge, "link", "set", peer, "master", "br0", "up")
        self.hosts[name] = f"{NET}.{last_octet}"
        return self.hosts[name]

    def cut(self, name: str) -> None:
        """Pull the host's cable: its packets vanish, nobody gets a reset."""
        _ip("-n", self.bridge, "link", "set", f"v{name}"[:15], "down")

    def mend(self, name: str) -> None:
        _ip("-n", self.bridge, "link", "set", f"v{name}"[:15], "up")

    def argv(self, host: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(
        self, host: str, *argv: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(host, *argv), env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout
        )

    def spawn(self, host: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            self.argv(host, *argv),
            env=env or subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def fleet(*args: str) -> list[str]:
        return [str(CONSOLE_SCRIPT), *args]

    def box(self, name: str, last_octet: int, instances: int = 4, *flags: str, **knobs: str) -> str:
        """A host running a real fleet (HAProxy engine) of fake Ollamas; returns its URL."""
        address = self.host(name, last_octet)
        home = self.dir / name
        (home / "models").mkdir(parents=True)
        env = subprocess_env(
            HOME=fake_home(),
            FAKE_NVML_GPUS=str(instances),
            OLLAMA_FLEET_ENV=",".join(f"{k}={v}" for k, v in knobs.items()),
            **as_root_on_purpose(),
        )
        result = self.run(
            name,
            *self.fleet(
                "up",
                "--engine",
                "haproxy",
                "--name",
                name,
                "--listen",
                f"{address}:{PORT}",
                "--allow",
                f"{NET}.0/24",
                "--ollama-bin",
                str(FAKE_OLLAMA),
                "--models-dir",
                str(home / "models"),
                "--state-dir",
                str(home / "state"),
                "--wait-timeout",
                "30",
                *flags,
            ),
            env=env,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return f"http://{address}:{PORT}"

    def front(self, *args: str, host: str = "front") -> subprocess.CompletedProcess:
        """`ollama-fleet front ...` on the front's host, its state under the lab's dir."""
        return self.run(host, *self.fleet("front", *args, "--state-dir", str(self.dir / "front-state")))

    def front_up(self, *args: str, boxes: tuple[str, ...] = ()) -> None:
        """`front up` over `boxes` (URLs), listening on the front's 198.18.0.2, open to the lab."""
        flags = [flag for url in boxes for flag in ("--box", url)]
        result = self.front("up", *flags, *args, "--listen", f"{NET}.2:{PORT}", "--allow", f"{NET}.0/24")
        assert result.returncode == 0, result.stdout + result.stderr

    def publish_srv(self, dnsmasq: str, record: str, *members: str) -> None:
        """Serve SRV `record` with these hosts (port PORT) from dnsmasq on host "dns"
        (198.18.0.53); records change as a DNS server restarts with new ones."""
        for proc in self.dns:
            proc.kill()
            proc.wait()
        self.dns = [
            self.spawn(
                "dns",
                dnsmasq,
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                f"--listen-address={NET}.53",
                "--bind-interfaces",
                "--local-ttl=0",
                *(f"--srv-host={record},{m}.lab.test,{PORT}" for m in members),
                *(f"--host-record={name}.lab.test,{address}" for name, address in self.hosts.items()),
            )
        ]

    def pool(self, host: str, workers: int = 64) -> concurrent.futures.ThreadPoolExecutor:
        """Threads inside `host`'s namespace, for clients."""
        pool = concurrent.futures.ThreadPoolExecutor(workers, initializer=_enter, initargs=(self.ns(host),))
        self.pools.append(pool)
        return pool

    def pids(self, host: str, program: str | None = None) -> list[int]:
        """The processes in `host`'s namespace (those of `program` only, by their comm)."""
        return _pids(self.ns(host), program)

    def call(self, host: str, func, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Run one call in a thread inside `host`'s namespace."""
        return self.pool(host, 1).submit(func, *args, **kwargs).result()

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)
        for name in self.hosts:  # each box's fleet, as its operator would stop it
            state = self.dir / name / "state"
            if state.exists():
                with contextlib.suppress(subprocess.SubprocessError):
                    self.run(name, *self.fleet("down", "--timeout", "2", "--state-dir", str(state)), timeout=30)
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for ns in self.namespaces:  # whatever still runs inside (the front's HAProxy ...), by pid
            for pid in _pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pids(ns: str, program: str | None = None) -> list[int]:
    found = []
    for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
        with contextlib.suppress(OSError):  # gone meanwhile
            if program is None or Path(f"/proc/{pid}/comm").read_text().strip() == program:
                found.append(int(pid))
    return found


if __name__ == "__main__":  # pragma: no cover - by hand: python -m tests.lab (lists leftovers)
    print(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout, file=sys.stderr)
