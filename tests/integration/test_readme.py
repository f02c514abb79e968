"""The README's commands work as written: CI runs its test command, and a test runs its
examples that need no GPU (the quick start, "Try it without a GPU", the render commands)
from a fresh copy of the repository, the way a newcomer types them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import FAKES, free_port_range, require_tool, start_instances, stop, wait_answering

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```sh\n(.*?)\n```", README, re.S)


def block(starting: str) -> str:
    """The README's sh block that starts with this text (a missing one is drift: it fails)."""
    found = [b for b in BLOCKS if b.startswith(starting)]
    assert len(found) == 1, f"the README has {len(found)} sh blocks starting with {starting!r}"
    return found[0]


def sandboxed(text: str, **swaps: str) -> str:
    """The block with the machine-wide places it names (ports, /srv, /etc) moved into the
    test's own; each must be in the block, so a changed README fails here, not silently."""
    for old, new in swaps.items():
        assert old in text, f"{old!r} is no longer in the README block:\n{text}"
        text = text.replace(old, new)
    return text


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = block("python3 -m venv .venv && .venv/bin/pip install -q -e")
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the repository's files (what a clone holds), with the quick start run
    in it exactly as written: a venv of its own with `pip install .`."""
    dest = tmp_path_factory.mktemp("newcomer") / "ollama-fleet"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.split("\0")):
            if (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
    else:  # an unpacked sdist: no git
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info"))
    quick_start = block("python3 -m venv .venv && .venv/bin/pip install . &&")
    proc = _bash(quick_start, dest, _newcomer_env(dest), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # `plan --gpus 0,1,2,3` without NVML: pinned by index, ports from the default base.
    assert "11534" in proc.stdout and "11537" in proc.stdout, proc.stdout
    return dest


def _newcomer_env(checkout: Path, **extra: str) -> dict[str, str]:
    """A plain login environment: no venv of the test run, no PYTHONPATH, the state dir kept
    inside the test (as root the default would be /var/lib/ollama-fleet)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "OLLAMA_FLEET_STATE_DIR": str(checkout.parent / "state"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    # `python3` is the interpreter that runs the tests (by name it may be another, or
    # missing), alone in a dir of its own: nothing else of the test run is on PATH.
    bin_dir = checkout.parent / "bin"
    if not (bin_dir / "python3").exists():
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return {**env, **extra}


def _bash(script: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _activated(checkout: Path, script: str) -> str:
    """The README's activation line, then the block, as a newcomer types them one after the other."""
    return block(". .venv/bin/activate") + "\n" + script


def test_quick_start_installs_and_plans(checkout: Path) -> None:
    script = checkout / ".venv" / "bin" / "ollama-fleet"
    assert script.is_file()
    # The venv is the quick start's own, not the test run's.
    assert Path(sys.executable).parent != script.parent


def test_try_it_without_a_gpu(checkout: Path) -> None:
    """The block as written: a fleet of 4 fake instances behind nginx, a generate through it
    answered by one of them, then `down`."""
    require_tool("nginx")
    require_tool("curl")
    gateway_port = free_port_range(1)
    text = sandboxed(
        block("mkdir -p models"),
        **{"127.0.0.1:8080": f"127.0.0.1:{gateway_port}", "localhost:8080": f"localhost:{gateway_port}"},
    )
    env = _newcomer_env(checkout, OLLAMA_FLEET_BASE_PORT=str(free_port_range(4)))
    try:
        proc = _bash(_activated(checkout, text), checkout, env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert re.search(r"(?im)^X-Fleet-Instance: gpu[0-3]\r?$", proc.stdout), proc.stdout
        assert '"done":true' in proc.stdout.replace(" ", ""), proc.stdout
        assert re.search(r"stopped 4 instance\(s\) and the gateway", proc.stdout), proc.stdout
    finally:
        _bash(_activated(checkout, "ollama-fleet down --timeout 2 || true"), checkout, env)


def _kill_pidfile(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        os.kill(int(path.read_text().split()[0]), signal.SIGTERM)


def _header_command(config: Path) -> list[str]:
    """The command the rendered file's header comment says to run it with."""
    lines = config.read_text().splitlines()
    at = next(n for n, line in enumerate(lines) if line.rstrip().lower().endswith("run it with"))
    return lines[at + 1].lstrip("# ").split()


@pytest.mark.parametrize("engine", ["nginx", "haproxy"])
def test_render_commands_run_as_written(checkout: Path, tmp_path: Path, engine: str) -> None:
    """The README's render block for each engine, with /srv, /etc and /run moved into the
    test's dir: the file is written, the gateway starts from it and sends a request through."""
    require_tool(engine)
    base, procs = start_instances(2)
    gateway_port = free_port_range(1)
    root = tmp_path / "root"
    if engine == "nginx":
        prefix, config = root / "srv-fleet-nginx", root / "srv-fleet-nginx" / "nginx.conf"
        text = sandboxed(block("ollama-fleet render-nginx --standalone"), **{"/srv/fleet-nginx": str(prefix)})
        pidfile = prefix / "nginx.pid"
    else:
        prefix, config = root / "run", root / "etc-haproxy" / "ollama-fleet.cfg"
        text = sandboxed(
            block("ollama-fleet render-haproxy"),
            **{"/etc/haproxy/ollama-fleet.cfg": str(config), "/run/ollama-fleet": str(prefix)},
        )
        pidfile = prefix / "haproxy.pid"
    env = _newcomer_env(
        checkout,
        PYTHONPATH=str(checkout / "tests" / "fakes"),  # the fake NVML: this machine has no GPU
        FAKE_NVML_GPUS="2",
        OLLAMA_FLEET_BASE_PORT=str(base),
        OLLAMA_FLEET_LISTEN=f"127.0.0.1:{gateway_port}",
        OLLAMA_FLEET_METRICS_PORT=str(free_port_range(1)),
    )
    try:
        proc = _bash(_activated(checkout, text), checkout, env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        answer = wait_answering(f"http://127.0.0.1:{gateway_port}/api/version")
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Fleet-Instance"] in ("gpu0", "gpu1")
        # The command in the block is the one the file's header gives.
        assert " ".join(_header_command(config)) in text
    finally:
        _kill_pidfile(pidfile)
        stop(procs)


@pytest.mark.parametrize("engine", ["nginx", "haproxy"])
def test_rendered_config_runs_without_check(tmp_path: Path, engine: str) -> None:
    """Rendered with -o and --prefix but no --check (nothing created the layout as a side
    effect), the file starts with exactly the command its header names."""
    tool = require_tool(engine)
    base, procs = start_instances(1)
    gateway_port = free_port_range(1)
    prefix = tmp_path / "fresh" / "prefix"  # neither exists yet
    config = tmp_path / "fresh" / "etc" / f"{engine}.conf"
    env = {
        **os.environ,
        "PYTHONPATH": str(FAKES),
        "FAKE_NVML_GPUS": "1",
        "OLLAMA_FLEET_BASE_PORT": str(base),
        "OLLAMA_FLEET_METRICS_PORT": str(free_port_range(1)),
    }
    argv = [
        sys.executable,
        "-m",
        "ollama_fleet",
        f"render-{engine}",
        "--listen",
        f"127.0.0.1:{gateway_port}",
        "--prefix",
        str(prefix),
        "-o",
        str(config),
    ]
    if engine == "nginx":
        argv.append("--standalone")
    try:
        rendered = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert rendered.returncode == 0, rendered.stderr
        command = _header_command(config)
        assert Path(command[0]).name == engine and str(config) in command
        started = subprocess.run([tool, *command[1:]], capture_output=True, text=True, timeout=30)
        assert started.returncode == 0, started.stderr
        answer = wait_answering(f"http://127.0.0.1:{gateway_port}/api/version")
        assert answer.status_code == 200 and answer.headers["X-Fleet-Instance"] == "gpu0"
        assert httpx.get(f"http://127.0.0.1:{gateway_port}/api/tags").status_code == 200
    finally:
        _kill_pidfile(prefix / f"{engine}.pid")
        stop(procs)
