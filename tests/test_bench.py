"""The load generator behind benchmarks/gateway.py, against real fake instances."""

from __future__ import annotations

from ollama_fleet.bench import run_load
from tests.conftest import start_instances, stop


def test_run_load_counts_tokens_instances_and_errors() -> None:
    base, procs = start_instances(2, FAKE_OLLAMA_TPS="500", OLLAMA_NUM_PARALLEL="2")
    urls = [f"http://127.0.0.1:{base + k}" for k in range(2)]
    try:
        result = run_load(urls, "qwen3", concurrency=4, requests=12, num_predict=10)
        assert len(result.ok) == 12
        assert sum(s.tokens for s in result.ok) == 120
        assert 0 < result.ttft(0.5) <= result.ttft(0.99)
        missing = run_load(urls, "nope", concurrency=2, requests=4)
        assert missing.errors == {404: 4}
    finally:
        stop(procs)
    dead = run_load(urls, "qwen3", concurrency=2, requests=3)
    assert dead.errors == {0: 3}  # connection refused is counted, not raised
