"""What tests and benchmarks share: the fake Ollama and NVML, real tools (required under
CI=true), free ports, and fake instances started and stopped by pid."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ollama_fleet.gateway.haproxy import Haproxy

TESTS = Path(__file__).parent
ROOT = TESTS.parent  # the repository
FAKES = TESTS / "fakes"
FAKE_OLLAMA = TESTS / "fake_ollama.py"
# The console script of the environment the tests run in (never whatever PATH finds first:
# a stray global install would make the tests pass on one machine only). Not resolved:
# a venv's python is a link, and its scripts sit next to the link.
CONSOLE_SCRIPT = Path(sys.executable).parent / "ollama-fleet"
sys.path.insert(0, str(FAKES))
import pynvml as fake_pynvml  # noqa: E402  (the fake, from tests/fakes)

assert Path(fake_pynvml.__file__).parent == FAKES, "tests must use the fake pynvml"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for the real CLI in a subprocess: the fake pynvml first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAKES), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _missing(what: str) -> None:
    """Under CI=true a missing prerequisite fails the test; elsewhere it skips it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true")
    pytest.skip(what)  # only outside CI: under CI=true it failed above


def as_root_on_purpose() -> dict[str, str]:
    """For `up` run by root over a models dir of root's, as tests and benchmarks do: root
    instances run only when asked for (OLLAMA_FLEET_USER is the caller's own word, as --user)."""
    return {"OLLAMA_FLEET_USER": "root"} if os.geteuid() == 0 else {}


def require_tool(name: str) -> str:
    """The path of a real tool; under CI=true its absence fails the test instead of skipping it."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        _missing(f"{name} (not installed)")
    return path  # type: ignore[return-value]


def require_root() -> None:
    """Tests of what root does to /etc (install-systemd's real path) run as root, as CI does."""
    if os.geteuid() != 0:
        _missing("root")


def free_port_range(count: int) -> int:
    """A base port with `count` free ports after it (picked at random to dodge parallel runs)."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        try:
            socks = []
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range")


def fake_knobs_as_fleet_env(env: dict[str, str]) -> dict[str, str]:
    """The fake Ollama's FAKE_OLLAMA_* knobs, moved into OLLAMA_FLEET_ENV: instances inherit
    nothing of the caller's environment but PATH, HOME, locale and proxies, so the knobs
    reach them the way a user's own variables would, through the fleet's [env]."""
    knobs = [f"{k}={env.pop(k)}" for k in sorted(env) if k.startswith("FAKE_OLLAMA_")]
    if knobs:
        env["OLLAMA_FLEET_ENV"] = ",".join(filter(None, [env.get("OLLAMA_FLEET_ENV", ""), *knobs]))
    return env


def gateway_flags(engine: str, *extra: str) -> tuple[str, list[str]]:
    """`up`'s flags for a private gateway of `engine` on free loopback ports, and its URL."""
    port = free_port_range(1)
    flags = ["--gateway", "--engine", engine, "--listen", f"127.0.0.1:{port}", *extra]
    if engine == "haproxy":
        flags += ["--metrics-port", str(free_port_range(1))]
    return f"http://127.0.0.1:{port}", flags


def gateway_up(fleet, engine: str, *extra: str, **env: str) -> str:  # type: ignore[no-untyped-def]
    """`up` with a private gateway of `engine` (the `fleet` fixture's fleet); its URL."""
    require_tool(engine)
    url, flags = gateway_flags(engine, *extra)
    result = fleet.run("up", *flags, **env)
    assert result.returncode == 0, result.stderr
    return url


def wait_answering(url: str, timeout: float = 10.0, **kwargs: object):
    """Poll until `url` answers HTTP at all (any status) and return that response."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=0.5, **kwargs)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout}s") from None
            time.sleep(0.02)


def refused_source(url: str, engine: str, headers: dict[str, str] | None = None) -> None:
    """Assert that a client outside the allowlist (127.0.0.2) is refused: nginx answers 403,
    HAProxy (a box or the front) closes the connection before reading a byte of it."""
    import httpx

    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=5) as other:
        try:
            response = other.get(url, headers=headers)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            assert engine == "haproxy", f"{engine} closed the connection instead of answering 403"
            return
    assert engine == "nginx" and response.status_code == 403, (engine, response.status_code)


def fake_home() -> str:
    """A HOME for fake instances started by tests: Ollama writes its key to ~/.ollama at
    start (and so does the fake); never the HOME of whoever runs the tests. Removed at exit."""
    global _FAKE_HOME
    if _FAKE_HOME is None:
        import atexit
        import tempfile

        _FAKE_HOME = tempfile.mkdtemp(prefix="fake-ollama-home-")
        atexit.register(shutil.rmtree, _FAKE_HOME, True)
    return _FAKE_HOME


_FAKE_HOME: str | None = None


def start_instances(count: int, **env: str):
    """`count` fake `ollama serve` on consecutive free ports; returns (base port, processes)."""
    import subprocess

    base = free_port_range(count)
    procs = [
        subprocess.Popen(
            [sys.executable, str(FAKE_OLLAMA), "serve"],
            env={"PATH": os.environ["PATH"], "HOME": fake_home(), "OLLAMA_HOST": f"127.0.0.1:{base + k}", **env},
            stdout=subprocess.DEVNULL,  # its key-generation notice, as Ollama prints it
            stderr=subprocess.DEVNULL,
        )
        for k in range(count)
    ]
    for k in range(count):
        wait_answering(f"http://127.0.0.1:{base + k}/api/version")
    return base, procs


def stop(procs) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


class Gateway:
    """A real nginx or haproxy running the standalone config that `render-<engine>` writes."""

    def __init__(
        self,
        base_port: int,
        count: int,
        *flags: str,
        engine: str = "nginx",
        scheme: str = "http",
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.engine = engine
        self.tool = require_tool(engine)
        self.prefix = Path(tempfile.mkdtemp(prefix=f"fleet-{engine}-"))
        self.port = free_port_range(1)
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.conf = self.prefix / f"{engine}.conf"
        extra = ["--metrics-port", str(free_port_range(1))] if engine == "haproxy" else ["--standalone"]
        args = [
            f"render-{engine}",
            "--check",
            "--prefix",
            str(self.prefix),
            "-o",
            str(self.conf),
            "--gpus",
            ",".join(map(str, range(count))),
            "--base-port",
            str(base_port),
            "--listen",
            f"127.0.0.1:{self.port}",
            *extra,
            *flags,
        ]
        result = subprocess.run(
            [sys.executable, "-m", "ollama_fleet", *args],
            capture_output=True,
            text=True,
            env=subprocess_env(FAKE_NVML_GPUS=str(count)),
        )
        assert result.returncode == 0, result.stderr
        if engine == "nginx":
            subprocess.run([self.tool, "-p", str(self.prefix), "-c", str(self.conf)], check=True)
        else:
            subprocess.run([self.tool, "-W", "-D", "-f", str(self.conf)], check=True, capture_output=True)
        wait_answering(self.url + "/", verify=verify)
        if engine == "haproxy":  # servers are fully UP (not "UP 1/2") once their first check passed
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                stats = Haproxy().stats(self.prefix)
                if stats is not None and stats.servers and all(s.state == "UP" for s in stats.servers.values()):
                    break
                time.sleep(0.05)

    def close(self) -> None:
        if self.engine == "nginx":
            subprocess.run([self.tool, "-p", str(self.prefix), "-c", str(self.conf), "-s", "stop"], capture_output=True)
        else:
            pid = int((self.prefix / "haproxy.pid").read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        shutil.rmtree(self.prefix, ignore_errors=True)


class CliFleet:
    """The real CLI run in subprocesses against fake Ollama instances, its state, models and
    home under `tmp` (the `fleet` fixture, and benchmarks that need `status`)."""

    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "fleet-state"
        self.models = tmp / "fleet-models"
        self.models.mkdir()
        self.base_port = free_port_range(8)
        (tmp / "home").mkdir()
        self.env = subprocess_env(
            HOME=str(tmp / "home"),  # instances write ~/.ollama/id_ed25519 there
            FAKE_NVML_GPUS="2",
            OLLAMA_FLEET_STATE_DIR=str(self.state),
            OLLAMA_FLEET_MODELS_DIR=str(self.models),
            OLLAMA_FLEET_OLLAMA_BIN=str(FAKE_OLLAMA),
            OLLAMA_FLEET_BASE_PORT=str(self.base_port),
            OLLAMA_FLEET_WAIT_TIMEOUT="20",
            OLLAMA_FLEET_GATEWAY="false",  # gateway tests turn it on, on a port of their own
            **as_root_on_purpose(),
        )

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ollama_fleet", *args]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*args),
            env=fake_knobs_as_fleet_env({**self.env, **env}),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def url(self, k: int, path: str = "/api/version") -> str:
        return f"http://127.0.0.1:{self.base_port + k}{path}"


def fail_fast(fleet: CliFleet, engine: str, fault: str, *, requests: int, concurrency: int) -> dict[str, Any]:
    """4 one-slot instances behind an `engine` gateway, gpu1 failing every model request at
    once from just before a streamed load (`fault`: "load", a 500 as from a GPU whose memory
    another process took; "busy", a 503 as from a full queue). Returns the requests that
    failed, how long `status` took to call gpu1 failing (exit 1), and how long to call the
    fleet healthy again once gpu1 works (`detect_s`/`recover_s`: inf when it never did), and
    what `status --json` said on stderr then (`said`)."""
    import json
    import threading

    from ollama_fleet.bench import run_load

    faults = fleet.state.parent / "faults"
    faults.mkdir()
    fleet.env["FAKE_NVML_GPUS"] = "4"
    url = gateway_up(fleet, engine, "--preload", "llama3.2", FAKE_OLLAMA_FAULTS=str(faults))
    failing = faults / str(fleet.base_port + 1)  # gpu1's port: the fake reads FAULTS/<port>

    said: list[str] = []

    def gpu1_healthy() -> bool | None:
        """gpu1's health per `status`, None when `status` disagrees with its own exit code."""
        shown = fleet.run("status", "--json")
        report = json.loads(shown.stdout)
        healthy = next(i["healthy"] for i in report["instances"] if i["name"] == "gpu1")
        said[:] = [shown.stderr]
        return healthy if (shown.returncode == 0) == report["healthy"] == healthy else None

    def until(wanted: bool, start: float, limit: float = 15.0) -> float:
        while time.monotonic() - start < limit:
            if gpu1_healthy() is wanted:
                return time.monotonic() - start
            time.sleep(0.1)
        return float("inf")

    found: dict[str, float] = {}
    failing.write_text(fault)
    start = time.monotonic()
    watcher = threading.Thread(target=lambda: found.update(detect_s=until(False, start), said=said[0]))
    watcher.start()
    result = run_load([url], "llama3.2", concurrency=concurrency, requests=requests)
    watcher.join()
    failing.unlink()
    found["recover_s"] = until(True, time.monotonic())
    return {"failed": sum(s.error is not None for s in result.samples), "requests": len(result.samples), **found}


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def readable_copy(path: Path) -> Path:
    """`path` copied where `nobody` can read it: a checkout may sit in a directory other
    users cannot enter (root's home, a `mktemp -d` folder), as CI's may."""
    where = Path(tempfile.mkdtemp(prefix="fleet-readable-"))
    where.chmod(0o755)
    copy = where / path.name
    shutil.copy(path, copy)
    copy.chmod(0o755)
    return copy


def any_python() -> str:
    """A Python `nobody` can run, for standard-library-only programs (the fake Ollama): the
    system's, since the tests' own may sit under a directory only root may enter."""
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def as_nobody(call: Callable[[], object]) -> str:
    """`call()` in a forked child that dropped to `nobody` (no supplementary groups): what it
    returned or raised, as text. The child has every module the tests imported, so nothing
    of the checkout needs to be readable by `nobody`."""
    import pwd

    account = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            said = str(call())
        except BaseException as exc:
            said = str(exc)
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as out:
        said = out.read()
    os.waitpid(pid, 0)
    return said
