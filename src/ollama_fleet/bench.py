"""Load generator (httpx async): streamed requests, TTFT, tokens/s, per-instance split.

Used by the `bench` command and by the benchmarks in benchmarks/. Every failure of a request
is counted in the result, never raised: a load test must survive the failures it measures.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Api = Literal["generate", "chat", "openai"]
PATHS: dict[str, str] = {"generate": "/api/generate", "chat": "/api/chat", "openai": "/v1/chat/completions"}


@dataclass
class Sample:
    status: int  # HTTP status; 0 when there was none (see `error`)
    error: str | None = None  # "HTTP 404", "connection refused", "stream cut", the model's own error, ...
    ttft: float | None = None  # seconds to the first generated token, of thinking or of the answer
    ttfa: float | None = None  # seconds to the first token of the answer (after any thinking)
    latency: float = 0.0  # seconds to the end of the reply
    tokens: int = 0  # eval_count of the last line, or streamed chunks (OpenAI API): thinking included
    instance: str | None = None  # X-Fleet-Instance: which instance the gateway chose


@dataclass
class BenchResult:
    wall: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.ok) / self.wall if self.wall else 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.ok) / self.wall if self.wall else 0.0

    def ttft(self, q: float) -> float:
        return quantile([s.ttft for s in self.ok if s.ttft is not None], q)

    def ttfa(self, q: float) -> float:
        return quantile([s.ttfa for s in self.ok if s.ttfa is not None], q)

    def latency(self, q: float) -> float:
        return quantile([s.latency for s in self.ok], q)

    @property
    def errors(self) -> Counter:
        return Counter(s.error for s in self.samples if s.error is not None)

    @property
    def split(self) -> Counter:
        return Counter(s.instance for s in self.ok)

    def summary(self) -> dict[str, Any]:
        """The `bench --json` object (schema in the README)."""
        ms = lambda v: None if v != v else round(v * 1000, 2)  # noqa: E731 - NaN (no sample) -> null
        return {
            "schema": 1,
            "requests": len(self.samples),
            "ok": len(self.ok),
            "wall_s": round(self.wall, 3),
            "requests_per_s": round(self.requests_per_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "tokens": sum(s.tokens for s in self.ok),
            "ttft_ms": {f"p{q}": ms(self.ttft(q / 100)) for q in (50, 95, 99)},
            "ttfa_ms": {f"p{q}": ms(self.ttfa(q / 100)) for q in (50, 95, 99)},
            "latency_ms": {f"p{q}": ms(self.latency(q / 100)) for q in (50, 99)},
            "errors": dict(self.errors),
            "split": {name or "-": n for name, n in sorted(self.split.items(), key=lambda kv: kv[0] or "")},
        }


def quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _body(api: Api, model: str, prompt: str, num_predict: int | None) -> dict[str, Any]:
    if api == "generate":
        body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": True}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True}
    if num_predict is not None:
        if api == "openai":
            body["max_tokens"] = num_predict
        else:
            body["options"] = {"num_predict": num_predict}
    return body


@dataclass
class Piece:
    """One streamed line: its answer text, its thinking, the final object if it ends the
    reply, and the error Ollama put in the stream instead of more tokens."""

    text: str = ""
    thinking: str = ""
    final: dict | None = None
    error: str | None = None


def _piece(api: Api, line: str) -> Piece:
    """Thinking models (qwen3 ...) stream their reasoning first, in `thinking` (the OpenAI
    API: `reasoning`) with empty content; an error mid-stream is a line {"error": ...}."""
    if api == "openai":
        if not line.startswith("data:"):
            return Piece()
        payload = line[5:].strip()
        if payload == "[DONE]":
            return Piece(final={})
        data = json.loads(payload)
        if "error" in data:
            error = data["error"]
            return Piece(error=str(error.get("message", error) if isinstance(error, dict) else error))
        delta = ((data.get("choices") or [{}])[0]).get("delta") or {}
        return Piece(
            text=delta.get("content") or "", thinking=delta.get("reasoning") or delta.get("reasoning_content") or ""
        )
    data = json.loads(line)
    if "error" in data:
        return Piece(error=str(data["error"]))
    where = data if api == "generate" else (data.get("message") or {})
    text = where.get("response" if api == "generate" else "content") or ""
    return Piece(text=text, thinking=where.get("thinking") or "", final=data if data.get("done") else None)


def _describe(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return "stream cut"
    if isinstance(exc, ValueError):
        return "bad reply"
    return type(exc).__name__


async def _one(client: Any, url: str, api: Api, model: str, prompt: str, num_predict: int | None) -> Sample:
    import httpx

    started = time.perf_counter()
    sample = Sample(status=0)
    try:
        async with client.stream("POST", url + PATHS[api], json=_body(api, model, prompt, num_predict)) as response:
            sample.status = response.status_code
            sample.instance = response.headers.get("x-fleet-instance")
            if response.status_code != 200:
                await response.aread()
                sample.error = f"HTTP {response.status_code}"
            else:
                done = None
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    piece = _piece(api, line)
                    if piece.error is not None:
                        sample.error = f"error: {piece.error[:120]}"  # the model's own words
                        break
                    if piece.text or piece.thinking:
                        now = time.perf_counter() - started
                        sample.ttft = now if sample.ttft is None else sample.ttft
                        if piece.text and sample.ttfa is None:
                            sample.ttfa = now
                        if api == "openai":
                            sample.tokens += 1  # one chunk is one token in Ollama's OpenAI layer
                    if piece.final is not None:
                        done = piece.final
                if sample.error is not None:
                    pass
                elif done is None:
                    sample.error = "stream cut"  # the reply ended without its last line
                elif api != "openai":
                    sample.tokens = int(done.get("eval_count", 0))
    except (httpx.HTTPError, ValueError) as exc:
        sample.error = _describe(exc)
    sample.latency = time.perf_counter() - started
    return sample


async def _run(
    urls: list[str],
    model: str | list[str],
    concurrency: int,
    requests: int | None,
    duration: float | None,
    prompts: list[str],
    api: Api,
    num_predict: int | list[int] | None,
    headers: dict[str, str],
    progress: Callable[[int], None] | None,
) -> BenchResult:
    import httpx

    issued = 0
    samples: list[Sample] = []
    deadline: float | None = None
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)

    def next_request() -> int | None:
        nonlocal issued
        if (requests is not None and issued >= requests) or (deadline is not None and time.perf_counter() >= deadline):
            return None
        issued += 1
        return issued - 1

    async def worker(k: int, client: Any) -> None:
        # Worker k always uses the same URL: with one URL per instance, this is the ideal
        # spread a gateway is compared against.
        url = urls[k % len(urls)]
        while (n := next_request()) is not None:
            predict = num_predict[n % len(num_predict)] if isinstance(num_predict, list) else num_predict
            name = model[n % len(model)] if isinstance(model, list) else model
            samples.append(await _one(client, url, api, name, prompts[n % len(prompts)], predict))
            if progress is not None:
                progress(len(samples))

    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False, headers=headers) as client:
        started = time.perf_counter()
        deadline = None if duration is None else started + duration
        await asyncio.gather(*(worker(k, client) for k in range(concurrency)))
        wall = time.perf_counter() - started
    return BenchResult(wall=wall, samples=samples)


def run_load(
    urls: list[str],
    model: str | list[str],
    *,
    concurrency: int,
    requests: int | None = None,
    duration: float | None = None,
    prompt: str = "hi",
    prompts: list[str] | None = None,
    api: Api = "generate",
    num_predict: int | list[int] | None = None,
    headers: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> BenchResult:
    """Send streamed requests, `concurrency` at a time, over `urls`: `requests` of them, or as
    many as fit in `duration` seconds. A list of models or of `num_predict` gives request n
    the n-th of each."""
    if (requests is None) == (duration is None):
        raise ValueError("give requests or duration")
    return asyncio.run(
        _run(
            urls,
            model,
            concurrency,
            requests,
            duration,
            prompts or [prompt],
            api,
            num_predict,
            headers or {},
            progress,
        )
    )


def check_target(url: str, model: str, headers: dict[str, str], timeout: float = 10.0) -> str | None:
    """One probe before a run: why it cannot work (an unreachable URL, an unknown model), or None."""
    import httpx

    try:
        response = httpx.post(
            url + "/api/show", json={"model": model}, headers=headers, timeout=timeout, trust_env=False
        )
    except httpx.HTTPError as exc:
        return f"url: {url} does not answer ({_describe(exc)})"
    if response.status_code == 404:
        return f"model: {model!r} is not on {url} (pull it first: OLLAMA_HOST={url} ollama pull {model})"
    if response.status_code in (401, 403):
        return f"url: {url} answers {response.status_code}: {_error_text(response)} (API key? allowlist?)"
    if response.status_code != 200:
        return f"url: {url} answers POST /api/show with HTTP {response.status_code}: {_error_text(response)}"
    return None


def _error_text(response: Any) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip()[:200] or "no body"


@dataclass
class Run:
    """A bench run, checked before any load: where, with which prompts and key, how many."""

    url: str
    prompts: list[str]
    headers: dict[str, str]
    total: int | None  # requests to send; None: as many as fit in the duration


def prepare(
    url: str,
    model: str,
    *,
    requests: int | None,
    duration: float | None,
    concurrency: int,
    prompt: str | None,
    prompts: Path | None,
    api_key_file: Path | None,
) -> Run:
    """Every bad option at once (exit 2), then one probe of the URL and the model (exit 1)."""
    from ollama_fleet.errors import BadInput, UserError
    from ollama_fleet.keys import read_keys

    problems = []
    if not re.fullmatch(r"https?://[^\s/]+", url.rstrip("/")):
        problems.append(f"url: not http://HOST:PORT or https://HOST:PORT (got {url!r})")
    if requests is not None and duration is not None:
        problems.append("requests: give --requests or --duration, not both")
    if prompt is not None and prompts is not None:
        problems.append("prompts: give --prompt or --prompts, not both")
    if problems:
        raise BadInput(problems)
    texts = [prompt or "Write a short story about a GPU."]
    if prompts is not None:
        try:
            texts = [line for line in prompts.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise BadInput(f"prompts: cannot read {prompts} ({exc.strerror})") from None
        if not texts:
            raise BadInput(f"prompts: {prompts} holds no prompt")
    headers = {"Authorization": f"Bearer {read_keys(api_key_file)[0].key}"} if api_key_file else {}
    base = url.rstrip("/")
    if (problem := check_target(base, model, headers)) is not None:
        raise UserError(problem)
    total = requests if duration is not None or requests is not None else 10 * concurrency
    return Run(url=base, prompts=texts, headers=headers, total=None if duration is not None else total)
