"""What only the HAProxy engine does: a queue at the gateway, active health checks, the
runtime API and the Prometheus exporter; `up --engine haproxy` and install-systemd with it.
Real haproxy processes in front of fake Ollama instances."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ollama_fleet.cli import app
from ollama_fleet.gateway.haproxy import Haproxy, runtime_command
from ollama_fleet.state import read_gateway
from tests.helpers import (
    FAKE_OLLAMA,
    Gateway,
    as_root_on_purpose,
    fake_home,
    free_port_range,
    gateway_flags,
    require_tool,
    start_instances,
    stop,
    subprocess_env,
)


def stats(gateway: Gateway) -> dict:
    found = Haproxy().stats(gateway.prefix)
    return found.servers if found else {}


def wait_state(gateway: Gateway, name: str, state: str, timeout: float) -> float:
    start = time.monotonic()
    while stats(gateway).get(name) is None or stats(gateway)[name].state != state:
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{name} not {state} after {timeout}s: {stats(gateway)}")
        time.sleep(0.05)
    return time.monotonic() - start


def test_requests_queue_at_the_gateway_never_two_on_a_one_slot_instance() -> None:
    """3 one-slot instances, 9 concurrent streams: each instance serves one at a time (its
    peak concurrency stays 1), the rest wait in HAProxy's queue, and none fails."""
    base, procs = start_instances(3, FAKE_OLLAMA_TPS="50", OLLAMA_NUM_PARALLEL="1")
    gateway = Gateway(base, 3, engine="haproxy")
    statuses: list[int] = []
    queued: list[int] = []
    try:

        def stream() -> None:
            body = {"model": "qwen3", "prompt": "x", "options": {"num_predict": 15}}
            with httpx.stream("POST", gateway.url + "/api/generate", json=body, timeout=60) as response:
                statuses.append(response.status_code)
                lines = list(response.iter_lines())
                assert json.loads(lines[-1])["done"] is True

        threads = [threading.Thread(target=stream) for _ in range(9)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            queued.append(Haproxy().stats(gateway.prefix).queued)
            time.sleep(0.02)
        peaks = [httpx.get(f"http://127.0.0.1:{base + k}/_fake/stats").json()["peak_concurrency"] for k in range(3)]
        served = [httpx.get(f"http://127.0.0.1:{base + k}/_fake/stats").json()["served"] for k in range(3)]
    finally:
        gateway.close()
        stop(procs)
    assert statuses == [200] * 9
    assert peaks == [1, 1, 1]
    assert served == [3, 3, 3]
    assert 3 <= max(queued) <= 6  # the runtime API saw them wait at the gateway, at most 9 - 3


def test_a_killed_instance_is_marked_down_within_3s_and_comes_back() -> None:
    base, procs = start_instances(2, FAKE_OLLAMA_TPS="1000", FAKE_OLLAMA_TOKENS="2")
    gateway = Gateway(base, 2, engine="haproxy")
    try:
        procs[1].kill()
        procs[1].wait()
        assert wait_state(gateway, "gpu1", "DOWN", 3.0) < 3.0
        names = Counter(
            httpx.post(gateway.url + "/api/generate", json={"model": "qwen3", "prompt": "x", "stream": False}).headers[
                "x-fleet-instance"
            ]
            for _ in range(20)
        )
        assert names == {"gpu0": 20}
        # The same instance answers again on its port: the checks bring it back by themselves.
        procs[1] = subprocess.Popen(
            [sys.executable, str(FAKE_OLLAMA), "serve"],
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ["PATH"], "HOME": fake_home(), "OLLAMA_HOST": f"127.0.0.1:{base + 1}"},
        )
        wait_state(gateway, "gpu1", "UP", 5.0)
        names = Counter(httpx.get(gateway.url + "/api/version").headers["x-fleet-instance"] for _ in range(20))
        assert names["gpu1"] > 0
    finally:
        gateway.close()
        stop(procs)


def test_a_killed_instance_costs_no_new_request_under_saturating_load() -> None:
    """4 one-slot instances, 12 streams at a time, so every slot is busy and requests queue
    at the gateway; one instance is killed mid-run. Its stream in flight is cut (Ollama's
    process is gone); every other request, the ones that were about to go to it included,
    is served: the first refused connection marks it down and the request queues again."""
    from ollama_fleet.bench import run_load

    base, procs = start_instances(4, FAKE_OLLAMA_TPS="200", OLLAMA_NUM_PARALLEL="1")
    gateway = Gateway(base, 4, engine="haproxy")
    try:
        killer = threading.Timer(1.0, procs[1].kill)
        killer.start()
        result = run_load([gateway.url], "llama3.2", concurrency=12, requests=120, num_predict=20)
        killer.join()
        assert len(result.samples) == 120
        assert sum(result.errors.values()) <= 1 and set(result.errors) <= {"stream cut"}, result.errors
        assert result.split["gpu1"] < 30 and stats(gateway)["gpu1"].state.startswith("DOWN")
    finally:
        gateway.close()
        stop(procs)


def test_health_checks_send_a_local_host_header() -> None:
    """Ollama answers 403 to another Host: were the check to send none, every server would
    be DOWN. Here both are UP, and the fake counted the checks it answered 200."""
    base, procs = start_instances(2)
    gateway = Gateway(base, 2, engine="haproxy")
    try:
        time.sleep(1.5)
        assert {name: s.state for name, s in stats(gateway).items()} == {"gpu0": "UP", "gpu1": "UP"}
        text = runtime_command(gateway.prefix / "admin.sock", "show servers state ollama_fleet")
        assert text is not None and "gpu0" in text and "gpu1" in text
    finally:
        gateway.close()
        stop(procs)


def test_prometheus_exporter_on_loopback() -> None:
    base, procs = start_instances(1)
    gateway = Gateway(base, 1, engine="haproxy")
    try:
        metrics_section = gateway.conf.read_text().split("frontend ollama_fleet_metrics")[1]
        port = int(metrics_section.split("bind 127.0.0.1:")[1].split()[0])
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        from prometheus_client.parser import text_string_to_metric_families

        names = {f.name for f in text_string_to_metric_families(metrics)}
        assert "haproxy_server_current_queue" in names and "haproxy_backend_active_servers" in names
    finally:
        gateway.close()
        stop(procs)


def test_check_reports_haproxy_own_message(nvml, monkeypatch) -> None:
    require_tool("haproxy")
    nvml(1)
    monkeypatch.setattr(
        Haproxy, "render", lambda self, spec, **kw: "frontend f\n    bind 127.0.0.1:1\n    bogus_keyword\n"
    )
    result = CliRunner().invoke(app, ["render-haproxy", "--check"])
    assert result.exit_code == 1
    assert "[ALERT]" in result.stderr and "bogus_keyword" in result.stderr


def test_engine_asked_for_but_missing_is_exit_3(tmp_path: Path, nvml, models_dir, monkeypatch) -> None:
    nvml(2)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("ollama_fleet.processes.TOOL_DIRS", str(tmp_path))
    for key, value in as_root_on_purpose().items():  # the models dir is root's when tests run as root
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["up", "--engine", "haproxy", "--ollama-bin", sys.executable])
    assert result.exit_code == 3
    assert "engine: haproxy is not installed" in result.stderr
    assert not (tmp_path / "state" / "fleet.json").exists()  # refused before anything started


def test_up_with_haproxy_starts_reloads_and_down_stops_it(fleet) -> None:
    require_tool("haproxy")
    port, metrics = free_port_range(1), free_port_range(1)
    flags = ["--gateway", "--engine", "haproxy", "--listen", f"127.0.0.1:{port}", "--metrics-port", str(metrics)]
    result = fleet.run("up", *flags)
    assert result.returncode == 0, result.stderr
    assert f"gateway: haproxy started, listening on 127.0.0.1:{port}" in result.stdout
    url = f"http://127.0.0.1:{port}"
    record = read_gateway(fleet.state).process
    master = record.pid

    status = json.loads(fleet.run("status", "--json").stdout)
    assert status["healthy"] and status["gateway"]["engine"] == "haproxy"
    # "UP 1/2" until an instance's first check passed (HAProxy spreads the first checks).
    assert [i["gateway"]["state"].split()[0] for i in status["instances"]] == ["UP", "UP"]
    assert all(i["gateway"]["queued"] == 0 for i in status["instances"]) and status["gateway"]["queued"] == 0
    table = fleet.run("status")
    assert "gateway" in table.stdout and "UP" in table.stdout and "0 request(s) queued" in table.stdout

    result = fleet.run("up", *flags, "--gpus", "0")
    assert result.returncode == 0, result.stderr
    assert "gateway: haproxy reloaded" in result.stdout
    assert read_gateway(fleet.state).process.pid == master  # master-worker: a reload keeps the master
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = {httpx.get(url + "/api/version").headers.get("x-fleet-instance") for _ in range(6)}
        if names == {"gpu0"}:
            break
        time.sleep(0.1)
    assert names == {"gpu0"}

    # Switching engines stops the one that holds the port first.
    result = fleet.run("up", "--gateway", "--engine", "nginx", "--listen", f"127.0.0.1:{port}", "--gpus", "0")
    assert result.returncode == 0, result.stderr
    assert "gateway: nginx started" in result.stdout
    assert record.process() is None  # gone (or a zombie: pid 1 here reaps nothing)
    result = fleet.run("down")
    assert "and the gateway" in result.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/api/version", timeout=2)


def test_a_reload_lets_a_stream_in_flight_finish(fleet) -> None:
    """SIGUSR2 to the master: new workers take the new config, the old one finishes its stream."""
    require_tool("haproxy")
    url, flags = gateway_flags("haproxy")
    assert fleet.run("up", *flags, FAKE_OLLAMA_TPS="20").returncode == 0
    body = {"model": "qwen3", "prompt": "x", "options": {"num_predict": 40}}
    with httpx.stream("POST", url + "/api/generate", json=body, timeout=30) as response:
        lines = iter(response.iter_lines())
        next(lines)
        assert fleet.run("up", *flags, "--allow", "10.0.0.0/8", FAKE_OLLAMA_TPS="20").returncode == 0
        rest = list(lines)
    assert json.loads(rest[-1])["done"] is True and len(rest) == 40


# ------------------------------------------------------------------ install-systemd --engine haproxy


def test_install_systemd_with_haproxy_verifies_and_reloads_its_own_unit(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    require_tool("haproxy")
    root = tmp_path / "root"
    env = subprocess_env(FAKE_NVML_GPUS="2")
    args = [
        sys.executable,
        "-m",
        "ollama_fleet",
        "install-systemd",
        "--root",
        str(root),
        "--engine",
        "haproxy",
        "--ollama-bin",
        sys.executable,
        "--models-dir",
        str(tmp_path),
    ]
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    units = root / "etc/systemd/system"
    assert "Wants=ollama-fleet-gateway.service" in (units / "ollama-fleet.target").read_text()
    verify = subprocess.run(
        [analyze, "verify", "ollama-fleet.target", "ollama-fleet-gateway.service"],
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
        capture_output=True,
        text=True,
    )
    assert (verify.returncode, verify.stderr) == (0, "")
    cfg = root / "etc/ollama-fleet/haproxy.cfg"
    assert "stats socket /run/ollama-fleet/admin.sock" in cfg.read_text()
    subprocess.run([require_tool("haproxy"), "-c", "-q", "-f", str(cfg)], check=True)
    assert not (root / "etc/nginx").exists()
    manifest = json.loads((root / "etc/ollama-fleet/manifest.json").read_text())
    assert manifest["gateway"] == {
        "engine": "haproxy",
        "listen": "0.0.0.0:8080",
        "url": "http://127.0.0.1:8080",
        "prefix": "/run/ollama-fleet",
        "unit": "ollama-fleet-gateway.service",  # the fleet's own unit: stopped when the gateway moves away
        "owned": True,
    }


def test_status_shows_stats_from_the_runtime_api(tmp_path: Path) -> None:
    """The status report carries, per instance, HAProxy's state, queue and in-flight counts."""
    from ollama_fleet.gateway import engine_named
    from ollama_fleet.status import GatewayStatus

    base, procs = start_instances(2)
    gateway = Gateway(base, 2, engine="haproxy")
    try:
        found = engine_named("haproxy").stats(gateway.prefix)
        assert found is not None and found.queued == 0 and set(found.servers) == {"gpu0", "gpu1"}
        assert all(s.state == "UP" and s.queued == 0 and s.in_flight == 0 for s in found.servers.values()), found
        assert GatewayStatus(engine="haproxy", prefix=gateway.prefix).model_dump().get("prefix") is None  # not in JSON
    finally:
        gateway.close()
        stop(procs)
    assert engine_named("haproxy").stats(tmp_path) is None  # no socket: no stats, no error


def test_a_user_without_access_to_the_admin_socket_is_told_why(tmp_path: Path) -> None:
    """The admin socket is 0600, root's: as another user, status and restart --rolling say
    that (and how to get access) instead of "HAProxy's runtime API does not answer"."""
    import shutil
    import tempfile

    from tests.helpers import as_nobody, require_root

    require_root()
    prefix = Path(tempfile.mkdtemp(prefix="fleet-sock-"))
    try:
        prefix.chmod(0o755)
        (prefix / "admin.sock").touch(mode=0o600)
        said = as_nobody(lambda: Haproxy().stats(prefix))
        assert "admin socket" in said and "mode 0600, root's: run this as root" in said, said
    finally:
        shutil.rmtree(prefix)


def test_options_that_reload_a_model_for_everyone_are_refused_by_name(tmp_path: Path) -> None:
    """options.main_gpu (any value) and options.num_gpu (but -1) would make Ollama reload the
    model on its instance for everyone (#24 item 3): 400 naming the option, the instance never
    asked; the rest passes."""
    base, procs = start_instances(2)
    gateway = Gateway(base, 2, engine="haproxy")
    try:

        def generate(options: dict) -> httpx.Response:
            body = {"model": "llama3.2", "prompt": "hi", "stream": False, "options": options}
            return httpx.post(gateway.url + "/api/generate", json=body, timeout=10)

        for options, option in (({"main_gpu": 0}, "main_gpu"), ({"num_gpu": 20, "temperature": 0}, "num_gpu")):
            refused = generate(options)
            assert refused.status_code == 400 and f"options.{option}" in refused.json()["error"], refused.text
        assert generate({"num_gpu": -1}).status_code == 200
        assert generate({"temperature": 0.2}).status_code == 200
        chat = {"model": "llama3.2", "messages": [], "options": {"main_gpu": 1}}
        assert httpx.post(gateway.url + "/api/chat", json=chat, timeout=10).status_code == 400
        requests = sum(httpx.get(f"http://127.0.0.1:{base + k}/_fake/stats").json()["requests"] for k in range(2))
        assert requests == 2  # only the two that passed reached an instance
    finally:
        gateway.close()
        stop(procs)
