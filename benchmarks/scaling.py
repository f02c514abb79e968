#!/usr/bin/env python3
"""Does the fleet scale? Fleets of 1, 2, 4 and 8 one-slot fake Ollama instances behind the
real nginx gateway, each driven at saturation by `bench`'s engine, in one run.

    pip install -e '.[bench]'        # matplotlib, for the plot
    python benchmarks/scaling.py     # prints the tables, writes benchmarks/scaling.png

Targets: efficiency = tokens/s(N) / (N x tokens/s(1)) >= 0.95 at N = 8. Then a fixed batch
of heavy-tailed requests (Pareto lengths, fixed seed) over 8 instances: makespan under
least_conn and round_robin against the ideal lower bound (total work / N, or the longest
request if that is longer), with the TTFT p50/p99 that show head-of-line blocking.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TPS = 40.0  # tokens/s of one sequence on one instance (one slot: no batching)
SIZES = [1, 2, 4, 8]
TOKENS = 40  # per request in the scaling runs: 1 s each
PER_INSTANCE = 6  # requests per instance in a scaling run
BATCH = 96  # heavy-tailed batch
SEED = 7


def main() -> int:
    from common import Gateway, pareto_lengths
    from ollama_fleet.bench import run_load
    from tests.helpers import start_instances, stop

    base, procs = start_instances(8, FAKE_OLLAMA_TPS=str(TPS), OLLAMA_NUM_PARALLEL="1")
    scaling: dict[int, float] = {}
    batch: dict[str, object] = {}
    lengths = pareto_lengths(BATCH, SEED)
    try:
        for n in SIZES:
            with Gateway("nginx", base, n) as gateway:
                run_load([gateway.url], "qwen3", concurrency=n, requests=n, num_predict=2)  # warm up
                result = run_load(
                    [gateway.url], "qwen3", concurrency=2 * n, requests=PER_INSTANCE * n, num_predict=TOKENS
                )
                assert not result.errors, result.errors
                scaling[n] = result.tokens_per_s
        for balance in ("least_conn", "round_robin"):
            with Gateway("nginx", base, 8, "--balance", balance) as gateway:
                batch[balance] = run_load([gateway.url], "qwen3", concurrency=16, requests=BATCH, num_predict=lengths)
    finally:
        stop(procs)

    print(
        f"one-slot fake instances at {TPS:g} tokens/s each, behind nginx (least_conn); "
        f"{PER_INSTANCE} requests of {TOKENS} tokens per instance, 2 in flight per instance"
    )
    print(f"{'N':>2} {'tokens/s':>9} {'ideal':>7} {'efficiency':>10}")
    for n, tps in scaling.items():
        print(f"{n:>2} {tps:9.1f} {n * scaling[1]:7.1f} {tps / (n * scaling[1]):10.3f}")
    efficiency = scaling[8] / (8 * scaling[1])
    print(f"efficiency at N=8: {efficiency:.3f} (target >= 0.95)")

    ideal = max(sum(lengths) / (8 * TPS), max(lengths) / TPS)
    print(
        f"\nheavy-tailed batch: {BATCH} requests, Pareto lengths (seed {SEED}): {sum(lengths)} tokens, "
        f"longest {max(lengths)}; 8 instances, 16 in flight"
    )
    print(f"{'balance':12} {'makespan':>9} {'/ ideal':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'tokens/s':>9}")
    print(f"{'ideal':12} {ideal:8.2f}s {1:8.2f}")
    for balance, r in batch.items():
        print(
            f"{balance:12} {r.wall:8.2f}s {r.wall / ideal:8.2f} {r.ttft(0.5) * 1000:7.0f}ms "
            f"{r.ttft(0.99) * 1000:7.0f}ms {r.tokens_per_s:9.1f}"
        )
    plot(scaling, ROOT / "benchmarks" / "scaling.png")
    return 0


def plot(scaling: dict[int, float], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: pip install -e '.[bench]' for the plot)")
        return
    sizes = list(scaling)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    # The ideal drawn wide and pale, so the measured line stays visible on top of it.
    ax.plot(sizes, [n * scaling[1] for n in sizes], "-", color="grey", lw=6, alpha=0.35, label="ideal: N x tokens/s(1)")
    ax.plot(sizes, [scaling[n] for n in sizes], "o-", label="measured, through nginx")
    ax.set_xlabel("instances (N)")
    ax.set_ylabel("generated tokens/s")
    ax.set_xticks(sizes)
    ax.set_title(f"ollama-fleet scaling: one-slot fake instances at {TPS:g} tokens/s")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
