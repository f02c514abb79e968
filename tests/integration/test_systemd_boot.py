"""install-systemd under a real systemd as PID 1: a minimal Debian booted with systemd-nspawn.

`systemd-analyze verify` and a fake systemctl judge the files; only a booted systemd judges
what they do: ProtectSystem= against Ollama's ~/.ollama, `Type=exec` starts that are not
yet answers, nginx reloads, the hand-over of the gateway's port, crash recovery. The
container has its own network namespace (loopback only): every request of this test goes to
127.0.0.1 inside it. Its root is built with debootstrap from the mirror apt already uses on
this machine, cached under pytest's cache dir between runs, and booted `--ephemeral` (a
throw-away copy); the container is stopped by pid, also when the test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FAKE_OLLAMA, require_root, require_tool

ROOT = Path(__file__).parents[2]
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,haproxy,nginx-light,curl,passwd,procps"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
pytestmark = pytest.mark.boot


def _codename() -> str:
    fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    return fields.get("VERSION_CODENAME", "").strip('"') or "bookworm"


def _mirror(codename: str) -> str:
    """The Debian mirror apt on this machine uses for `codename` (deb822 or one-line sources)."""
    for path in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if codename in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                return fields["URIs"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt").glob("sources.list.d/*.list"))]:
        for line in path.read_text().splitlines() if path.exists() else []:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == codename:
                return next(p for p in parts[1:] if "://" in p)
    pytest.fail(f"no apt source for {codename} on this machine to debootstrap from")


def _root(cache: Path) -> Path:
    """A minimal Debian root of this machine's release, built once and kept in the cache."""
    codename = _codename()
    root = cache / codename
    if (root / "usr" / "lib" / "systemd" / "systemd").exists():
        return root
    building = cache / f"{codename}.building"
    shutil.rmtree(building, ignore_errors=True)
    proc = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", codename, str(building), _mirror(codename)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    building.rename(root)  # only a finished root is ever cached
    return root


def _wheels(dest: Path, python: str) -> None:
    """This checkout's wheel and its dependencies' for the container's Python, so the
    container (no network) installs them offline."""
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), str(ROOT)], check=True, capture_output=True)
    # Markers name older Pythons than the container's (tomli below 3.11): left out.
    deps = [d for d in _dependencies() if "python_version" not in d]
    subprocess.run(
        [
            *pip,
            "download",
            "--only-binary=:all:",
            "--python-version",
            python,
            "--implementation",
            "cp",
            *[
                a
                for p in (
                    "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64",
                    "manylinux2010_x86_64",
                    "manylinux_2_28_x86_64",
                    "linux_x86_64",
                )
                for a in ("--platform", p)
            ],
            "-d",
            str(dest),
            *deps,
        ],
        check=True,
        capture_output=True,
    )


def _dependencies() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


class Container:
    """A booted container; `run` executes inside it (all its namespaces) with a clean env."""

    def __init__(self, root: Path, binds: dict[Path, str], log: Path) -> None:
        name = f"fleet-test-{os.getpid()}"
        argv = [
            "systemd-nspawn",
            "-D",
            str(root),
            "--ephemeral",
            "-b",
            "--register=no",
            "--keep-unit",
            "--private-network",
            f"--machine={name}",
            *[f"--bind-ro={src}:{dst}" for src, dst in binds.items()],
        ]
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        self.pid1 = 0
        while time.monotonic() < deadline and self.proc.poll() is None:
            children = subprocess.run(
                ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
            ).stdout.split()
            if children:
                self.pid1 = int(children[0])
                state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=60).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise AssertionError(f"the container did not boot; see {log}")

    def run(self, *argv: str, check: bool = True, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        environ = [f"{k}={v}" for k, v in {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **env}.items()]
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", *environ, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def spawn(self, *argv: str) -> subprocess.Popen:
        """A command inside, in the background (a probe or a load), its stdout piped."""
        return subprocess.Popen(
            ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", f"PATH={PATH}", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> None:
        """SIGTERM makes nspawn shut the container down cleanly; SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def box(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    require_root()
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "pgrep"):
        require_tool(tool)
    root = _root(request.config.cache.mkdir("nspawn-root"))
    python = re.sub(
        r"^python",
        "",
        max(
            (p.name for p in (root / "usr" / "bin").glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name)), key=len
        ),
    )
    wheels = tmp_path_factory.mktemp("wheels")
    wheels.chmod(0o755)
    _wheels(wheels, python)
    tests = FAKE_OLLAMA.parent
    container = Container(
        root, {wheels: "/opt/wheels", tests: "/opt/fleet-tests"}, tmp_path_factory.mktemp("boot") / "nspawn.log"
    )
    try:
        container.run("python3", "-m", "venv", "/opt/ollama-fleet")
        container.run(
            "/opt/ollama-fleet/bin/pip", "install", "-q", "--no-index", "--find-links", "/opt/wheels", "ollama-fleet"
        )
        # As the official installer's user: a home, and no ~/.ollama in it yet.
        container.run(
            "useradd",
            "--system",
            "--user-group",
            "--create-home",
            "--home-dir",
            "/usr/share/ollama",
            "--shell",
            "/usr/sbin/nologin",
            "ollama",
        )
        container.run("install", "-d", "-o", "ollama", "-g", "ollama", "/srv/models")
        yield container
    finally:
        container.stop()


FLEET = "/opt/ollama-fleet/bin/ollama-fleet"
# The fake NVML (2 GPUs) and the fake Ollama (which writes ~/.ollama/id_ed25519 first, as
# Ollama does, and logs its devices) stand in for the hardware; everything else is real.
FAKE_ENV = {"PYTHONPATH": "/opt/fleet-tests/fakes", "FAKE_NVML_GPUS": "2"}
INSTALL = [
    FLEET,
    "install-systemd",
    "--gpus",
    "0,1",
    "--ollama-bin",
    "/opt/fleet-tests/fake_ollama.py",
    "--models-dir",
    "/srv/models",
    "--listen",
    "127.0.0.1:8080",
    "--env",
    "FAKE_OLLAMA_GPUS=2",
    "--env",
    "FAKE_OLLAMA_TPS=100",
    "--wait-timeout",
    "60",
]


def _status(box: Container) -> dict:
    return json.loads(box.run(FLEET, "status", "--json", check=False, **FAKE_ENV).stdout)


def _wait_healthy(box: Container, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report = _status(box)
        if report["healthy"] or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


PROBE = """
import sys, time, httpx
refused = answered = 0
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline and not __import__("os").path.exists("/tmp/probe-stop"):
    try:
        answered += httpx.get("http://127.0.0.1:8080/api/version", timeout=5).status_code == 200
    except httpx.TransportError:
        refused += 1
    time.sleep(0.02)
print(refused, answered)
"""


def test_the_operators_path_under_a_real_systemd(box: Container) -> None:
    # Install: ~/.ollama made for the service user (else Ollama's key write fails under
    # ProtectSystem=full and every instance crash-loops), then it waits for the answers.
    installed = box.run(*INSTALL, **FAKE_ENV)
    assert "all 2 instance(s) answer on their own GPUs, and the gateway" in installed.stdout, installed.stdout
    assert box.run("stat", "-c", "%U %a", "/usr/share/ollama/.ollama").stdout.split() == ["ollama", "755"]
    answer = box.run(
        "curl",
        "-si",
        "http://127.0.0.1:8080/api/generate",
        "-d",
        '{"model": "llama3.2", "prompt": "hi", "stream": false}',
    ).stdout
    assert re.search(r"(?im)^x-fleet-instance: gpu[01]\r?$", answer), answer
    # The fleet's own units are not "an ollama serve the fleet did not start".
    assert "did not start" not in box.run(FLEET, "plan", "--gpus", "0,1", **FAKE_ENV).stderr
    report = _status(box)
    assert report["healthy"] and report["source"] == "systemd", report
    logs = box.run(FLEET, "logs", "-n", "20").stdout  # the journal, each line named by its instance
    assert any(line.startswith("gpu1 | ") and "inference compute" in line for line in logs.splitlines()), logs
    assert [i["restarts"] for i in report["instances"]] == [0, 0]
    assert all(i["devices"] and i["devices"][0].startswith("CUDA GPU-") for i in report["instances"])

    # kill -9: systemd restarts it (RestartSec=3) and status counts it.
    pid = box.run("systemctl", "show", "-p", "MainPID", "--value", "ollama-fleet@gpu1.service").stdout.strip()
    box.run("kill", "-9", pid)
    time.sleep(1)
    report = _wait_healthy(box, 30)
    assert report["healthy"], report
    gpu1 = next(i for i in report["instances"] if i["name"] == "gpu1")
    assert gpu1["restarts"] == 1 and str(gpu1["pid"]) != pid

    # The gateway moves from nginx to HAProxy under a probe every 20 ms: never refused.
    box.run("rm", "-f", "/tmp/probe-stop")
    probe = box.spawn("/opt/ollama-fleet/bin/python", "-c", PROBE, "60")
    try:
        time.sleep(1)
        switched = box.run(*INSTALL, "--engine", "haproxy", **FAKE_ENV)
        assert "and the gateway" in switched.stdout
        time.sleep(1)
    finally:
        box.run("touch", "/tmp/probe-stop")
        out, _ = probe.communicate(timeout=30)
    refused, answered = map(int, out.split())
    assert refused == 0 and answered > 50, (refused, answered)
    assert box.run("systemctl", "is-active", "ollama-fleet-gateway.service").stdout.strip() == "active"

    # A rolling restart under streamed load: no stream cut, no request lost.
    bench = box.spawn(
        FLEET,
        "bench",
        "--url",
        "http://127.0.0.1:8080",
        "--model",
        "llama3.2",
        "-c",
        "4",
        "--duration",
        "12",
        "--num-predict",
        "40",
        "--json",
    )
    time.sleep(1)
    rolled = box.run(FLEET, "restart", "--rolling", **FAKE_ENV)
    out, err = bench.communicate(timeout=120)
    result = json.loads(out)
    assert result["errors"] == {} and result["ok"] > 20, (result, err, rolled.stdout)

    # Uninstall leaves nothing: no unit, no file of ours, nothing running.
    box.run(FLEET, "uninstall-systemd")
    left = box.run(
        "sh",
        "-c",
        "ls /etc/ollama-fleet /etc/systemd/system/ollama-fleet* /etc/nginx/conf.d/ollama-fleet.conf 2>/dev/null; true",
    ).stdout
    assert left.strip() == ""
    units = box.run("systemctl", "list-units", "--all", "--no-legend", "ollama-fleet*").stdout
    assert "active" not in units.replace("inactive", ""), units


def test_a_binary_that_exits_at_once_fails_the_install_at_once_with_its_journal(box: Container) -> None:
    """An `ollama` that exits at once: systemd restarts it every 3 s. Installed first, or
    over a running fleet, install-systemd fails within seconds (two restarts without an
    answer are a crash loop, not the end of a 60 s wait), with the unit's journal (#24 item 11)."""
    broken = [("/bin/false" if arg == "/opt/fleet-tests/fake_ollama.py" else arg) for arg in INSTALL]
    try:
        for before in ("nothing installed", "a running fleet"):
            started = time.monotonic()
            failed = box.run(*broken, check=False, **FAKE_ENV)
            took = time.monotonic() - started
            assert failed.returncode == 1, (before, failed.stdout, failed.stderr)
            assert took < 30, (before, took)  # RestartSec=3: two restarts take ~6 s
            assert "last lines of journalctl -u ollama-fleet@gpu" in failed.stderr, (before, failed.stderr)
            if before == "nothing installed":
                assert "crash loop" in failed.stderr, failed.stderr
                box.run(FLEET, "uninstall-systemd")
                box.run(*INSTALL, **FAKE_ENV)  # a good fleet, for the second round
    finally:
        box.run(FLEET, "uninstall-systemd", check=False)
