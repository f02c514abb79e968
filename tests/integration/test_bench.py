"""`bench` and its load generator, against fake instances (direct, and behind real nginx)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from ollama_fleet.bench import run_load
from ollama_fleet.state import read_actual
from tests.helpers import free_port_range, require_tool, start_instances, stop


def test_run_load_counts_tokens_instances_and_errors() -> None:
    base, procs = start_instances(2, FAKE_OLLAMA_TPS="500", OLLAMA_NUM_PARALLEL="2")
    urls = [f"http://127.0.0.1:{base + k}" for k in range(2)]
    try:
        result = run_load(urls, "qwen3", concurrency=4, requests=12, num_predict=10)
        assert len(result.ok) == 12
        assert sum(s.tokens for s in result.ok) == 120
        assert 0 < result.ttft(0.5) <= result.ttft(0.99)
        missing = run_load(urls, "nope", concurrency=2, requests=4)
        assert missing.errors == {"HTTP 404": 4}
    finally:
        stop(procs)
    dead = run_load(urls, "qwen3", concurrency=2, requests=3)
    assert dead.errors == {"connection refused": 3}  # counted, not raised


@pytest.mark.parametrize("api", ["generate", "chat", "openai"])
def test_every_api_counts_its_tokens(api: str) -> None:
    base, procs = start_instances(1, FAKE_OLLAMA_TPS="1000", OLLAMA_NUM_PARALLEL="4")
    try:
        result = run_load([f"http://127.0.0.1:{base}"], "qwen3", concurrency=2, requests=4, api=api, num_predict=7)
        assert result.errors == {} and [s.tokens for s in result.samples] == [7] * 4
        assert all(s.ttft is not None and s.ttft <= s.latency for s in result.samples)
    finally:
        stop(procs)


@pytest.mark.parametrize("api", ["generate", "chat", "openai"])
def test_a_thinking_model_counts_its_thinking(api: str) -> None:
    """qwen3 thinks first: TTFT is its first token of any kind, the first answer token comes
    later (TTFA), and the tokens counted are all it generated."""
    base, procs = start_instances(1, FAKE_OLLAMA_TPS="100", OLLAMA_NUM_PARALLEL="2")
    try:
        result = run_load([f"http://127.0.0.1:{base}"], "qwen3", concurrency=2, requests=2, api=api, num_predict=10)
        assert result.errors == {} and [s.tokens for s in result.samples] == [10, 10]
        for s in result.samples:
            assert s.ttft is not None and s.ttfa is not None
            assert s.ttfa - s.ttft > 0.03  # five thinking tokens at 100 tokens/s come first
        plain = run_load([f"http://127.0.0.1:{base}"], "llama3.2", concurrency=1, requests=1, api=api, num_predict=4)
        assert plain.samples[0].ttft == plain.samples[0].ttfa
        assert set(result.summary()["ttfa_ms"]) == {"p50", "p95", "p99"}
    finally:
        stop(procs)


@pytest.mark.parametrize("api", ["generate", "openai"])
def test_an_error_in_the_stream_is_counted_under_its_own_message(api: str) -> None:
    base, procs = start_instances(1, FAKE_OLLAMA_TPS="1000", FAKE_OLLAMA_ERROR_AFTER="3")
    try:
        result = run_load([f"http://127.0.0.1:{base}"], "llama3.2", concurrency=1, requests=2, api=api, num_predict=10)
        assert result.errors == {"error: an error was encountered while running the model: unexpected EOF": 2}
    finally:
        stop(procs)


def test_duration_mode_and_per_request_lengths() -> None:
    base, procs = start_instances(1, FAKE_OLLAMA_TPS="1000", OLLAMA_NUM_PARALLEL="2")
    try:
        result = run_load([f"http://127.0.0.1:{base}"], "qwen3", concurrency=2, duration=0.5, num_predict=[3, 5])
        assert 0.5 <= result.wall < 5 and len(result.ok) >= 2
        assert sorted({s.tokens for s in result.ok}) == [3, 5]
    finally:
        stop(procs)


def test_a_killed_instance_mid_run_is_counted_not_raised() -> None:
    base, procs = start_instances(2, FAKE_OLLAMA_TPS="50", OLLAMA_NUM_PARALLEL="2")
    urls = [f"http://127.0.0.1:{base + k}" for k in range(2)]
    threading.Timer(0.5, procs[1].kill).start()
    try:
        result = run_load(urls, "qwen3", concurrency=4, requests=16, num_predict=25)
    finally:
        stop(procs)
    # Every request is accounted for: the live instance's served, the dead one's counted as
    # cut (in flight when it died) or refused (sent after).
    assert len(result.samples) == 16
    assert len(result.ok) >= 2 and result.errors["stream cut"] >= 1 and result.errors["connection refused"] >= 1
    assert len(result.ok) + sum(result.errors.values()) == 16


@pytest.fixture
def gateway_fleet(fleet):
    """Two one-slot fake instances decoding at 100 tokens/s, behind up's real nginx."""
    require_tool("nginx")
    port = free_port_range(1)
    up = fleet.run("up", "--gateway", "--listen", f"127.0.0.1:{port}", FAKE_OLLAMA_TPS="100")
    assert up.returncode == 0, up.stderr
    fleet.gateway = f"http://127.0.0.1:{port}"
    return fleet


def bench(fleet, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    result = fleet.run("bench", "--url", fleet.gateway, "--model", "qwen3", *args)
    assert "Traceback" not in result.stderr
    return result, json.loads(result.stdout) if "--json" in args and result.returncode == 0 else None


def test_bench_through_the_gateway_measures_the_configured_speed(gateway_fleet) -> None:
    result, data = bench(gateway_fleet, "--concurrency", "2", "--requests", "12", "--num-predict", "40", "--json")
    assert result.returncode == 0, result.stderr
    assert data["schema"] == 1 and data["ok"] == data["requests"] == 12 and data["errors"] == {}
    assert sum(data["split"].values()) == 12 and set(data["split"]) == {"gpu0", "gpu1"}
    # Two one-slot instances at 100 tokens/s each, kept busy: 200 tokens/s, within 10%.
    assert 180 <= data["tokens_per_s"] <= 220, data
    assert data["tokens"] == 12 * 40
    assert data["ttft_ms"]["p50"] <= data["ttft_ms"]["p99"] <= data["latency_ms"]["p99"]


def test_bench_table_output(gateway_fleet) -> None:
    result, _ = bench(gateway_fleet, "-c", "2", "-n", "4", "--num-predict", "5", "--api", "chat")
    assert result.returncode == 0, result.stderr
    assert "generated tokens/s" in result.stdout and "split per instance: gpu0 2, gpu1 2" in result.stdout


def test_bench_survives_an_instance_killed_mid_run(gateway_fleet) -> None:
    actual = read_actual(gateway_fleet.state)
    proc = subprocess.Popen(
        gateway_fleet.argv(
            "bench",
            "--url",
            gateway_fleet.gateway,
            "--model",
            "qwen3",
            "-c",
            "4",
            "--duration",
            "3",
            "--num-predict",
            "30",
            "--json",
        ),
        env=gateway_fleet.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    os.kill(actual.instances["gpu1"].pid, signal.SIGKILL)  # the supervisor brings it back
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    data = json.loads(out)
    assert data["ok"] > 0 and data["requests"] == data["ok"] + sum(data["errors"].values())
    assert data["errors"].get("stream cut", 0) >= 1


def test_bench_fails_fast_on_a_wrong_url_or_model(gateway_fleet) -> None:
    start = time.monotonic()
    result, _ = bench(gateway_fleet, "--model", "no-such-model")
    assert result.returncode == 1 and "no-such-model" in result.stderr and "not on" in result.stderr
    dead = gateway_fleet.run("bench", "--url", f"http://127.0.0.1:{free_port_range(1)}", "--model", "qwen3")
    assert dead.returncode == 1 and "does not answer" in dead.stderr
    assert time.monotonic() - start < 20  # no load was run
    bad = gateway_fleet.run("bench", "--url", "ftp://x", "--model", "qwen3", "--requests", "3", "--duration", "1")
    assert bad.returncode == 2
    assert bad.stderr.count("error:") == 2 and "url:" in bad.stderr and "requests:" in bad.stderr
