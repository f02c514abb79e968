#!/usr/bin/env python3
"""Where should requests wait? The same heavy-tailed batch through nginx (least_conn: the
request waits inside a busy instance) and through HAProxy (maxconn = slots: it waits at the
gateway for the first free slot), in one run, against the best a central FIFO queue can do.

    python benchmarks/dispatch.py

8 fake instances decoding at 40 tokens/s per sequence, 160 requests with Pareto lengths
(seed 11), 16 in flight. First with one slot per instance, then with OLLAMA_NUM_PARALLEL=4,
where the fake models batched decode (k sequences each run at 1 / (1 + 0.3 (k - 1)) of
one alone), so the comparison is honest about what slots cost.
"""

from __future__ import annotations

import heapq
import sys

INSTANCES = 8
TPS = 40.0
REQUESTS = 160
CONCURRENCY = 16
SEED = 11


def central_queue(lengths: list[int], servers: int, clients: int, tps: float) -> list[float]:
    """TTFT of each request when `clients` send the batch in order (each sends its next when
    its last one ends) and one FIFO queue hands each request to the first free one-slot
    server: no request ever waits behind another while a server idles."""
    free = [0.0] * servers  # when each server is next free
    ready = [0.0] * clients  # when each client sends its next request
    ttfts = []
    for length in lengths:
        sent = heapq.heappop(ready)
        start = max(sent, heapq.heappop(free))
        ttfts.append(start - sent + 1 / tps)
        end = start + length / tps
        heapq.heappush(free, end)
        heapq.heappush(ready, end)
    return ttfts


def main() -> int:
    from common import Gateway, pareto_lengths
    from ollama_fleet.bench import quantile, run_load
    from tests.helpers import start_instances, stop

    lengths = pareto_lengths(REQUESTS, SEED)
    rows = []
    for slots in (1, 4):
        base, procs = start_instances(INSTANCES, FAKE_OLLAMA_TPS=str(TPS), OLLAMA_NUM_PARALLEL=str(slots))
        try:
            for engine in ("nginx", "haproxy"):
                flags = ["--env", f"OLLAMA_NUM_PARALLEL={slots}"]
                with Gateway(engine, base, INSTANCES, *flags) as gateway:
                    run_load([gateway.url], "qwen3", concurrency=INSTANCES, requests=INSTANCES, num_predict=2)
                    r = run_load(
                        [gateway.url], "qwen3", concurrency=CONCURRENCY, requests=REQUESTS, num_predict=lengths
                    )
                    assert not r.errors, r.errors
                    rows.append((slots, engine, r))
        finally:
            stop(procs)

    ideal = central_queue(lengths, INSTANCES, CONCURRENCY, TPS)
    print(
        f"{INSTANCES} fake instances at {TPS:g} tokens/s per sequence; {REQUESTS} requests, Pareto lengths "
        f"(seed {SEED}, {sum(lengths)} tokens, longest {max(lengths)}), {CONCURRENCY} in flight"
    )
    print(f"{'slots':>5} {'gateway':28} {'TTFT p50':>9} {'TTFT p99':>9} {'tokens/s':>9} {'makespan':>9}")
    print(
        f"{1:>5} {'central queue (simulated)':28} {quantile(ideal, 0.5) * 1000:7.0f}ms "
        f"{quantile(ideal, 0.99) * 1000:7.0f}ms"
    )
    for slots, engine, r in rows:
        label = "nginx least_conn" if engine == "nginx" else f"haproxy leastconn, maxconn {slots}"
        print(
            f"{slots:>5} {label:28} {r.ttft(0.5) * 1000:7.0f}ms {r.ttft(0.99) * 1000:7.0f}ms "
            f"{r.tokens_per_s:9.1f} {r.wall:8.2f}s"
        )
    by = {(s, e): r for s, e, r in rows}
    for slots in (1, 4):
        nginx, haproxy = by[(slots, "nginx")], by[(slots, "haproxy")]
        print(
            f"slots {slots}: TTFT p99 nginx/haproxy {nginx.ttft(0.99) / haproxy.ttft(0.99):.1f}x, "
            f"tokens/s haproxy/nginx {haproxy.tokens_per_s / nginx.tokens_per_s:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
