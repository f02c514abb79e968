"""What the benchmarks share: a real gateway of either engine in front of fake instances, and
the heavy-tailed request lengths. Run the benchmarks from the repository root."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ollama_fleet.gateway.haproxy import Haproxy  # noqa: E402
from tests.helpers import FAKES, free_port_range, wait_answering  # noqa: E402


def pareto_lengths(count: int, seed: int, minimum: int = 8, cap: int = 400) -> list[int]:
    """Request lengths in tokens: Pareto(alpha 1.5) from `minimum`, capped: a few long
    generations among many short ones, as chat traffic is."""
    rng = random.Random(seed)
    return [min(cap, int(minimum * rng.paretovariate(1.5))) for _ in range(count)]


class Gateway:
    """A standalone nginx or haproxy, rendered by `render-<engine>` for the first `count`
    instances from `base`."""

    def __init__(self, engine: str, base: int, count: int, *flags: str) -> None:
        self.engine = engine
        self.prefix = Path(tempfile.mkdtemp(prefix=f"fleet-bench-{engine}-"))
        self.conf = self.prefix / f"{engine}.conf"
        port = free_port_range(1)
        extra = ["--metrics-port", str(free_port_range(1))] if engine == "haproxy" else ["--standalone"]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ollama_fleet",
                f"render-{engine}",
                "--check",
                "--prefix",
                str(self.prefix),
                "-o",
                str(self.conf),
                "--gpus",
                ",".join(map(str, range(count))),
                "--base-port",
                str(base),
                "--listen",
                f"127.0.0.1:{port}",
                *extra,
                *flags,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(FAKES), "FAKE_NVML_GPUS": str(count)},
        )
        if engine == "nginx":
            subprocess.run(["nginx", "-p", str(self.prefix), "-c", str(self.conf)], check=True)
        else:
            subprocess.run(["haproxy", "-W", "-D", "-f", str(self.conf)], check=True, capture_output=True)
        self.url = f"http://127.0.0.1:{port}"
        wait_answering(self.url + "/api/version")
        deadline = time.monotonic() + 10
        while engine == "haproxy" and time.monotonic() < deadline:
            stats = Haproxy().stats(self.prefix)
            if stats is not None and all(s.state == "UP" for s in stats.servers.values()):
                break
            time.sleep(0.05)

    def close(self) -> None:
        if self.engine == "nginx":
            subprocess.run(["nginx", "-p", str(self.prefix), "-c", str(self.conf), "-s", "stop"], capture_output=True)
        else:
            os.kill(int((self.prefix / "haproxy.pid").read_text().split()[0]), signal.SIGTERM)
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
