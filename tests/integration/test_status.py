"""`status`: real fleets of fake Ollama instances (started by `up`, or found through an
install-systemd manifest), the fake NVML, and Prometheus output judged by prometheus_client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ollama_fleet.config import load_config
from ollama_fleet.gpus import Discovery, Gpu
from ollama_fleet.plan import ModelsDir, plan
from ollama_fleet.state import DESIRED, Desired, read_actual, read_gateway, write_model
from ollama_fleet.status import gather
from tests.helpers import FAKES, fake_pynvml, free_port_range, require_tool, start_instances, stop, subprocess_env


def status(fleet, *args: str) -> tuple[int, dict]:
    result = fleet.run("status", "--json", *args)
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def test_json_carries_gpu_instance_and_model_facts(fleet) -> None:
    assert fleet.run("up", "--preload", "qwen3").returncode == 0
    code, data = status(fleet)
    assert code == 0 and data["healthy"] is True
    assert data["schema"] == 1 and data["source"] == "up"
    assert [(g["index"], g["temperature"], g["power"]) for g in data["gpus"]] == [(0, 40, 100.0), (1, 41, 101.0)]
    assert data["gpus"][1]["memory_used"] == 2**30 and data["gpus"][1]["memory_total"] == 24 * 2**30
    pids = {name: st.pid for name, st in read_actual(fleet.state).instances.items()}
    for inst in data["instances"]:
        assert inst["healthy"] and inst["version"] == "0.33.0" and inst["pid"] == pids[inst["name"]]
        assert inst["uptime_s"] >= 0 and inst["latency_ms"] > 0 and inst["restarts"] == 0
        [model] = inst["models"]
        assert model["name"] == "qwen3:latest" and model["size_vram"] > 0 and model["expires_at"]
    assert data["gateway"]["engine"] is None  # this fleet runs without one


def test_a_killed_instance_is_down_and_exit_1(fleet) -> None:
    assert fleet.run("up").returncode == 0
    actual = read_actual(fleet.state)
    # Freeze the supervisor so nothing restarts the instance (killing it would close the
    # pipes the instances log into).
    os.kill(actual.supervisor.pid, signal.SIGSTOP)
    try:
        os.kill(actual.instances["gpu1"].pid, signal.SIGKILL)
        time.sleep(0.2)
        code, data = status(fleet)
        table = fleet.run("status")
    finally:
        os.kill(actual.supervisor.pid, signal.SIGCONT)
    assert code == 1 and data["healthy"] is False
    by_name = {i["name"]: i for i in data["instances"]}
    assert by_name["gpu0"]["healthy"] and not by_name["gpu1"]["healthy"]
    assert by_name["gpu1"]["error"] == "refused" and by_name["gpu1"]["pid"] is None
    assert table.returncode == 1 and "DOWN" in table.stdout and "refused" in table.stdout


def test_a_stopped_gateway_is_down(fleet) -> None:
    require_tool("nginx")
    port = free_port_range(1)
    assert fleet.run("up", "--gateway", "--listen", f"127.0.0.1:{port}").returncode == 0
    code, data = status(fleet)
    assert code == 0 and data["gateway"]["up"] and data["gateway"]["engine"] == "nginx"
    os.kill(read_gateway(fleet.state).process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while status(fleet)[1]["gateway"]["up"] and time.monotonic() < deadline:
        time.sleep(0.1)
    code, data = status(fleet)
    assert code == 1 and data["gateway"]["up"] is False and data["gateway"]["error"] == "refused"
    assert all(i["healthy"] for i in data["instances"])


def test_prometheus_output_parses_with_one_sample_per_instance(fleet) -> None:
    assert fleet.run("up", "--preload", "qwen3").returncode == 0
    result = fleet.run("status", "--format", "prometheus")
    assert result.returncode == 0, result.stderr
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    up = families["ollama_fleet_instance_up"]
    assert sorted((s.labels["instance"], s.value) for s in up.samples) == [("gpu0", 1.0), ("gpu1", 1.0)]
    vram = families["ollama_fleet_model_vram_bytes"].samples
    assert {(s.labels["instance"], s.labels["model"]) for s in vram} == {
        ("gpu0", "qwen3:latest"),
        ("gpu1", "qwen3:latest"),
    }
    used = {s.labels["gpu"]: s.value for s in families["ollama_fleet_gpu_memory_used_bytes"].samples}
    assert used == {"gpu0": 2**29, "gpu1": 2**30}
    assert families["ollama_fleet_up"].samples[0].value == 1.0
    # -o writes the textfile atomically, for node-exporter's textfile collector.
    out = fleet.state.parent / "fleet.prom"
    assert fleet.run("status", "--format", "prometheus", "-o", str(out)).returncode == 0
    assert {f.name for f in text_string_to_metric_families(out.read_text())} == set(families)


def test_never_started_says_so_and_exits_1(fleet) -> None:
    result = fleet.run("status")
    assert result.returncode == 1
    assert "no fleet here" in result.stderr and "ollama-fleet up" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_nvml_it_degrades_and_says_so(fleet) -> None:
    assert fleet.run("up").returncode == 0
    result = fleet.run("status", "--json", FAKE_NVML_GPUS="missing")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and data["gpus"] == []
    assert data["nvml"]["available"] is False and "NVML" in data["nvml"]["note"]
    assert all(i["healthy"] for i in data["instances"])
    table = fleet.run("status", FAKE_NVML_GPUS="missing")
    assert table.returncode == 0 and "GPU facts are missing" in table.stderr and "gpu1" in table.stdout


def _planned(count: int, base: int, tmp_path: Path):
    config = load_config({"base_port": str(base), "gpus_per_instance": "1"}, environ={}, cwd=tmp_path)
    gpus = [Gpu(index=k, uuid=f"GPU-{k}") for k in range(count)]
    return plan(
        config,
        Discovery(gpus=gpus, pinned_by="uuid"),
        ModelsDir(path=tmp_path, exists=True, readable=True, owner="root"),
    )


def test_probes_run_at_once_so_a_hung_instance_costs_one_timeout(tmp_path: Path) -> None:
    """8 instances, the last accepts connections and never answers: the whole status takes
    well under 2x the per-probe timeout (one at a time it would take 2x alone for that one)."""
    base, procs = start_instances(7)
    hung = socket.socket()
    hung.bind(("127.0.0.1", base + 7))
    hung.listen(16)  # connections complete in the backlog; nothing ever reads them
    try:
        state = tmp_path / "state"
        write_model(
            state / DESIRED, Desired(instances=_planned(8, base, tmp_path).instances, ollama_bin="/bin/true", user=None)
        )
        timeout = 1.0
        start = time.monotonic()
        report = gather(state, timeout, system_root=tmp_path)
        elapsed = time.monotonic() - start
        assert elapsed < 2 * timeout, elapsed
        assert [i.healthy for i in report.instances] == [True] * 7 + [False]
        assert report.instances[7].error == "no answer (timed out)"
        assert not report.healthy
    finally:
        hung.close()
        stop(procs)


def stage_systemd_fleet(root: Path, base: int, models: Path) -> None:
    """A fleet of 2 installed under a staging root (its processes: fake instances on its ports)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ollama_fleet",
            "install-systemd",
            "--root",
            str(root),
            "--no-gateway",
            "--ollama-bin",
            sys.executable,
            "--base-port",
            str(base),
            "--models-dir",
            str(models),
        ],
        env=subprocess_env(FAKE_NVML_GPUS="2"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_a_systemd_installed_fleet_is_found_through_its_manifest(tmp_path: Path) -> None:
    """install-systemd's manifest names the instances; their processes are found by port."""
    base, procs = start_instances(2)
    root = tmp_path / "root"
    try:
        stage_systemd_fleet(root, base, models=tmp_path)
        report = gather(tmp_path / "no-up-state", 2.0, system_root=root)
        assert report.source == "systemd" and report.healthy
        assert [i.pid for i in report.instances] == [p.pid for p in procs]
        assert all(i.uptime_s is not None and i.restarts is None for i in report.instances)
        assert report.gateway.engine is None and report.gateway.reason == "not installed"
    finally:
        stop(procs)


def test_a_systemd_instance_on_a_foreign_gpu_is_unhealthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """For a systemd fleet the devices come from the journal of the unit's current run
    (fake systemctl and journalctl here): gpu0 logged its own GPU, gpu1 also a neighbour's
    through Vulkan, which makes it unhealthy while it answers."""
    base, procs = start_instances(2)
    root = tmp_path / "root"
    journal = tmp_path / "journal"
    journal.mkdir()
    started = 'time=2026-11-29T10:00:00.1+01:00 level=INFO source=routes.go:2008 msg="Listening on 127.0.0.1:1 (version 0.33.0)"'
    line = (
        'time=2026-11-29T10:00:01.123456789+01:00 level=INFO source=types.go:42 msg="inference compute" id={id} '
        'filter_id={filter} library={library} compute=8.9 name={library}{id} description="NVIDIA GeForce RTX 4090" '
        'libdirs=ollama,cuda_v13 driver=13.0 pci_id={pci} type=discrete total="23.5 GiB" available="23.1 GiB"'
    )
    (journal / "ollama-fleet@gpu0.service.log").write_text(
        "\n".join([started, line.format(id=0, filter=fake_pynvml.uuid_of(0), library="CUDA", pci="0000:10:00.0")])
        + "\n"
    )
    (journal / "ollama-fleet@gpu1.service.log").write_text(
        "\n".join(
            [
                started,
                line.format(id=0, filter=fake_pynvml.uuid_of(1), library="CUDA", pci="0000:11:00.0"),
                line.format(id=0, filter=0, library="Vulkan", pci="0000:10:00.0"),
            ]
        )
        + "\n"
    )
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_JOURNAL_DIR", str(journal))
    monkeypatch.setenv("FAKE_NVML_GPUS", "2")
    try:
        stage_systemd_fleet(root, base, models=tmp_path)
        report = gather(tmp_path / "no-up-state", 2.0, system_root=root)
        gpu0, gpu1 = report.instances
        assert gpu0.healthy and gpu0.devices == [f"CUDA {fake_pynvml.uuid_of(0)} (0000:10:00.0)"]
        assert not gpu1.healthy and gpu1.version is not None
        assert gpu1.error is not None and "sees Vulkan 0 (0000:10:00.0) beyond its pin" in gpu1.error
        assert not report.healthy
    finally:
        stop(procs)


def test_watch_redraws_in_place_until_interrupted(fleet) -> None:
    """On a terminal (a pty here) --watch redraws the same table; Ctrl-C leaves it, exit 0."""
    import pty
    import threading

    assert fleet.run("up").returncode == 0
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        fleet.argv("status", "--watch", "--interval", "0.3"),
        env={**fleet.env, "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    reader.join(5)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, err
    assert screen.count("instances (started by up)") >= 3
    assert "\x1b[2K" in screen or "\x1b[1A" in screen  # cursor moved back up: redrawn in place
    assert b"Traceback" not in err


def test_an_ollama_serve_the_fleet_did_not_start_is_reported(fleet, tmp_path: Path) -> None:
    """A stock ollama.service (here: the fake, run under the name `ollama`) may hold GPU
    memory: plan, up and status say so; the fleet's own instances are not reported."""
    from tests.helpers import FAKE_OLLAMA, fake_home, wait_answering

    binary = tmp_path / "bin" / "ollama"
    binary.parent.mkdir()
    binary.symlink_to(FAKE_OLLAMA)
    port = free_port_range(1)
    stock = subprocess.Popen(
        [str(binary), "serve"],
        stderr=subprocess.DEVNULL,
        env={"PATH": os.environ["PATH"], "HOME": fake_home(), "OLLAMA_HOST": f"127.0.0.1:{port}"},
    )
    try:
        wait_answering(f"http://127.0.0.1:{port}/api/version")
        plan = fleet.run("plan")
        assert f"pid {stock.pid} (user root, 127.0.0.1:{port})" in plan.stderr
        assert "systemctl disable --now ollama" in plan.stderr
        assert fleet.run("up").returncode == 0
        _, data = status(fleet)
        assert data["others"] == [f"pid {stock.pid} (user root, 127.0.0.1:{port})"]
    finally:
        stock.kill()
        stock.wait()
