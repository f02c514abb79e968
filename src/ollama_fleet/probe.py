"""HTTP probes (httpx, concurrent): instances' readiness, version, loaded models, preload;
boxes' /fleet/info and pulls."""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ollama_fleet.values import load_body
from ollama_fleet.waiting import wait_until

if TYPE_CHECKING:
    import httpx

# httpx is imported where it is used: it is a third of the CLI's start-up time, which
# `gpus`, `plan` and `down` do not need, and `up` pays it while the instances start.

# Ollama on loopback answers 403 to a non-local Host header; send a local one explicitly.
HEADERS = {"Host": "localhost"}
LOAD_HEADERS = {**HEADERS, "Content-Type": "application/json"}
# The least a preload is given: a large model takes minutes to load from a slow disk.
PRELOAD_TIMEOUT = 300


def _url(address: str, path: str) -> str:
    return f"http://{address}{path}"


@lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    # httpx builds (and loads CA certificates into) a new TLS context for every client:
    # ~50 ms of CPU, which `up`'s readiness loop would otherwise pay every 50 ms while the
    # instances start. One context serves every client; it trusts the system's CAs, as the
    # front's HAProxy does (`ca-file @system-ca`) for boxes behind https.
    return ssl.create_default_context()


def _client(timeout: float | None) -> httpx.AsyncClient:
    import httpx

    return httpx.AsyncClient(timeout=timeout, trust_env=False, verify=_tls())


async def _version(client: httpx.AsyncClient, address: str) -> str | None:
    import httpx

    try:
        response = await client.get(_url(address, "/api/version"), headers=HEADERS)
        if response.status_code == 200:
            return str(response.json().get("version", "?"))
    except (httpx.HTTPError, ValueError):
        pass
    return None


def versions(addresses: list[str], timeout: float = 1.0) -> dict[str, str | None]:
    """`GET /api/version` on every address at once: the version, or None if it did not answer."""

    async def run() -> dict[str, str | None]:
        async with _client(timeout) as client:
            found = await asyncio.gather(*(_version(client, a) for a in addresses))
        return dict(zip(addresses, found, strict=True))

    return asyncio.run(run()) if addresses else {}


async def _load(client: httpx.AsyncClient, address: str, model: str, keep_alive: str) -> str | None:
    """Load a model: None when loaded, else the error Ollama answered. Raises httpx's
    errors when it does not answer.

    An embed with no input loads any model and embeds nothing (ollama/ollama
    server/routes.go EmbedHandler: scheduleRunner with no required capability, then
    `len(input) == 0` returns, before the runner's slot is taken). An empty-prompt generate
    would load only models that can generate: embedding models answer 400 "does not
    support generate". The gateway's health check sends the same request (load_body)."""
    response = await client.post(
        _url(address, "/api/embed"), content=load_body(model, keep_alive), headers=LOAD_HEADERS
    )
    if response.status_code == 200:
        return None
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


async def _preload(client: httpx.AsyncClient, address: str, model: str, keep_alive: str) -> str | None:
    import httpx

    try:
        return await _load(client, address, model, keep_alive)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _serves(client: httpx.AsyncClient, address: str, check: tuple[str, str]) -> str | None:
    """Why this instance cannot serve: the error it answered when asked to load its model
    (a GPU whose memory another process took answers 500 at once). None when it loaded it,
    and while it is still loading (no answer yet is not a failure)."""
    import httpx

    try:
        return await _load(client, address, *check)
    except httpx.HTTPError:
        return None


def preload(addresses: dict[str, str], jobs: list[tuple[str, str, str]], timeout: float) -> list[str]:
    """Load models in parallel, each (instance, model, keep_alive) job on its instance (of
    those in `addresses`); returns what failed, one line each."""

    async def run() -> list[str]:
        todo = [(n, m, k) for n, m, k in jobs if n in addresses]
        async with _client(timeout) as client:
            errors = await asyncio.gather(*(_preload(client, addresses[n], m, k) for n, m, k in todo))
        return [f"preload of {m} on {n} failed: {e}" for (n, m, _), e in zip(todo, errors, strict=True) if e]

    return asyncio.run(run()) if jobs and addresses else []


def gateway_answers(url: str, timeout: float) -> bool:
    """Wait until the gateway answers at all (any status: 401 or 403 mean it listens)."""
    import httpx

    def answers() -> bool:
        try:
            # Our own gateway on this machine, perhaps with a self-signed certificate: the
            # question is only whether it listens, so its certificate is not verified.
            httpx.get(url + "/", timeout=1, verify=False, trust_env=False)
            return True
        except httpx.TransportError:
            return False

    return wait_until(answers, timeout)


class Facts(BaseModel):
    """What one instance said: its version (None if it did not answer), how fast, its models."""

    version: str | None = None
    latency_ms: float | None = None
    models: list[dict[str, Any]] = []
    error: str | None = None
    # It answers, but what it answered when asked to load its model (Ollama's error).
    cannot_serve: str | None = None


async def _facts(client: httpx.AsyncClient, address: str) -> Facts:

    async def timed_version() -> tuple[httpx.Response, float]:
        start = time.perf_counter()
        response = await client.get(_url(address, "/api/version"), headers=HEADERS)
        return response, (time.perf_counter() - start) * 1000

    # Both at once, so a hung instance costs one timeout, not two.
    version, ps = await asyncio.gather(
        timed_version(), client.get(_url(address, "/api/ps"), headers=HEADERS), return_exceptions=True
    )
    if isinstance(version, BaseException):
        return Facts(error=_describe(version))
    response, latency = version
    if response.status_code != 200:
        return Facts(latency_ms=latency, error=f"GET /api/version: HTTP {response.status_code}")
    try:
        facts = Facts(version=str(response.json().get("version", "?")), latency_ms=latency)
        if not isinstance(ps, BaseException) and ps.status_code == 200:
            facts.models = list(ps.json().get("models") or [])
    except (ValueError, AttributeError):
        return Facts(latency_ms=latency, error="not an Ollama answer")
    return facts


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in type(exc).__name__:
        return "no answer (timed out)"
    if "ConnectError" in type(exc).__name__:
        return "refused"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _answers(client: httpx.AsyncClient, url: str) -> str | None:
    """None when the gateway answers at all (any status: 401 or 403 mean it listens)."""
    try:
        await client.get(url + "/")
        return None
    except Exception as exc:
        return _describe(exc)


def gather_facts(
    addresses: list[str], gateway_url: str | None, timeout: float, checks: dict[str, tuple[str, str]] | None = None
) -> tuple[dict[str, Facts], str | None]:
    """Every instance's facts and the gateway's state, all probed at once; each probe is
    bounded by `timeout` as a whole, so the total stays near one timeout. `checks`: per
    address, the (model, keep_alive) it loads to prove it serves (Facts.cannot_serve)."""
    import httpx

    checks = checks or {}

    async def bounded(coro: Any, fallback: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            return fallback

    async def facts_of(client: httpx.AsyncClient, address: str) -> Facts:
        # The loaded models first: what the check loads again is reported missing first.
        facts: Facts = await bounded(_facts(client, address), Facts(error="no answer (timed out)"))
        check = checks.get(address)
        if check and facts.version is not None:
            facts.cannot_serve = await bounded(_serves(client, address, check), None)
        return facts

    async def run() -> tuple[list[Facts], str | None]:
        async with _client(timeout) as client, httpx.AsyncClient(timeout=timeout, verify=False, trust_env=False) as gw:
            gateway = _answers(gw, gateway_url) if gateway_url else asyncio.sleep(0, None)
            *facts, gateway_error = await asyncio.gather(
                *(facts_of(client, a) for a in addresses), bounded(gateway, "no answer (timed out)")
            )
        return facts, gateway_error

    facts, gateway_error = asyncio.run(run())
    return dict(zip(addresses, facts, strict=True)), gateway_error


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def _box_info(client: httpx.AsyncClient, url: str, key: str | None) -> Any:
    import httpx

    try:
        response = await client.get(url + "/fleet/info", headers=_auth(key))
    except httpx.HTTPError as exc:
        return _describe(exc)
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    try:
        return response.json()
    except ValueError:
        return "an answer that is not JSON"


def box_infos(urls: list[str], key: str | None, timeout: float) -> dict[str, Any]:
    """`GET /fleet/info` of every box at once: its JSON, or (a str) why there is none."""

    async def run() -> dict[str, Any]:
        async with _client(timeout) as client:
            found = await asyncio.gather(*(_box_info(client, url, key) for url in urls))
        return dict(zip(urls, found, strict=True))

    return asyncio.run(run()) if urls else {}


async def _pull(
    client: httpx.AsyncClient, url: str, model: str, key: str | None, report: Callable[[dict[str, Any]], None]
) -> str | None:
    """One box's pull, streamed (ollama/ollama server/routes.go PullHandler): each progress
    line goes to `report`; returns the error, or None on "success"."""
    import httpx

    last: dict[str, Any] = {}
    try:
        async with client.stream("POST", url + "/api/pull", json={"model": model}, headers=_auth(key)) as response:
            if response.status_code != 200:
                await response.aread()
                try:
                    return str(response.json()["error"])
                except (ValueError, KeyError, TypeError):
                    return f"HTTP {response.status_code}"
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    last = json.loads(line)
                except ValueError:
                    return "an answer that is not Ollama's progress"
                if "error" in last:
                    return str(last["error"])
                report(last)
    except httpx.HTTPError as exc:
        return _describe(exc)
    return None if last.get("status") == "success" else 'the pull ended before "success"'


def pull(
    targets: dict[str, str], model: str, key: str | None, report: Callable[[str, dict[str, Any]], None]
) -> dict[str, str | None]:
    """Pull `model` through every target (name -> URL) at once; name -> error or None."""

    async def run() -> dict[str, str | None]:
        # No read timeout: a large model's layer may take minutes between progress lines.
        async with _client(None) as client:
            found = await asyncio.gather(
                *(_pull(client, url, model, key, functools.partial(report, name)) for name, url in targets.items())
            )
        return dict(zip(targets, found, strict=True))

    return asyncio.run(run())
