#!/usr/bin/env python3
"""Many boxes behind one front, in one run (as root: the boxes are network namespaces).

    sudo .venv/bin/python benchmarks/multihost.py

3 boxes, each a real `ollama-fleet up --engine haproxy` over 4 one-slot fake instances (40
tokens/s per sequence), in their own network namespaces on a bridge (tests/lab.py); the
front's HAProxy in another. Printed side by side:

1. a heavy-tailed batch (Pareto lengths, seed 11): TTFT p99 through the front against a
   simulated central FIFO queue over the 12 slots, and against per-box round robin (the
   client picks boxes in turn; each box queues its own share);
2. tokens/s of 3 boxes against 1 under saturating load;
3. a box that vanishes under load (its link cut): requests lost among those not begun, how
   long its streams take to end, how long until it is marked down and, its link back, up;
4. a box whose gateway is killed while its host stays up: requests lost;
5. a box added to and removed from the SRV records: seconds until it serves and until it
   stops receiving requests, with the front's HAProxy pid unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BOXES = 3
INSTANCES = 4
TPS = 40.0
REQUESTS = 120
SEED = 11
TARGETS = {"p99": 1.2, "scale": 2.9, "lost": 0, "end": 3.0, "down": 3.0, "up": 3.0}


def main() -> int:
    from common import pareto_lengths
    from dispatch import central_queue
    from ollama_fleet.bench import quantile, run_load
    from ollama_fleet.gateway.front import stats
    from tests.helpers import require_tool
    from tests.lab import NET, PORT, Lab

    lab = Lab()
    front_url = f"http://{NET}.2:{PORT}"
    sock = lab.dir / "front-state" / "front" / "admin.sock"
    names = [f"box{k}" for k in range(1, BOXES + 1)]

    def state(name: str) -> str:
        found = stats(sock).boxes.get(name)
        return found.state if found else "absent"

    def until(check, timeout: float = 15) -> float:  # type: ignore[no-untyped-def]
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout:
                raise SystemExit(f"gave up after {timeout}s")
            time.sleep(0.02)
        return time.monotonic() - started

    def load(urls: list[str], **kw):  # type: ignore[no-untyped-def]
        return lab.call("front", run_load, urls, "qwen3", **kw)

    try:
        urls = [lab.box(name, 10 + k, INSTANCES, FAKE_OLLAMA_TPS=str(TPS)) for k, name in enumerate(names, 1)]
        lab.host("front", 2)
        lab.front_up(boxes=tuple(urls))
        slots = BOXES * INSTANCES
        load([front_url], concurrency=slots, requests=slots, num_predict=2)  # warm: every model loaded

        # 1. A heavy-tailed batch: the front's one queue, against the ideal and round robin.
        lengths = pareto_lengths(REQUESTS, SEED)
        clients = 2 * slots
        via_front = load([front_url], concurrency=clients, requests=REQUESTS, num_predict=lengths)
        round_robin = load(urls, concurrency=clients, requests=REQUESTS, num_predict=lengths)
        ideal = quantile(central_queue(lengths, slots, clients, TPS), 0.99)
        assert not via_front.errors and not round_robin.errors, (via_front.errors, round_robin.errors)

        # 2. Scaling: the same saturating load over 3 boxes and over 1.
        three = load([front_url], concurrency=2 * slots, duration=8, num_predict=100)
        one = load([urls[0]], concurrency=2 * INSTANCES, duration=8, num_predict=100)

        # 3. A box vanishes under load (its cable cut).
        outcome = vanish(lab, front_url, names[-1], state, until)

        # 4. A box's gateway dies while its host stays up.
        lost_kill = kill_gateway(lab, front_url, names[-2], state, until)

        # 5. SRV membership.
        srv = srv_membership(lab, require_tool("dnsmasq"), names, sock, until)
    finally:
        lab.close()

    print(f"{BOXES} boxes x {INSTANCES} one-slot fake instances at {TPS:g} tokens/s per sequence, one front (HAProxy)")
    print(f"\nheavy-tailed batch: {REQUESTS} requests, Pareto lengths (seed {SEED}), {clients} in flight")
    print(f"  {'':34} {'TTFT p50':>9} {'TTFT p99':>9} {'tokens/s':>9}")
    print(f"  {'central FIFO queue (simulated)':34} {'':9} {ideal * 1000:7.0f}ms")
    for label, r in (("front: one queue, leastconn", via_front), ("per-box round robin (client)", round_robin)):
        print(f"  {label:34} {r.ttft(0.5) * 1000:7.0f}ms {r.ttft(0.99) * 1000:7.0f}ms {r.tokens_per_s:9.1f}")
    p99 = via_front.ttft(0.99) / ideal
    print(
        f"  front p99 / central queue p99: {p99:.2f}x (target <= {TARGETS['p99']}x); "
        f"round robin p99 / front p99: {round_robin.ttft(0.99) / via_front.ttft(0.99):.1f}x"
    )
    scale = three.tokens_per_s / one.tokens_per_s
    print(
        f"\nsaturating load: 3 boxes {three.tokens_per_s:.0f} tokens/s, 1 box {one.tokens_per_s:.0f} tokens/s: "
        f"{scale:.2f}x (target >= {TARGETS['scale']}x)"
    )
    print(
        f"\na box vanishes under load (link cut): requests lost among those not begun: {outcome['lost']} "
        f"of {outcome['waiting']} (target 0); its {outcome['cut']} streams ended {outcome['end']:.1f}s after "
        f"the cut (target <= {TARGETS['end']:g}s); marked down after {outcome['down']:.1f}s, up "
        f"{outcome['up']:.1f}s after its link came back (targets <= 3s)"
    )
    print(
        f"a box's gateway killed, its host up: requests lost {lost_kill['lost']} of {lost_kill['sent']} "
        f"(target <= 1); {lost_kill['cut']} streams it was serving were cut"
    )
    print(
        f"SRV records: a box added serves after {srv['join']:.1f}s, a box removed stops receiving after "
        f"{srv['leave']:.1f}s; front pid unchanged: {srv['same_pid']}"
    )
    return 0


def _timed(url: str, tokens: int) -> tuple[str, float]:
    result = _stream(url, tokens)
    return result, time.monotonic()


def _stream(url: str, tokens: int) -> str:
    """One generation: "ok", "cut" (its answer had begun), or "lost"."""
    import json

    import httpx

    body = {"model": "qwen3", "prompt": "x", "options": {"num_predict": tokens}}
    begun = False
    try:
        with httpx.stream("POST", url + "/api/generate", json=body, timeout=60) as r:
            if r.status_code != 200:
                return "lost"
            begun = True
            last = {}
            for line in r.iter_lines():
                last = json.loads(line)
            return "ok" if last.get("done") else "cut"
    except httpx.HTTPError:
        return "cut" if begun else "lost"


def vanish(lab, url, name, state, until):  # type: ignore[no-untyped-def]
    pool = lab.pool("front", 32)
    running = [pool.submit(_timed, url, 200) for _ in range(BOXES * INSTANCES)]  # 5 s each: all slots
    time.sleep(0.5)
    waiting = [pool.submit(_stream, url, 20) for _ in range(12)]  # queued at the front
    time.sleep(0.3)
    cut = time.monotonic()
    lab.cut(name)
    down = until(lambda: state(name) == "DOWN")
    ends = [ended - cut for result, ended in (f.result() for f in running) if result != "ok"]
    lost = [f.result() for f in waiting].count("lost")
    end = max(ends) if ends else 0.0
    lab.mend(name)
    up = until(lambda: state(name) == "UP")
    return {"lost": lost, "waiting": len(waiting), "cut": len(ends), "end": end, "down": down, "up": up}


def kill_gateway(lab, url, name, state, until):  # type: ignore[no-untyped-def]
    pool = lab.pool("front", 16)
    stop = threading.Event()
    results: list[str] = []

    def loop() -> None:
        for _ in range(500):  # bounded
            if stop.is_set():
                return
            results.append(_stream(url, 8))

    loops = [pool.submit(loop) for _ in range(BOXES * INSTANCES)]
    time.sleep(1.5)
    for pid in lab.pids(name, "haproxy"):
        os.kill(pid, signal.SIGKILL)
    until(lambda: state(name) == "DOWN")
    time.sleep(1.5)
    stop.set()
    for future in loops:
        future.result()
    return {"lost": results.count("lost"), "sent": len(results), "cut": results.count("cut")}


def srv_membership(lab, dnsmasq, names, sock, until):  # type: ignore[no-untyped-def]
    from ollama_fleet.gateway.front import stats
    from tests.lab import NET, PORT

    lab.front("down")
    lab.host("dns", 53)
    record = "_ollama-fleet._tcp.lab.test"

    def serving() -> set[str]:
        return {b.address for b in stats(sock).boxes.values() if b.state == "UP"}

    # names[1]'s gateway was killed above: box 1 is published, box 3 joins and leaves.
    base, joiner = names[0], names[2]
    lab.publish_srv(dnsmasq, record, base)
    lab.front_up("--box-srv", record, "--box-slots", str(INSTANCES), "--resolver", f"{NET}.53")
    pid = (sock.parent / "haproxy.pid").read_text()
    until(lambda: len(serving()) == 1)
    third = f"{lab.hosts[joiner]}:{PORT}"
    lab.publish_srv(dnsmasq, record, base, joiner)
    join = until(lambda: third in serving())
    lab.publish_srv(dnsmasq, record, base)
    leave = until(lambda: third not in serving())
    return {"join": join, "leave": leave, "same_pid": (sock.parent / "haproxy.pid").read_text() == pid}


if __name__ == "__main__":
    sys.exit(main())
