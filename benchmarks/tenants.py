#!/usr/bin/env python3
"""Priority classes at the queue: a batch job floods it, a person in a chat UI should not wait.

    python benchmarks/tenants.py

8 one-slot fake instances (40 tokens/s) behind the HAProxy gateway. A `batch` key submits
200 long requests (60-200 tokens) at once; 1 s later an `interactive` key sends 20 short
ones (10 tokens), one every 0.25 s, each on its own. Run twice in one go: keys without priorities, then with
`priority=interactive` / `priority=batch`. Printed: the interactive TTFT p50/p99 in both
runs, the longest batch request's duration, and batch tokens/s in both runs.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

INSTANCES = 8
TPS = 40.0
BATCH = 200
INTERACTIVE = 20
BATCH_KEY = "sk-batch-0123456789"
CHAT_KEY = "sk-chat-01234567890"


def one_run(base: int, prioritized: bool, lengths: list[int]) -> dict[str, float]:
    import tempfile

    from common import Gateway
    from ollama_fleet.bench import quantile, run_load

    keys = Path(tempfile.mkdtemp()) / "keys"
    classes = (" priority=batch", " priority=interactive") if prioritized else ("", "")
    keys.write_text(f"{BATCH_KEY} name=nightly{classes[0]}\n{CHAT_KEY} name=chat{classes[1]}\n")
    with Gateway("haproxy", base, INSTANCES, "--api-keys-file", str(keys)) as gateway:
        result: dict = {}

        def send(key: str, concurrency: int, tokens: int | list[int]):  # type: ignore[no-untyped-def]
            headers = {"Authorization": f"Bearer {key}"}
            return run_load([gateway.url], "llama3.2", concurrency=concurrency, requests=concurrency,
                            num_predict=tokens, headers=headers)  # fmt: skip

        def batch() -> None:
            result["batch"] = send(BATCH_KEY, BATCH, lengths)

        chats: list = []

        def chat() -> None:
            chats.append(send(CHAT_KEY, 1, 10))

        flood = threading.Thread(target=batch)
        flood.start()
        time.sleep(1.0)  # the queue is full of batch requests
        people = []
        for _ in range(INTERACTIVE):  # each on its own, one every 0.25 s, as people click
            people.append(threading.Thread(target=chat))
            people[-1].start()
            time.sleep(0.25)
        for person in people:
            person.join()
        flood.join()
    ttfts = [r.ttft(0.5) for r in chats]
    b = result["batch"]
    assert not b.errors and all(not r.errors for r in chats), (b.errors, [r.errors for r in chats])
    return {
        "p50": quantile(ttfts, 0.5),
        "p99": quantile(ttfts, 0.99),
        "batch_tps": b.tokens_per_s,
        "longest": max(lengths) / TPS,
    }


def main() -> int:
    import common  # noqa: F401  (puts the repository on the path)
    from tests.helpers import start_instances, stop

    rng = random.Random(7)
    lengths = [rng.randint(60, 200) for _ in range(BATCH)]
    base, procs = start_instances(INSTANCES, FAKE_OLLAMA_TPS=str(TPS))
    try:
        plain = one_run(base, False, lengths)
        ordered = one_run(base, True, lengths)
    finally:
        stop(procs)
    print(
        f"{INSTANCES} one-slot fake instances at {TPS:g} tokens/s; a batch key floods the queue with {BATCH} "
        f"requests of 60-200 tokens, an interactive key sends {INTERACTIVE} of 10 tokens"
    )
    print(f"{'':26} {'chat TTFT p50':>14} {'chat TTFT p99':>14} {'batch tokens/s':>15}")
    for label, r in (("no priorities", plain), ("interactive > batch", ordered)):
        print(f"{label:26} {r['p50'] * 1000:12.0f}ms {r['p99'] * 1000:12.0f}ms {r['batch_tps']:15.1f}")
    print(
        f"with priority: chat p99 {ordered['p99']:.2f}s against the longest batch request {ordered['longest']:.1f}s "
        f"(target: below it); p99 {plain['p99'] / ordered['p99']:.0f}x better (target >= 10x); "
        f"batch throughput {ordered['batch_tps'] / plain['batch_tps']:.3f} of without (target within 5%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
