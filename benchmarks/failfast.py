#!/usr/bin/env python3
"""A GPU that fails fast must not swallow the traffic (#24), through both engines.

    .venv/bin/python benchmarks/failfast.py

4 one-slot fake instances behind the fleet's own gateway (`up`), `--preload llama3.2`; gpu1
fails every model request at once from just before the load: `load` answers 500 as a GPU
whose memory another process took (routes.go handleScheduleError), `busy` answers 503 as a
full queue (sched.go ErrMaxQueue). 200 streamed requests, 8 in flight. Printed per engine
and failure: the requests that failed, and how long `status` took to call gpu1 failing
(exit 1) and, once it works again, healthy. Target: at most 1 % fail, both within 5 s.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

REQUESTS = 200
CONCURRENCY = 8


def main() -> int:
    from common import helpers

    print(f"4 one-slot instances, gpu1 failing; {REQUESTS} streamed requests, {CONCURRENCY} in flight")
    print(f"{'engine':8} {'gpu1':5} {'failed':>10} {'status: failing in':>19} {'healthy again in':>17}")
    worst = 0.0
    for engine in ("nginx", "haproxy"):
        for fault in ("load", "busy"):
            with tempfile.TemporaryDirectory() as tmp:
                fleet = helpers.CliFleet(Path(tmp))
                try:
                    found = helpers.fail_fast(fleet, engine, fault, requests=REQUESTS, concurrency=CONCURRENCY)
                finally:
                    fleet.run("down", "--timeout", "2")
            share = found["failed"] / found["requests"]
            worst = max(worst, share)
            print(
                f"{engine:8} {fault:5} {found['failed']:>4} ({share:5.1%}) "
                f"{found['detect_s']:>17.1f} s {found['recover_s']:>15.1f} s"
            )
    print(f"worst: {worst:.1%} of requests failed (target <= 1 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
