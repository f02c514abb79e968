"""Load generator (httpx async): streamed requests, TTFT, tokens/s, per-instance split.

Built for the gateway benchmark; the `bench` command will grow from it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Sample:
    status: int
    ttft: float | None = None  # seconds to the first token
    latency: float = 0.0
    tokens: int = 0  # eval_count of the final line
    instance: str | None = None


@dataclass
class BenchResult:
    wall: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200 and s.ttft is not None]

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.ok) / self.wall

    def ttft(self, q: float) -> float:
        return quantile([s.ttft for s in self.ok if s.ttft is not None], q)

    @property
    def errors(self) -> Counter:
        return Counter(s.status for s in self.samples if s.status != 200)

    @property
    def split(self) -> Counter:
        return Counter(s.instance for s in self.ok)


def quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def _one(client, url: str, model: str, prompt: str, num_predict: int | None) -> Sample:
    import httpx

    body: dict = {"model": model, "prompt": prompt}
    if num_predict is not None:
        body["options"] = {"num_predict": num_predict}
    started = time.perf_counter()
    try:
        async with client.stream("POST", url + "/api/generate", json=body) as response:
            sample = Sample(status=response.status_code, instance=response.headers.get("x-fleet-instance"))
            async for line in response.aiter_lines():
                if not line:
                    continue
                data = json.loads(line)
                if sample.ttft is None and data.get("response"):
                    sample.ttft = time.perf_counter() - started
                if data.get("done"):
                    sample.tokens = int(data.get("eval_count", 0))
    except (httpx.HTTPError, ValueError):
        sample = Sample(status=0)  # a failed request is counted, never raised
    sample.latency = time.perf_counter() - started
    return sample


async def _run(urls: list[str], model: str, concurrency: int, requests: int, prompt: str,
               num_predict: int | None) -> BenchResult:
    import httpx

    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)

    async def worker(k: int, client) -> None:
        # Worker k always uses the same URL: with one URL per instance, this is the ideal
        # spread a gateway is compared against.
        url = urls[k % len(urls)]
        while not queue.empty():
            queue.get_nowait()
            samples.append(await _one(client, url, model, prompt, num_predict))

    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(k, client) for k in range(concurrency)))
        wall = time.perf_counter() - started
    return BenchResult(wall=wall, samples=samples)


def run_load(urls: list[str], model: str, *, concurrency: int, requests: int, prompt: str = "hi",
             num_predict: int | None = None) -> BenchResult:
    """Send `requests` streamed generate requests, `concurrency` at a time, over `urls`."""
    return asyncio.run(_run(urls, model, concurrency, requests, prompt, num_predict))
