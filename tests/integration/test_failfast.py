"""A GPU that fails fast must not swallow the traffic (#24): least-connections sends the next
request to the instance with the fewest in flight, and one that answers 500 or 503 at once
always has the fewest. Real nginx and HAProxy, fake instances of which one fails on purpose
(tests/fake_ollama.py FAKE_OLLAMA_FAULTS), the real CLI's `status`."""

from __future__ import annotations

import pytest

from tests.helpers import fail_fast


@pytest.mark.parametrize("engine", ["nginx", "haproxy"])
@pytest.mark.parametrize("fault", ["load", "busy"])
def test_a_failing_instance_costs_no_request_and_status_names_it(fleet, engine: str, fault: str) -> None:
    """At most 1 % of 100 streamed requests fail (each 5xx came before any byte reached the
    client, and was tried again on another instance; HAProxy may lose the one request in
    flight when the instance starts failing, whose retries all found it free before it was
    marked down); `status` calls the instance failing within 5 s (exit 1, Ollama's error
    shown) and healthy within 5 s of its recovery."""
    found = fail_fast(fleet, engine, fault, requests=100, concurrency=8)
    assert found["failed"] <= 1 and found["requests"] == 100, found
    assert found["detect_s"] < 5, found
    # Exit 1 with JSON on stdout still says why, on stderr: Ollama's own error.
    error = "cudaMalloc failed: out of memory" if fault == "load" else "server busy"
    assert "error: gpu1: " in found["said"] and error in found["said"], found
    assert found["recover_s"] < 5, found


@pytest.mark.parametrize("engine", ["nginx", "haproxy"])
def test_a_4xx_is_the_clients_own_and_is_never_retried(engine: str) -> None:
    """An unknown model (404) and a bad body (400) reach one instance once each; a 500 is
    tried again elsewhere (#24 item 1)."""
    import httpx

    from tests.helpers import Gateway, start_instances, stop

    base, procs = start_instances(3)
    gateway = Gateway(base, 3, engine=engine)

    def answers(status: str) -> int:
        stats = [httpx.get(f"http://127.0.0.1:{base + k}/_fake/stats").json() for k in range(3)]
        return sum(s["statuses"].get(status, 0) for s in stats)

    try:
        unknown = httpx.post(gateway.url + "/api/generate", json={"model": "nosuch", "prompt": "hi"}, timeout=10)
        bad = httpx.post(gateway.url + "/api/chat", content=b"{not json", timeout=10)
        assert (unknown.status_code, bad.status_code) == (404, 400)
        assert answers("404") == 1 and answers("400") == 1
        main_gpu = {"model": "llama3.2", "prompt": "hi", "stream": False, "options": {"main_gpu": 99}}
        failed = httpx.post(f"http://127.0.0.1:{base}/api/generate", json=main_gpu, timeout=10)
        assert failed.status_code == 500  # direct: the load fails on every instance alike
        if engine == "nginx":  # (HAProxy refuses main_gpu itself, before any instance)
            through = httpx.post(gateway.url + "/api/generate", json=main_gpu, timeout=10)
            assert through.status_code == 500 and answers("500") == 1 + 3  # tried on all three
    finally:
        gateway.close()
        stop(procs)
