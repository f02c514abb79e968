#!/usr/bin/env python3
"""A fake `ollama serve` for tests and benchmarks: a test double of a real program, kept
faithful to DESIGN.md §5. Standard library only, so it runs under any python3.

    fake_ollama.py serve        # listens on $OLLAMA_HOST like the real one

What it models: the endpoints of §5 (plus /api/tags, /api/show, /api/embed, /v1/*) with
Ollama's status codes, content types and streaming framing; the loopback Host check (403);
OLLAMA_NUM_PARALLEL slots with queueing beyond them (503 past OLLAMA_MAX_QUEUE); a decode
speed per slot that drops as more sequences decode together, as on a GPU; model loading with
a load time, OLLAMA_MAX_LOADED_MODELS eviction and a load counter; SIGTERM closing every
connection at once and exiting 0; TCP_NODELAY, as Go servers set it.

Knobs (environment): FAKE_OLLAMA_TPS (tokens/s of one sequence alone, 200),
FAKE_OLLAMA_TOKENS (tokens per reply unless options.num_predict, 20), FAKE_OLLAMA_STARTUP_S
(delay before listening, 0), FAKE_OLLAMA_LOAD_S (model load time, 0), FAKE_OLLAMA_MODELS
(comma-separated models present), FAKE_OLLAMA_VERSION.

For tests: GET /_fake/env (the environment it started with), GET /_fake/stats (peak
concurrency, loads, requests, served).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

START_ENV = dict(os.environ)


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))  # Go's encoding/json writes no spaces



VERSION = os.environ.get("FAKE_OLLAMA_VERSION", "0.33.0")
TPS = float(os.environ.get("FAKE_OLLAMA_TPS", "200"))
TOKENS = int(os.environ.get("FAKE_OLLAMA_TOKENS", "20"))
LOAD_S = float(os.environ.get("FAKE_OLLAMA_LOAD_S", "0"))
SLOTS = int(os.environ.get("OLLAMA_NUM_PARALLEL") or 1)
MAX_QUEUE = int(os.environ.get("OLLAMA_MAX_QUEUE") or 512)
MAX_LOADED = int(os.environ.get("OLLAMA_MAX_LOADED_MODELS") or 3)
CONTENTION = 0.3  # k sequences decoding together each run at TPS / (1 + 0.3 (k - 1))
MODELS = [
    m if ":" in m else m + ":latest"
    for m in os.environ.get("FAKE_OLLAMA_MODELS", "llama3.2:latest,qwen3:latest,nomic-embed-text:latest").split(",")
    if m
]


def normalize(name: str) -> str:
    return name if ":" in name else name + ":latest"  # "qwen3" is "qwen3:latest"


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class Engine:
    """Slots, the decode-speed model, loaded models and counters, shared by all handlers."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.busy = 0  # sequences holding a slot
        self.waiting = 0
        self.peak = 0
        self.requests = 0
        self.served = 0
        self.loads: dict[str, int] = {}
        self.loaded: dict[str, float] = {}  # model -> expiry (monotonic; inf = forever)
        self.keep_alive = parse_duration(os.environ.get("OLLAMA_KEEP_ALIVE", "5m"))

    def acquire(self) -> bool:
        with self.lock:
            if self.busy >= SLOTS and self.waiting >= MAX_QUEUE:
                return False
            self.waiting += 1
            while self.busy >= SLOTS:
                self.lock.wait()
            self.waiting -= 1
            self.busy += 1
            self.peak = max(self.peak, self.busy)
            return True

    def release(self) -> None:
        with self.lock:
            self.busy -= 1
            self.served += 1
            self.lock.notify()

    def token_time(self) -> float:
        return (1 + CONTENTION * (max(self.busy, 1) - 1)) / TPS

    def load(self, model: str, keep_alive: float | None) -> float:
        """Load (or refresh) a model; returns the seconds spent loading."""
        expiry = time.monotonic() + (self.keep_alive if keep_alive is None else keep_alive)
        with self.lock:
            self._expire()
            if model in self.loaded:
                self.loaded[model] = expiry
                return 0.0
            while len(self.loaded) >= MAX_LOADED:  # evict the one expiring first
                self.loaded.pop(min(self.loaded, key=self.loaded.__getitem__))
            self.loads[model] = self.loads.get(model, 0) + 1
        time.sleep(LOAD_S)
        with self.lock:
            self.loaded[model] = expiry
        return LOAD_S

    def _expire(self) -> None:
        for model, expiry in list(self.loaded.items()):
            if expiry <= time.monotonic():
                del self.loaded[model]

    def ps(self) -> list[dict]:
        with self.lock:
            self._expire()
            result = []
            for model, expiry in self.loaded.items():
                left = expiry - time.monotonic()
                # Kept forever (keep_alive < 0): Ollama reports a date some 290 years away.
                expires = datetime.now(timezone.utc) + (timedelta(days=290 * 365) if left == float("inf") else timedelta(seconds=left))
                result.append(
                    {"name": model, "model": model, "size": 5_000_000_000, "size_vram": 5_000_000_000,
                     "digest": "f" * 64, "details": details(), "expires_at": expires.isoformat()}
                )
            return result


def parse_duration(value: object) -> float:
    """Ollama's keep_alive: a number of seconds or a Go duration; negative means forever."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(int(text))
        except ValueError:
            import re

            units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
            sign = -1 if text.startswith("-") else 1
            parts = re.findall(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)", text.lstrip("+-"))
            if not parts:
                raise ValueError(f"time: invalid duration {text!r}")
            seconds = sign * sum(float(n) * units[u] for n, u in parts)
    return float("inf") if seconds < 0 else seconds


def details() -> dict:
    return {"format": "gguf", "family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}


def host_allowed(host_header: str) -> bool:
    """Ollama's allowedHostsMiddleware: only local names or IPs when it listens on loopback."""
    host = host_header.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if host in ("", "localhost") or host == socket.gethostname():
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return host.endswith((".localhost", ".local", ".internal"))


ENGINE = Engine()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-ollama"
    disable_nagle_algorithm = True  # TCP_NODELAY, as Go sets it

    # ------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: object) -> None:
        # A [GIN]-style access line, like Ollama's log.
        sys.stderr.write(f"[GIN] {datetime.now():%Y/%m/%d - %H:%M:%S} | {self.address_string()} | {format % args}\n")

    def _check_host(self) -> bool:
        if self.server.loopback and not host_allowed(self.headers.get("Host", "")):
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        return True

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, body: object) -> None:
        self._send(status, dumps(body).encode(), "application/json; charset=utf-8")

    def _body(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": "invalid request body"})
            return None
        return body if isinstance(body, dict) else {}

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    # ------------------------------------------------------------ routes
    def do_HEAD(self) -> None:
        if not self._check_host():
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", "17")
        self.end_headers()

    def do_GET(self) -> None:
        if not self._check_host():
            return
        routes = {
            "/api/version": lambda: {"version": VERSION},
            "/api/tags": lambda: {"models": [tag(m) for m in MODELS]},
            "/api/ps": lambda: {"models": ENGINE.ps()},
            "/_fake/env": lambda: START_ENV,
            "/_fake/stats": lambda: {
                "peak_concurrency": ENGINE.peak, "loads": ENGINE.loads, "requests": ENGINE.requests,
                "served": ENGINE.served, "busy": ENGINE.busy, "waiting": ENGINE.waiting,
            },
        }
        if self.path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif self.path in routes:
            self._json(200, routes[self.path]())
        else:
            self._not_found()

    def _not_found(self) -> None:
        self._send(404, b"404 page not found", "text/plain")

    def do_POST(self) -> None:
        if not self._check_host():
            return
        body = self._body()
        if body is None:
            return
        path = self.path.split("?")[0]
        kinds = {
            "/api/generate": "generate", "/api/chat": "chat", "/v1/chat/completions": "openai-chat",
            "/v1/completions": "openai-completion", "/api/embed": "embed", "/v1/embeddings": "openai-embed",
            "/api/show": "show",
        }
        kind = kinds.get(path)
        if kind is None:
            return self._not_found()
        model = normalize(str(body.get("model") or body.get("name") or ""))
        if model not in MODELS:
            # Ollama's exact body; the OpenAI layer wraps it in its own error object.
            message = f"model '{body.get('model') or body.get('name') or ''}' not found"
            if kind.startswith("openai"):
                return self._json(404, {"error": {"message": message, "type": "api_error", "param": None, "code": None}})
            return self._json(404, {"error": message})
        if kind == "show":
            return self._json(200, {"modelfile": f"FROM {model}", "parameters": "", "template": "{{ .Prompt }}",
                                    "details": details(), "model_info": {}, "capabilities": ["completion"]})
        with ENGINE.lock:
            ENGINE.requests += 1
        try:
            keep_alive = parse_duration(body["keep_alive"]) if "keep_alive" in body else None
        except ValueError as exc:
            return self._json(400, {"error": str(exc)})
        if not ENGINE.acquire():
            return self._json(503, {"error": "server busy, please try again.  maximum pending requests exceeded"})
        try:
            load = ENGINE.load(model, keep_alive)
            if kind in ("embed", "openai-embed"):
                return self._embed(kind, model, body)
            self._generate(kind, model, body, load)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away: stop generating, free the slot
        finally:
            ENGINE.release()

    def _embed(self, kind: str, model: str, body: dict) -> None:
        inputs = body.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        vectors = [[0.1, 0.2, 0.3] for _ in inputs]
        if kind == "embed":
            return self._json(200, {"model": model, "embeddings": vectors})
        self._json(200, {"object": "list", "model": model,
                         "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]})

    def _generate(self, kind: str, model: str, body: dict, load: float) -> None:
        options = body.get("options") or {}
        count = int(options.get("num_predict") or body.get("max_tokens") or TOKENS)
        if kind == "generate" and not body.get("prompt") and not body.get("images"):
            # An empty prompt only loads the model: Ollama's preload.
            return self._json(200, {"model": model, "created_at": now(), "response": "", "done": True,
                                    "done_reason": "load"})
        if kind == "chat" and not body.get("messages"):
            return self._json(200, {"model": model, "created_at": now(), "message": {"role": "assistant", "content": ""},
                                    "done": True, "done_reason": "load"})
        openai = kind.startswith("openai")
        stream = bool(body.get("stream", not openai))  # Ollama streams by default, OpenAI does not
        started = time.monotonic()
        if stream:
            self._start_stream("text/event-stream" if openai else "application/x-ndjson")
        text = []
        for i in range(count):
            time.sleep(ENGINE.token_time())
            token = f"tok{i} "
            text.append(token)
            if stream:
                self._chunk(self._piece(kind, model, token))
        elapsed = time.monotonic() - started
        final = self._final(kind, model, "".join(text), count, elapsed, load, stream)
        if stream:
            self._chunk(final)
            if openai:
                self._chunk(b"data: [DONE]\n\n")
            self._end_stream()
        else:
            self._send(200, final, "application/json; charset=utf-8")

    def _piece(self, kind: str, model: str, token: str) -> bytes:
        if kind == "generate":
            return dumps({"model": model, "created_at": now(), "response": token, "done": False}).encode() + b"\n"
        if kind == "chat":
            return dumps({"model": model, "created_at": now(), "message": {"role": "assistant", "content": token},
                               "done": False}).encode() + b"\n"
        if kind == "openai-chat":
            choice = {"index": 0, "delta": {"role": "assistant", "content": token}, "finish_reason": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": token, "finish_reason": None}
            obj = "text_completion"
        return b"data: " + dumps({"id": "chatcmpl-1", "object": obj, "created": int(time.time()), "model": model,
                                       "system_fingerprint": "fp_ollama", "choices": [choice]}).encode() + b"\n\n"

    def _final(self, kind: str, model: str, text: str, count: int, elapsed: float, load: float, stream: bool) -> bytes:
        if kind in ("generate", "chat"):
            final = {"model": model, "created_at": now(), "done": True, "done_reason": "stop",
                     "total_duration": int((elapsed + load) * 1e9), "load_duration": int(load * 1e9),
                     "prompt_eval_count": 10, "prompt_eval_duration": 1_000_000,
                     "eval_count": count, "eval_duration": int(elapsed * 1e9)}
            content = "" if stream else text
            if kind == "generate":
                final["response"] = content
            else:
                final["message"] = {"role": "assistant", "content": content}
            return dumps(final).encode() + (b"\n" if stream else b"")
        usage = {"prompt_tokens": 10, "completion_tokens": count, "total_tokens": 10 + count}
        if kind == "openai-chat":
            choice = ({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"} if stream
                      else {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
            obj = "chat.completion.chunk" if stream else "chat.completion"
        else:
            choice = {"index": 0, "text": "" if stream else text, "finish_reason": "stop"}
            obj = "text_completion"
        body = {"id": "chatcmpl-1", "object": obj, "created": int(time.time()), "model": model,
                "system_fingerprint": "fp_ollama", "choices": [choice]}
        if not stream:
            body["usage"] = usage
            return dumps(body).encode()
        return b"data: " + dumps(body).encode() + b"\n\n"


def tag(model: str) -> dict:
    return {"name": model, "model": model, "modified_at": now(), "size": 5_000_000_000, "digest": "f" * 64,
            "details": details()}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # like Go's listener: SO_REUSEADDR, never SO_REUSEPORT
    request_queue_size = 1024


def address() -> tuple[str, int]:
    raw = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").strip()
    raw = raw.split("://", 1)[-1].rstrip("/")
    host, _, port = raw.rpartition(":")
    return (host.strip("[]") or "127.0.0.1", int(port or 11434))


def process_age() -> float:
    """Seconds since this process was started (Linux /proc), 0 where unknown."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def main(argv: list[str]) -> int:
    if argv[1:2] != ["serve"]:
        sys.stderr.write("usage: fake_ollama.py serve\n")
        return 1
    # SIGTERM: Ollama closes every connection at once (no drain) and exits 0.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # The start-up delay counts from exec, like a real server's: this interpreter's own
    # start-up is part of it rather than added to it.
    time.sleep(max(0.0, float(os.environ.get("FAKE_OLLAMA_STARTUP_S", "0")) - process_age()))
    host, port = address()
    try:
        server = Server((host, port), Handler)
    except OSError as exc:
        sys.stderr.write(f"Error: listen tcp {host}:{port}: bind: {exc.strerror.lower()}\n")
        return 1
    server.loopback = ipaddress.ip_address(host).is_loopback if host != "localhost" else True
    sys.stderr.write(
        f'time={now()} level=INFO source=routes.go msg="Listening on {host}:{port} (version {VERSION})"\n'
        f"time={now()} level=INFO msg=\"inference compute\" CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}\n"
    )
    sys.stderr.flush()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
