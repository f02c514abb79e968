"""Shared fixtures: a clean environment, the fake NVML, the fake Ollama, real tools."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
FAKES = TESTS / "fakes"
FAKE_OLLAMA = TESTS / "fake_ollama.py"
# The console script of the environment the tests run in (never whatever PATH finds first:
# a stray global install would make the tests pass on one machine only). Not resolved:
# a venv's python is a link, and its scripts sit next to the link.
CONSOLE_SCRIPT = Path(sys.executable).parent / "ollama-fleet"
sys.path.insert(0, str(FAKES))
import pynvml as fake_pynvml  # noqa: E402  (the fake, from tests/fakes)

assert Path(fake_pynvml.__file__).parent == FAKES, "tests must use the fake pynvml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No OLLAMA_*, OLLAMA_FLEET_*, CUDA_* or FAKE_* from the caller; state under tmp_path."""
    for key in list(os.environ):
        if key.startswith(("OLLAMA_", "CUDA_", "FAKE_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("OLLAMA_FLEET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FAKE_NVML_GPUS", "0")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml)
    return tmp_path


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch):
    """Set the number of fake GPUs: `nvml(8)`, `nvml("missing")`, `nvml(2, mig="1")`."""

    def configure(count: int | str, mig: str = "") -> None:
        monkeypatch.setenv("FAKE_NVML_GPUS", str(count))
        monkeypatch.setenv("FAKE_NVML_MIG", mig)

    return configure


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    monkeypatch.setenv("OLLAMA_FLEET_MODELS_DIR", str(path))
    return path


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


@pytest.fixture
def fleet(tmp_path: Path):
    """Run the real CLI in subprocesses against fake Ollama instances; `down` at teardown."""
    import subprocess

    class Fleet:
        def __init__(self) -> None:
            self.state = tmp_path / "fleet-state"
            self.models = tmp_path / "fleet-models"
            self.models.mkdir()
            self.base_port = free_port_range(8)
            (tmp_path / "home").mkdir()
            self.env = subprocess_env(
                HOME=str(tmp_path / "home"),  # instances write ~/.ollama/id_ed25519 there
                FAKE_NVML_GPUS="2",
                OLLAMA_FLEET_STATE_DIR=str(self.state),
                OLLAMA_FLEET_MODELS_DIR=str(self.models),
                OLLAMA_FLEET_OLLAMA_BIN=str(FAKE_OLLAMA),
                OLLAMA_FLEET_BASE_PORT=str(self.base_port),
                OLLAMA_FLEET_WAIT_TIMEOUT="20",
                OLLAMA_FLEET_GATEWAY="false",  # gateway tests turn it on, on a port of their own
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

    f = Fleet()
    yield f
    f.run("down", "--timeout", "2")


def fake_knobs_as_fleet_env(env: dict[str, str]) -> dict[str, str]:
    """The fake Ollama's FAKE_OLLAMA_* knobs, moved into OLLAMA_FLEET_ENV: instances inherit
    nothing of the caller's environment but PATH, HOME, locale and proxies, so the knobs
    reach them the way a user's own variables would, through the fleet's [env]."""
    knobs = [f"{k}={env.pop(k)}" for k in sorted(env) if k.startswith("FAKE_OLLAMA_")]
    if knobs:
        env["OLLAMA_FLEET_ENV"] = ",".join(filter(None, [env.get("OLLAMA_FLEET_ENV", ""), *knobs]))
    return env


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
