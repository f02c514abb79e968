#!/usr/bin/env python3
"""What model placement buys: two models over 8 instances that each hold one model at a time
(OLLAMA_MAX_LOADED_MODELS=1, a 5 s load), the same mixed workload through HAProxy without
and with placement, in one run.

    python benchmarks/placement.py

Without placement every instance serves both models and keeps swapping them; with
`--models qwen3=gpu0,...,gpu3 --models llama3.2=gpu4,...,gpu7` each model stays loaded on
its own four instances.
"""

from __future__ import annotations

import random
import sys

INSTANCES = 8
TPS = 40.0
LOAD_S = 5.0
REQUESTS = 96
CONCURRENCY = 16
TOKENS = 20
SEED = 3
MODELS = ["qwen3:latest", "llama3.2:latest"]


def main() -> int:
    import httpx

    from common import Gateway
    from ollama_fleet.bench import run_load
    from tests.helpers import start_instances, stop

    rng = random.Random(SEED)
    mix = [rng.choice(MODELS) for _ in range(REQUESTS)]
    half = INSTANCES // 2
    placement = [
        f"{MODELS[0]}=" + ",".join(f"gpu{k}" for k in range(half)),
        f"{MODELS[1]}=" + ",".join(f"gpu{k}" for k in range(half, INSTANCES)),
    ]
    results = {}
    for label, flags in (
        ("without placement", []),
        ("with placement", ["--models", placement[0], "--models", placement[1]]),
    ):
        base, procs = start_instances(
            INSTANCES,
            FAKE_OLLAMA_TPS=str(TPS),
            FAKE_OLLAMA_LOAD_S=str(LOAD_S),
            OLLAMA_MAX_LOADED_MODELS="1",
            OLLAMA_NUM_PARALLEL="1",
        )
        try:
            # The same start for both: each model loaded on its half (what `up` preloads).
            for k in range(INSTANCES):
                httpx.post(
                    f"http://127.0.0.1:{base + k}/api/generate",
                    timeout=60,
                    json={"model": MODELS[k // half], "prompt": "", "stream": False},
                )
            with Gateway("haproxy", base, INSTANCES, *flags) as gateway:
                r = run_load([gateway.url], mix, concurrency=CONCURRENCY, requests=REQUESTS, num_predict=TOKENS)
            stats = [httpx.get(f"http://127.0.0.1:{base + k}/_fake/stats").json() for k in range(INSTANCES)]
        finally:
            stop(procs)
        loads = sum(sum(s["loads"].values()) for s in stats) - INSTANCES  # not the warm-up's
        results[label] = (r, loads)

    print(
        f"{INSTANCES} one-slot instances holding one model each (load {LOAD_S:g} s), {TPS:g} tokens/s; "
        f"{REQUESTS} requests of {TOKENS} tokens, two models mixed at random (seed {SEED}), {CONCURRENCY} in flight"
    )
    print(f"{'':18} {'loads':>6} {'TTFT p50':>9} {'TTFT p99':>9} {'tokens/s':>9} {'errors':>6}")
    for label, (r, loads) in results.items():
        print(
            f"{label:18} {loads:6} {r.ttft(0.5) * 1000:7.0f}ms {r.ttft(0.99) * 1000:7.0f}ms "
            f"{r.tokens_per_s:9.1f} {sum(r.errors.values()):6}"
        )
    (without, _), (with_, _) = results["without placement"], results["with placement"]
    print(
        f"tokens/s with/without placement: {with_.tokens_per_s / without.tokens_per_s:.1f}x; "
        f"TTFT p99 without/with: {without.ttft(0.99) / with_.ttft(0.99):.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
