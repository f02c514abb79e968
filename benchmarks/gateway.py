#!/usr/bin/env python3
"""What the nginx gateway costs: the same streamed workload direct to the instances and
through the gateway, in one run.

    python benchmarks/gateway.py

Targets: TTFT p50 through the gateway within 1 ms of direct (loopback), and aggregate
tokens/s gateway/direct >= 0.97 at concurrency 64.
"""

from __future__ import annotations

import sys

INSTANCES = 8
CONCURRENCY = 64
REQUESTS = 256
TOKENS = 40


def main() -> int:
    from common import Gateway
    from ollama_fleet.bench import run_load
    from tests.helpers import start_instances, stop

    base, procs = start_instances(INSTANCES, OLLAMA_NUM_PARALLEL="8", FAKE_OLLAMA_TPS="25")
    try:
        with Gateway("nginx", base, INSTANCES) as gateway:
            direct_urls = [f"http://127.0.0.1:{base + k}" for k in range(INSTANCES)]
            run_load(direct_urls, "qwen3", concurrency=CONCURRENCY, requests=CONCURRENCY, num_predict=5)  # warm up
            results: dict[str, list] = {}
            # Interleave the two, twice, so drift on a shared machine hits both alike.
            for name, urls in [("direct", direct_urls), ("gateway", [gateway.url])] * 2:
                r = run_load(urls, "qwen3", concurrency=CONCURRENCY, requests=REQUESTS, num_predict=TOKENS)
                results.setdefault(name, []).append(r)
    finally:
        stop(procs)

    def best(name: str):
        return max(results[name], key=lambda r: r.tokens_per_s)

    direct, gateway = best("direct"), best("gateway")
    print(
        f"{INSTANCES} fake instances x 8 slots, concurrency {CONCURRENCY}, {REQUESTS} streamed requests of {TOKENS} tokens"
    )
    print(f"{'':8} {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'errors':>6}")
    for name, r in (("direct", direct), ("gateway", gateway)):
        print(
            f"{name:8} {r.tokens_per_s:9.0f} {r.ttft(0.5) * 1000:7.1f}ms {r.ttft(0.99) * 1000:7.1f}ms "
            f"{sum(r.errors.values()):6}"
        )
    print(f"tokens/s gateway/direct: {gateway.tokens_per_s / direct.tokens_per_s:.3f} (target >= 0.97)")
    print(f"TTFT p50 gateway - direct: {(gateway.ttft(0.5) - direct.ttft(0.5)) * 1000:+.2f} ms (target <= 1 ms)")
    print(f"gateway split per instance: {dict(sorted(gateway.split.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
