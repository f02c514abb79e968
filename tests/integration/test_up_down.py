"""`up` and `down` with real subprocesses and signals against fake Ollama instances."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.helpers import FAKE_OLLAMA, fake_pynvml


def env_of(url: str) -> dict:
    return httpx.get(url.replace("/api/version", "/_fake/env"), timeout=5).json()


def state(fleet) -> dict:
    return json.loads((fleet.state / "supervisor.json").read_text())


def pids(fleet) -> dict[str, int]:
    return {name: st["pid"] for name, st in state(fleet)["instances"].items()}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_each_instance_sees_its_pinned_environment(fleet) -> None:
    """The fleet's keys, [env], and of the caller's environment only the documented few:
    a stray OLLAMA_* or *_VISIBLE_DEVICES in the operator's shell is named, never passed."""
    result = fleet.run(
        "up",
        "--env",
        "OLLAMA_NUM_PARALLEL=2",
        "--keep-alive",
        "15s",
        OLLAMA_NUM_PARALLEL="7",
        OLLAMA_ORIGINS="http://evil",
        HIP_VISIBLE_DEVICES="1",
        CUDA_VISIBLE_DEVICES="3",
        SOME_SECRET="s3cret",
        LC_ALL="C.UTF-8",
        HTTPS_PROXY="http://proxy.invalid:3128",
    )
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "do not inherit" in line)
    for name in ("HIP_VISIBLE_DEVICES", "OLLAMA_ORIGINS", "a line OLLAMA_ORIGINS=... in an --env-file", "--gpus"):
        assert name in warning, warning
    assert "OLLAMA_NUM_PARALLEL" not in warning  # passed with --env on purpose
    assert "s3cret" not in result.stderr + result.stdout and "evil" not in result.stderr
    for k in range(2):
        env = env_of(fleet.url(k))
        assert env["CUDA_VISIBLE_DEVICES"] == fake_pynvml.uuid_of(k)
        assert env["OLLAMA_HOST"] == f"127.0.0.1:{fleet.base_port + k}"
        assert env["OLLAMA_MODELS"] == str(fleet.models)
        assert env["OLLAMA_KEEP_ALIVE"] == "15s"
        assert env["OLLAMA_VULKAN"] == "0" and env["OLLAMA_NO_CLOUD"] == "1"
        # The writer (first instance) prunes at its own start; every other one never does.
        assert env.get("OLLAMA_NOPRUNE") == (None if k == 0 else "1")
        assert env["OLLAMA_NUM_PARALLEL"] == "2"
        assert env["LC_ALL"] == "C.UTF-8" and env["HTTPS_PROXY"] == "http://proxy.invalid:3128"
        assert "PATH" in env and "HOME" in env
        for stray in ("OLLAMA_ORIGINS", "HIP_VISIBLE_DEVICES", "SOME_SECRET", "PYTHONPATH", "OLLAMA_FLEET_STATE_DIR"):
            assert stray not in env, stray


def test_up_fails_when_an_instance_is_not_on_its_own_gpu(fleet, tmp_path: Path) -> None:
    """An Ollama that ignores OLLAMA_VULKAN (as every release since 0.30 would without it)
    sees its neighbours' GPUs through Vulkan; one whose CUDA library fails runs on the CPU.
    `up` reads each instance's own "inference compute" lines and fails, naming it."""
    leaky = tmp_path / "ollama-leaky"
    leaky.write_text(f'#!/bin/sh\nunset OLLAMA_VULKAN\nexec {sys.executable} {FAKE_OLLAMA} "$@"\n')
    leaky.chmod(0o755)
    result = fleet.run("up", "--ollama-bin", str(leaky), "--env", "FAKE_OLLAMA_GPUS=2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"gpu0 sees Vulkan 1 \(0000:11:00\.0\) beyond its pin", result.stderr), result.stderr
    assert re.search(r"gpu1 sees Vulkan 0 \(0000:10:00\.0\) beyond its pin", result.stderr), result.stderr
    fleet.run("down", "--timeout", "2")

    result = fleet.run("up", "--env", "FAKE_OLLAMA_NO_CUDA=1")
    assert result.returncode == 1
    assert "gpu0 runs on the CPU" in result.stderr and "gpu1 runs on the CPU" in result.stderr, result.stderr


def test_status_shows_each_instances_devices(fleet) -> None:
    assert fleet.run("up", "--env", "FAKE_OLLAMA_GPUS=2").returncode == 0
    report = json.loads(fleet.run("status", "--json").stdout)
    devices = {i["name"]: i["devices"] for i in report["instances"]}
    assert devices == {
        "gpu0": [f"CUDA {fake_pynvml.uuid_of(0)} (0000:10:00.0)"],
        "gpu1": [f"CUDA {fake_pynvml.uuid_of(1)} (0000:11:00.0)"],
    }
    assert report["healthy"] is True


def test_without_nvml_instances_are_pinned_by_index(fleet) -> None:
    result = fleet.run("up", "--gpus", "0,1", FAKE_NVML_GPUS="missing")
    assert result.returncode == 0, result.stderr
    assert "pinning by index" in result.stderr
    assert [env_of(fleet.url(k))["CUDA_VISIBLE_DEVICES"] for k in range(2)] == ["0", "1"]


def test_up_twice_keeps_pids_and_down_leaves_nothing(fleet) -> None:
    assert fleet.run("up").returncode == 0
    first = pids(fleet)
    supervisor = state(fleet)["supervisor"]["pid"]
    again = fleet.run("up")
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout
    assert pids(fleet) == first

    down = fleet.run("down")
    assert down.returncode == 0, down.stderr
    assert "stopped 2 instance(s)" in down.stdout
    for pid in [*first.values(), supervisor]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (fleet.state / "supervisor.json").exists()
    assert not (fleet.state / "fleet.json").exists()

    second = fleet.run("down")
    assert second.returncode == 0
    assert "nothing to stop" in second.stdout


def test_a_changed_plan_restarts_saying_why_and_a_dropped_instance_stops(fleet) -> None:
    assert fleet.run("up").returncode == 0
    before = pids(fleet)
    result = fleet.run("up", "--gpus", "0", "--keep-alive", "1h")
    assert result.returncode == 0, result.stderr
    assert "gpu0: restarting (plan changed: OLLAMA_KEEP_ALIVE 5m → 1h)" in result.stdout
    assert "gpu1: stopping (no longer in the plan)" in result.stdout
    assert pids(fleet).keys() == {"gpu0"}
    assert pids(fleet)["gpu0"] != before["gpu0"]
    assert env_of(fleet.url(0))["OLLAMA_KEEP_ALIVE"] == "1h"
    assert not answers(fleet.url(1))


def test_port_taken_names_port_and_holder(fleet) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", fleet.base_port + 1))
        sock.listen()
        result = fleet.run("up")
    assert result.returncode == 1
    assert f"port {fleet.base_port + 1} (for gpu1) is taken by pid {os.getpid()}" in result.stderr
    assert not (fleet.state / "fleet.json").exists()  # nothing started


def test_missing_binary_is_exit_3(fleet) -> None:
    result = fleet.run("up", "--ollama-bin", "/nonexistent/ollama")
    assert result.returncode == 3
    assert result.stderr.startswith("error: ollama_bin: /nonexistent/ollama not found")


def test_missing_models_dir_is_exit_3(fleet, tmp_path: Path) -> None:
    result = fleet.run("up", "--models-dir", str(tmp_path / "absent"))
    assert result.returncode == 3
    assert "models_dir:" in result.stderr and "does not exist" in result.stderr


def test_an_instance_that_exits_at_start_fails_up_with_its_log(fleet, tmp_path: Path) -> None:
    broken = tmp_path / "ollama"
    broken.write_text("#!/bin/sh\necho 'Error: no compatible GPUs were discovered'\nexit 1\n")
    broken.chmod(0o755)
    result = fleet.run("up", "--ollama-bin", str(broken))
    assert result.returncode == 1
    assert "gpu0 exited during start-up (exit code 1)" in result.stderr
    assert "Error: no compatible GPUs were discovered" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_instance_that_never_answers_fails_up_and_the_others_keep_running(fleet, tmp_path: Path) -> None:
    # gpu1 hangs without listening; gpu0 is a real fake.
    mixed = tmp_path / "ollama"
    mixed.write_text(
        "#!/bin/sh\n"
        f'case "$OLLAMA_HOST" in *:{fleet.base_port + 1}) echo "loading..."; exec sleep 600;; esac\n'
        f'exec {fleet.env["OLLAMA_FLEET_OLLAMA_BIN"]} "$@"\n'
    )
    mixed.chmod(0o755)
    result = fleet.run("up", "--ollama-bin", str(mixed), "--wait-timeout", "2")
    assert result.returncode == 1
    assert "gpu1 did not answer GET /api/version within 2s" in result.stderr
    assert "loading..." in result.stderr
    assert "failed" in result.stdout  # the table still shows both
    assert answers(fleet.url(0))


def test_preload_loads_each_model_on_every_instance(fleet) -> None:
    result = fleet.run("up", "--preload", "qwen3", "--keep-alive", "-1")
    assert result.returncode == 0, result.stderr
    for k in range(2):
        loaded = httpx.get(fleet.url(k, "/api/ps")).json()["models"]
        assert [m["name"] for m in loaded] == ["qwen3:latest"]


def test_preload_of_a_missing_model_names_instance_and_model(fleet) -> None:
    result = fleet.run("up", "--preload", "nope")
    assert result.returncode == 1
    assert "preload of nope:latest on gpu0 failed: model 'nope:latest' not found" in result.stderr
    assert "preload of nope:latest on gpu1 failed" in result.stderr


def test_background_supervisor_restarts_a_killed_instance(fleet) -> None:
    assert fleet.run("up").returncode == 0
    victim = pids(fleet)["gpu1"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: pids(fleet).get("gpu1") not in (None, victim) and answers(fleet.url(1)), 5, "gpu1 back")
    assert "killed by SIGKILL; restarting in 1s" in (fleet.state / "logs" / "gpu1.log").read_text()


def test_foreground_restarts_prefixes_and_stops_on_sigterm(fleet) -> None:
    proc = subprocess.Popen(
        fleet.argv("up", "--foreground"), env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(
            lambda: (fleet.state / "supervisor.json").exists() and answers(fleet.url(0)) and answers(fleet.url(1)),
            20,
            "the fleet",
        )
        first = pids(fleet)
        os.kill(first["gpu0"], signal.SIGKILL)
        wait_for(
            lambda: pids(fleet).get("gpu0") not in (None, first["gpu0"]) and answers(fleet.url(0)),
            5,
            "gpu0 to answer again",
        )
        everything = [*pids(fleet).values()]
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert "     gpu0 | " in stdout and "Listening on 127.0.0.1" in stdout
    assert "[ollama-fleet] killed by SIGKILL; restarting in 1s" in stdout
    for pid in everything:
        assert not psutil.pid_exists(pid)
    assert not (fleet.state / "supervisor.json").exists()


def test_foreground_ctrl_c_exits_130(fleet) -> None:
    proc = subprocess.Popen(
        fleet.argv("up", "--foreground"), env=fleet.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: answers(fleet.url(0)) and answers(fleet.url(1)), 20, "the fleet")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
    finally:
        proc.kill()
    assert not answers(fleet.url(0))


def test_down_never_signals_a_reused_pid(fleet) -> None:
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        real = psutil.Process(stranger.pid).create_time()
        record = {"pid": stranger.pid, "create_time": real - 1000}  # the same pid, another process
        fleet.state.mkdir(parents=True)
        (fleet.state / "supervisor.json").write_text(
            json.dumps(
                {
                    "supervisor": record,
                    "instances": {"gpu0": {"name": "gpu0", "port": fleet.base_port, "spec": "x", **record}},
                }
            )
        )
        result = fleet.run("down", "--timeout", "1")
        assert result.returncode == 0, result.stderr
        assert "stopped 0 instance(s)" in result.stdout
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_up_waits_through_gpu_discovery(fleet) -> None:
    """Real Ollama binds its port, then discovers GPUs (up to 30 s per library) and only then
    answers: `up` neither takes the bound-but-silent port for a stranger nor gives up on an
    instance whose first probe has to wait."""
    started = time.monotonic()
    result = fleet.run("up", "--env", "FAKE_OLLAMA_STARTUP_S=2")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 2
    assert all(answers(fleet.url(k)) for k in range(2))
    assert "taken" not in result.stderr
