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
