"""`restart` and `restart --rolling`: real supervisor, real nginx and haproxy, fake Ollama,
and a steady streamed load that must not lose a single request."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from ollama_fleet.bench import run_load
from ollama_fleet.state import read_actual
from tests.helpers import gateway_up


def pids(fleet) -> dict[str, int]:
    return {name: st.pid for name, st in read_actual(fleet.state).instances.items()}


@pytest.mark.parametrize("engine", ["nginx", "haproxy"])
def test_rolling_restart_under_streamed_load_loses_nothing(fleet, engine: str) -> None:
    """Streams of 40 tokens at 50 tokens/s keep every instance busy while all of them are
    restarted one by one: zero failed requests, zero cut streams, every pid new."""
    fleet.env["FAKE_OLLAMA_TPS"] = "50"
    url = gateway_up(fleet, engine, "--env", "OLLAMA_NUM_PARALLEL=2")
    before = pids(fleet)
    load: dict = {}
    worker = threading.Thread(
        target=lambda: load.update(result=run_load([url], "qwen3", concurrency=4, duration=7, num_predict=40))
    )
    worker.start()
    restart = fleet.run("restart", "--rolling")
    worker.join()
    assert restart.returncode == 0, restart.stderr
    assert "restarted: gpu0, gpu1" in restart.stdout
    assert "gpu0: draining" in restart.stdout and "gpu1: back in the gateway" in restart.stdout
    result = load["result"]
    assert result.errors == {}, result.errors  # no 5xx, no refused connection, no stream cut
    assert len(result.ok) >= 8 and all(s.tokens == 40 for s in result.ok)
    after = pids(fleet)
    assert all(after[n] != before[n] for n in before), (before, after)


def test_plain_restart_of_one_instance_reloads_its_models(fleet) -> None:
    assert fleet.run("up", "--preload", "qwen3").returncode == 0
    before = pids(fleet)
    result = fleet.run("restart", "gpu1")
    assert result.returncode == 0, result.stderr
    after = pids(fleet)
    assert after["gpu0"] == before["gpu0"] and after["gpu1"] != before["gpu1"]
    models = [m["name"] for m in httpx.get(fleet.url(1, "/api/ps")).json()["models"]]
    assert models == ["qwen3:latest"]
    # A later `up` with the same plan keeps the restarted instance: its generation is kept.
    again = fleet.run("up", "--preload", "qwen3")
    assert again.returncode == 0 and pids(fleet) == after


def test_unknown_instance_is_exit_2(fleet) -> None:
    assert fleet.run("up").returncode == 0
    result = fleet.run("restart", "gpu7")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: instance: no instance 'gpu7' in this fleet (instances: gpu0, gpu1)"


def test_rolling_needs_a_gateway(fleet) -> None:
    assert fleet.run("up").returncode == 0
    result = fleet.run("restart", "--rolling")
    assert result.returncode == 1 and "runs none" in result.stderr


def test_a_drain_that_times_out_is_reported(fleet) -> None:
    """A stream longer than --drain-timeout: the restart goes on, says so, and the stream is
    indeed cut (the report is not a formality)."""
    fleet.env["FAKE_OLLAMA_TPS"] = "10"
    url = gateway_up(fleet, "haproxy")
    cut: list[str] = []

    def stream() -> None:
        try:
            httpx.post(
                url + "/api/generate",
                json={"model": "qwen3", "prompt": "x", "options": {"num_predict": 100}},
                timeout=60,
            )
        except httpx.RemoteProtocolError as exc:
            cut.append(str(exc))

    worker = threading.Thread(target=stream)
    worker.start()
    time.sleep(0.5)
    result = fleet.run("restart", "--rolling", "--drain-timeout", "0.5")
    worker.join()
    assert result.returncode == 1
    assert "1 request(s) still in flight after 0.5s; restarted anyway" in result.stderr
    assert len(cut) == 1


def test_nothing_running_says_so(fleet) -> None:
    result = fleet.run("restart")
    assert result.returncode == 1 and "no fleet here" in result.stderr and "Traceback" not in result.stderr


def test_up_rolling_applies_a_plan_change_without_losing_a_request(fleet) -> None:
    fleet.env["FAKE_OLLAMA_TPS"] = "50"
    url = gateway_up(fleet, "haproxy")
    flags = read_flags(fleet)
    load: dict = {}
    worker = threading.Thread(
        target=lambda: load.update(result=run_load([url], "qwen3", concurrency=2, duration=6, num_predict=40))
    )
    worker.start()
    result = fleet.run("up", *flags, "--keep-alive", "10m", "--rolling")
    worker.join()
    assert result.returncode == 0, result.stderr
    assert "gpu0: rolling restart (plan changed: OLLAMA_KEEP_ALIVE 5m → 10m)" in result.stdout
    assert load["result"].errors == {} and len(load["result"].ok) >= 4
    for k in range(2):
        assert httpx.get(fleet.url(k, "/_fake/env")).json()["OLLAMA_KEEP_ALIVE"] == "10m"


def read_flags(fleet) -> list[str]:
    """The gateway flags the fleet was started with (from its recorded state)."""
    from ollama_fleet.state import read_gateway

    gw = read_gateway(fleet.state)
    metrics = gw.spec["metrics_port"]
    return ["--gateway", "--engine", gw.engine, "--listen", gw.listen, "--metrics-port", str(metrics)]


@pytest.mark.parametrize("engine", ["nginx", "haproxy"])
def test_an_interrupted_roll_puts_the_drained_instance_back(fleet, engine: str) -> None:
    """SIGTERM while `restart --rolling` drains gpu0 behind a long stream: it exits 143 and
    gpu0 is back in the gateway, which sends it requests again (#24 item 6)."""
    import json
    import signal
    import subprocess

    from tests.helpers import fake_knobs_as_fleet_env

    fleet.env["FAKE_OLLAMA_TPS"] = "10"
    url = gateway_up(fleet, engine)
    # A long stream on each instance, so that draining gpu0 waits.
    streams = [
        threading.Thread(
            target=run_load, args=([url], "qwen3"), kwargs={"concurrency": 2, "requests": 2, "num_predict": 60}
        )
    ]
    for t in streams:
        t.start()
    time.sleep(0.5)
    roll = subprocess.Popen(
        fleet.argv("restart", "--rolling", "gpu0"),
        env=fake_knobs_as_fleet_env(dict(fleet.env)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "draining" not in (roll.stdout.readline() if roll.stdout else ""):
        pass
    time.sleep(0.3)
    roll.send_signal(signal.SIGTERM)
    _, stderr = roll.communicate(timeout=20)
    for t in streams:
        t.join()
    assert roll.returncode == 143, stderr
    assert "interrupted: gpu0 is back in the gateway" in stderr, stderr
    if engine == "haproxy":
        status = json.loads(fleet.run("status", "--json").stdout)
        states = {i["name"]: i["gateway"]["state"] for i in status["instances"]}
        assert states["gpu0"] == "UP", states
    # gpu0 serves again: among a few requests at once, some are answered by it.
    served = run_load([url], "qwen3", concurrency=4, requests=8, num_predict=2)
    assert not served.errors
    answered = httpx.get(fleet.url(0, "/_fake/stats")).json()["served"]
    assert answered >= 2, answered
