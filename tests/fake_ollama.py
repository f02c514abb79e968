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
(GPU discovery time: it listens at once but answers only after it, 0), FAKE_OLLAMA_LOAD_S
(model load time, 0), FAKE_OLLAMA_MODELS (comma-separated models present; those named
*embed* are embedding-only), FAKE_OLLAMA_THINKING (comma-separated models that think by
default, "qwen3"), FAKE_OLLAMA_ERROR_AFTER (send an {"error"} line after this many tokens
of a stream), FAKE_OLLAMA_GPUS (the box's GPUs, as the fake pynvml numbers them, 8),
FAKE_OLLAMA_NO_CUDA=1 (the CUDA library fails: no GPU found), FAKE_OLLAMA_VERSION,
FAKE_OLLAMA_REGISTRY (the models /api/pull finds; a pull writes a manifest into
OLLAMA_MODELS, so every instance sharing the dir has the model), FAKE_OLLAMA_PULL_S (seconds
a pull takes, 0.3), FAKE_OLLAMA_FAULTS (a directory: while a file named after this
instance's port is in it, the instance fails fast as its content says: `load`, every
model load answers 500 at once, as a GPU whose memory another process took; `busy`, every
model request answers 503 "server busy", as a full queue).

Each behaviour copied from Ollama names the file and function of ollama/ollama (v0.33.0-rc2,
fb30760) it follows.

For tests: GET /_fake/env (the environment it started with), GET /_fake/stats (peak
concurrency, loads, requests, served, answers by status).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import posixpath
import re
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

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


def normalize(name: str) -> str:
    """types/model/name.go ParseName + DisplayShortest: default host, namespace and tag, and
    names compare without case ("Library/Qwen3" is "qwen3:latest")."""
    name = name.strip().lower()
    tag = ""
    if name.rfind(":") > name.rfind("/"):
        name, _, tag = name.rpartition(":")
    parts = name.split("/")
    host = "/".join(parts[:-2]).split("://", 1)[-1] if len(parts) >= 3 else "registry.ollama.ai"
    namespace = parts[-2] if len(parts) >= 2 else "library"
    head = f"{host}/{namespace}/" if host != "registry.ollama.ai" else "" if namespace == "library" else f"{namespace}/"
    return f"{head}{parts[-1]}:{tag or 'latest'}"


MODELS = [
    normalize(m)
    for m in os.environ.get("FAKE_OLLAMA_MODELS", "llama3.2:latest,qwen3:latest,nomic-embed-text:latest").split(",")
    if m
]
# What `/api/pull` finds at the registry, and how long one pull takes.
REGISTRY = {
    normalize(m)
    for m in os.environ.get("FAKE_OLLAMA_REGISTRY", "llama3.2,qwen3,nomic-embed-text,tinyllama,gemma3").split(",")
    if m
}
PULL_S = float(os.environ.get("FAKE_OLLAMA_PULL_S") or 0.3)


def manifest_path(model: str) -> str | None:
    """Where a pulled model's manifest lives under OLLAMA_MODELS (types/model/name.go
    Filepath: host/namespace/model/tag under manifests/)."""
    root = os.environ.get("OLLAMA_MODELS")
    if not root:
        return None
    name, _, tag = model.rpartition(":")
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return os.path.join(root, "manifests", *parts, tag)


def models_present() -> list[str]:
    """The models this instance has: FAKE_OLLAMA_MODELS plus every manifest a pull wrote to
    the models dir it shares with the fleet's other instances (Ollama reads the dir on each
    request, server/routes.go ListHandler)."""
    found = list(MODELS)
    for model in sorted(REGISTRY):
        path = manifest_path(model)
        if model not in found and path is not None and os.path.exists(path):
            found.append(model)
    return found


FAULTS = os.environ.get("FAKE_OLLAMA_FAULTS")
# llm/llama_server.go (the load's error when llama-server exits), answered 500 at once by
# server/routes.go handleScheduleError; sched.go ErrMaxQueue, answered 503.
LOAD_FAILED = "llama-server process has terminated: cudaMalloc failed: out of memory"
BUSY = "server busy, please try again.  maximum pending requests exceeded"


def cloud_model(name: str) -> bool:
    """internal/modelref/modelref.go parseSourceSuffix: a last `:cloud`, or a tag ending in
    `-cloud` (gpt-oss:120b-cloud), names a model of ollama.com."""
    _, sep, suffix = name.strip().rpartition(":")
    suffix = suffix.lower()
    return bool(sep) and "/" not in suffix and (suffix == "cloud" or suffix.endswith("-cloud"))


def fault() -> str | None:
    """The failure a test set for this instance now (FAKE_OLLAMA_FAULTS/<port>), if any."""
    if not FAULTS:
        return None
    port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rsplit(":", 1)[-1]
    try:
        with open(os.path.join(FAULTS, port)) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


THINKING = {normalize(m) for m in os.environ.get("FAKE_OLLAMA_THINKING", "qwen3").split(",") if m}
ERROR_AFTER = int(os.environ.get("FAKE_OLLAMA_ERROR_AFTER") or -1)


def embedding_only(model: str) -> bool:
    return "embed" in model  # nomic-embed-text, mxbai-embed-large, ...


def now() -> str:
    """Go's time.Time in JSON (RFC 3339, nanoseconds, trailing zeros dropped) in the
    server's local offset, as Ollama writes created_at and expires_at."""
    return rfc3339_nano(datetime.now().astimezone())


def rfc3339_nano(when: datetime) -> str:
    nanos = f"{when.microsecond:06d}{time.time_ns() % 1000:03d}".rstrip("0")
    offset = when.strftime("%z")
    offset = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{nanos}" if nanos else "") + offset


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
        self.runner: dict[str, dict] = {}  # model -> the runner options it was loaded with
        self.statuses: dict[str, int] = {}  # status code -> answers sent with it
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

    def load(self, model: str, keep_alive: float | None, options: dict | None = None) -> float:
        """Load (or refresh) a model; returns the seconds spent loading. A request whose
        runner options differ from those the model was loaded with reloads it (server/sched.go
        runnerRef.needsReload compares them with reflect.DeepEqual; num_gpu -1 matches any).
        Raises LoadFailed for a main_gpu this instance does not have (llm/llama_server.go
        passes it as --main-gpu, and llama-server exits)."""
        runner = runner_options(options or {})
        main_gpu = runner.get("main_gpu")
        if main_gpu is not None and not (isinstance(main_gpu, int) and 0 <= main_gpu < max(DEVICES, 1)):
            raise LoadFailed(f"llama-server process has terminated: main_gpu {main_gpu} is not a device of this runner")
        expiry = time.monotonic() + (self.keep_alive if keep_alive is None else keep_alive)
        with self.lock:
            self._expire()
            if model in self.loaded and self.runner.get(model) == runner:
                self.loaded[model] = expiry
                return 0.0
            self.loaded.pop(model, None)  # loaded with other runner options: reloaded
            while len(self.loaded) >= MAX_LOADED:  # evict the one expiring first
                self.loaded.pop(min(self.loaded, key=self.loaded.__getitem__))
            self.loads[model] = self.loads.get(model, 0) + 1
        time.sleep(LOAD_S)
        with self.lock:
            self.loaded[model] = expiry
            self.runner[model] = runner
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
                expires = datetime.now().astimezone() + (
                    timedelta(days=290 * 365) if left == float("inf") else timedelta(seconds=left)
                )
                result.append(
                    {
                        "name": model,
                        "model": model,
                        "size": 5_000_000_000,
                        "size_vram": 5_000_000_000,
                        "digest": "f" * 64,
                        "details": details(),
                        "expires_at": rfc3339_nano(expires),
                        "context_length": 4096,
                    }
                )
            return result


# api/types.go Runner: the options a model is loaded with, not per request.
RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap")
DEVICES = 1  # the devices this instance found (discover() sets it)


class LoadFailed(Exception):
    pass


def runner_options(options: dict) -> dict:
    runner = {k: options[k] for k in RUNNER_OPTIONS if k in options}
    if isinstance(runner.get("num_gpu"), int) and runner["num_gpu"] < 0:
        del runner["num_gpu"]  # "Don't reload runner if num_gpu=-1 was provided"
    return runner


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
                raise ValueError(f"time: invalid duration {text!r}") from None
            seconds = sign * sum(float(n) * units[u] for n, u in parts)
    return float("inf") if seconds < 0 else seconds


def details() -> dict:
    return {"format": "gguf", "family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}


def host_allowed(host_header: str) -> bool:
    """server/routes.go allowedHostsMiddleware + allowedHost: on a loopback listener, a Host
    that is an IP must be loopback, private, unspecified or one of this machine's; a name must
    be localhost, the hostname, or end in .localhost, .local or .internal."""
    host = host_header.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return ip.is_loopback or ip.is_private or ip.is_unspecified or host in local_ips()
    host = host.lower()
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def local_ips() -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return set()


def origin_allowed(origin: str) -> bool:
    """envconfig.AllowedOrigins (OLLAMA_ORIGINS, plus http(s)://localhost, 127.0.0.1 and
    0.0.0.0 on any port, app://, file://, tauri://, vscode-webview://, vscode-file://) as
    gin-contrib/cors matches them, wildcards included."""
    import fnmatch

    allowed = [o.strip() for o in os.environ.get("OLLAMA_ORIGINS", "").split(",") if o.strip()]
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        allowed += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    allowed += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
    return any(fnmatch.fnmatchcase(origin, pattern) for pattern in allowed)


ENGINE = Engine()


def clean_path(p: str) -> str:
    """net/http's ServeMux cleanPath: path.Clean, keeping a trailing slash."""
    cleaned = posixpath.normpath(p) if p else "/"
    cleaned = "/" + cleaned.lstrip("/")  # path.Clean folds a leading // as well
    if p.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-ollama"
    disable_nagle_algorithm = True  # TCP_NODELAY, as Go sets it

    # ------------------------------------------------------------ plumbing
    def send_response(self, code: int, message: str | None = None) -> None:
        with ENGINE.lock:  # every answer, by status (/_fake/stats), for tests of retries
            ENGINE.statuses[str(code)] = ENGINE.statuses.get(str(code), 0) + 1
        super().send_response(code, message)

    def log_message(self, format: str, *args: object) -> None:
        # A [GIN]-style access line, like Ollama's log.
        sys.stderr.write(f"[GIN] {datetime.now():%Y/%m/%d - %H:%M:%S} | {self.address_string()} | {format % args}\n")

    def _check_host(self) -> bool:
        """CORS first (gin-contrib/cors runs before allowedHostsMiddleware in
        GenerateRoutes): an Origin not allowed is 403, an allowed preflight is 204; then
        the Host check, which answers an allowed OPTIONS with 204 itself."""
        origin = self.headers.get("Origin")
        if origin is not None and not origin_allowed(origin):
            return self._abort(403)
        if origin is not None and self.command == "OPTIONS":
            return self._abort(
                204,
                {
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization,Content-Type,User-Agent,Accept",
                },
            )
        if self.server.loopback and not host_allowed(self.headers.get("Host", "")):
            return self._abort(403)
        if self.command == "OPTIONS":
            return self._abort(204)
        return True

    def _abort(self, status: int, headers: dict[str, str] | None = None) -> bool:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _route(self) -> bool:
        """Where Go's net/http and gin send the request. The request-target is decoded once
        (url.ParseRequestURI: /api%2Fpul%6C is /api/pull, a bad escape is 400); Ollama serves
        through http.DefaultServeMux (server/routes.go Serve: http.Handle("/", h)), which
        answers 301 to a path that is not clean (//, /./, /../); gin routes on the decoded
        URL.Path (UseRawPath off). Sets self.route."""
        # Origin-form (/path?query) as it comes: urlsplit would read //x/y as a host x.
        raw = self.path.split("?")[0] if self.path.startswith("/") else urlsplit(self.path).path
        keep, self.close_connection = self.close_connection, True  # an early answer leaves a body unread
        if re.search(r"%(?![0-9A-Fa-f]{2})", raw):
            self._send(400, b"400 Bad Request", "text/plain; charset=utf-8")
            return False
        self.route = unquote(raw)
        if clean_path(self.route) != self.route:
            return self._abort(301, {"Location": clean_path(self.route)})
        self.close_connection = keep
        return True

    def do_OPTIONS(self) -> None:
        if self._route():
            self._check_host()

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, body: object) -> None:
        self._send(status, dumps(body).encode(), "application/json; charset=utf-8")

    def _body(self) -> dict | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = self._chunked()  # Go's net/http decodes it before any handler
        else:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding") == "zstd" and self.route.startswith("/v1/"):
            # server/cloud_proxy.go cloudPassthroughMiddleware, on every /v1 inference route,
            # decompresses a zstd body before anything reads it (Codex sends them); other
            # routes and other encodings are read as they come (and are not JSON then).
            try:
                import zstandard  # not in the standard library before Python 3.14

                raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
            except Exception:  # zstandard's errors, or no zstandard at all
                self._json(400, {"error": "failed to decompress request body"})
                return None
        try:
            body = json.loads(raw or b"{}")
        except ValueError:  # not JSON, or not even UTF-8 (a gzip body Ollama does not read)
            self._json(400, {"error": "invalid request body"})
            return None
        return body if isinstance(body, dict) else {}

    def _chunked(self) -> bytes:
        data = b""
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            data += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers
            pass
        return data

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
        if not self._route() or not self._check_host():
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", "17")
        self.end_headers()

    def do_GET(self) -> None:
        if not self._route() or not self._check_host():
            return
        routes = {
            "/api/version": lambda: {"version": VERSION},
            "/api/tags": lambda: {"models": [tag(m) for m in models_present()]},
            "/api/ps": lambda: {"models": ENGINE.ps()},
            # openai/openai.go ToListCompletion (middleware.ListMiddleware over ListHandler).
            "/v1/models": lambda: {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": int(time.time()), "owned_by": "library"}
                    for m in models_present()
                ],
            },
            "/_fake/env": lambda: START_ENV,
            "/_fake/stats": lambda: {
                "peak_concurrency": ENGINE.peak,
                "loads": ENGINE.loads,
                "requests": ENGINE.requests,
                "served": ENGINE.served,
                "busy": ENGINE.busy,
                "waiting": ENGINE.waiting,
                "statuses": ENGINE.statuses,
            },
        }
        if self.route == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif self.route in routes:
            self._json(200, routes[self.route]())
        else:
            self._not_found()

    def _not_found(self) -> None:
        self._send(404, b"404 page not found", "text/plain")

    def do_POST(self) -> None:
        if not self._route() or not self._check_host():
            return
        body = self._body()
        if body is None:
            return
        path = self.route
        if path == "/api/pull":
            return self._pull(body)
        kinds = {
            "/api/generate": "generate",
            "/api/chat": "chat",
            "/v1/chat/completions": "openai-chat",
            "/v1/completions": "openai-completion",
            "/api/embed": "embed",
            "/v1/embeddings": "openai-embed",
            "/api/show": "show",
            "/v1/responses": "responses",
            "/v1/messages": "messages",
        }
        kind = kinds.get(path)
        if kind is None:
            return self._not_found()
        if cloud_model(str(body.get("model") or "")):
            return self._cloud(kind)
        model = normalize(str(body.get("model") or body.get("name") or ""))
        if model not in models_present():
            # Ollama's exact body; the OpenAI layer wraps it in its own error object.
            message = f"model '{body.get('model') or body.get('name') or ''}' not found"
            if kind.startswith("openai"):
                return self._json(
                    404, {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
                )
            return self._json(404, {"error": message})
        if kind == "show":
            capabilities = (
                ["embedding"] if embedding_only(model) else ["completion"] + (["thinking"] if model in THINKING else [])
            )
            return self._json(
                200,
                {
                    "modelfile": f"FROM {model}",
                    "parameters": "",
                    "template": "{{ .Prompt }}",
                    "details": details(),
                    "model_info": {},
                    "capabilities": capabilities,
                },
            )
        if kind in ("generate", "chat", "openai-chat", "openai-completion") and embedding_only(model):
            # server/routes.go GenerateHandler: errCapabilityCompletion.
            return self._json(
                400, {"error": f'"{body.get("model")}" does not support {"chat" if "chat" in kind else "generate"}'}
            )
        with ENGINE.lock:
            ENGINE.requests += 1
        try:
            keep_alive = parse_duration(body["keep_alive"]) if "keep_alive" in body else None
        except ValueError as exc:
            return self._json(400, {"error": str(exc)})
        failing = fault()
        if failing == "busy":
            return self._error(kind, 503, BUSY)
        if failing == "load":
            return self._error(kind, 500, LOAD_FAILED)
        if self._only_loads(kind, body):
            # An empty prompt, messages or input only loads the model: the handler answers
            # right after scheduleRunner, before any completion takes one of the runner's
            # slots (server/routes.go GenerateHandler, ChatHandler, EmbedHandler; the slot
            # is llm/llama_server.go's s.sem, acquired in Completion and Embedding).
            return self._serve(kind, model, body, keep_alive)
        if not ENGINE.acquire():
            return self._error(kind, 503, BUSY)
        try:
            self._serve(kind, model, body, keep_alive)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away: stop generating, free the slot
        finally:
            ENGINE.release()

    def _serve(self, kind: str, model: str, body: dict, keep_alive: float | None) -> None:
        """Load the model (a failed load answers 500), then answer the request."""
        try:
            load = ENGINE.load(model, keep_alive, body.get("options"))
        except LoadFailed as exc:
            return self._error(kind, 500, str(exc))
        if kind in ("embed", "openai-embed"):
            return self._embed(kind, model, body)
        if kind in ("responses", "messages"):
            return self._json(200, self._compat(kind, model, body))
        return self._generate(kind, model, body, load)

    def _cloud(self, kind: str) -> None:
        """A `:cloud` model is proxied to ollama.com (server/cloud_proxy.go
        proxyCloudRequestWithPath), unless OLLAMA_NO_CLOUD: 403, internal/cloud/policy.go
        DisabledError with routes.go cloudErrRemoteInferenceUnavailable. This fake has no
        ollama.com to reach: 502, so that a test sees the request would have left."""
        if os.environ.get("OLLAMA_NO_CLOUD", "").strip().lower() in ("1", "true", "t", "yes"):
            return self._json(403, {"error": "ollama cloud is disabled: remote model is unavailable"})
        return self._error(kind, 502, "the fake cannot reach ollama.com (a real Ollama would send it there)")

    @staticmethod
    def _only_loads(kind: str, body: dict) -> bool:
        if kind == "generate":
            return not body.get("prompt") and not body.get("images")
        if kind == "chat":
            return not body.get("messages")
        return kind == "embed" and not body.get("input")

    def _error(self, kind: str, status: int, message: str) -> None:
        """Ollama's {"error"} body; its OpenAI layer wraps it in its own error object
        (openai/openai.go NewError)."""
        if kind.startswith("openai"):
            return self._json(status, {"error": {"message": message, "type": "api_error", "param": None, "code": None}})
        return self._json(status, {"error": message})

    def _pull(self, body: dict) -> None:
        """server/routes.go PullHandler + server/images.go PullModel: NDJSON progress
        ("pulling manifest", "pulling <digest[7:19]>" with total/completed as
        server/download.go reports them, "verifying sha256 digest", "writing manifest",
        "success"), or one {"error"} line when the registry has no such model. With
        "stream": false, only the last line (waitForStream)."""
        requested = str(body.get("model") or body.get("name") or "")
        if not requested:
            return self._json(400, {"error": "model is required"})
        model = normalize(requested)
        digest = "sha256:" + hashlib.sha256(model.encode()).hexdigest()
        total = 4_000_000
        if model in REGISTRY:
            lines: list[dict] = [{"status": "pulling manifest"}]
            lines += [
                {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total, "completed": total * k // 4}
                for k in range(1, 5)
            ]
            lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        else:
            lines = [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
        if body.get("stream") is False:
            last = lines[-1]
            return self._json(500 if "error" in last else 200, last)
        self._start_stream("application/x-ndjson")
        for line in lines:
            if line.get("status") == "writing manifest":
                path = manifest_path(model)
                if path is not None:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "w") as fh:
                        json.dump({"schemaVersion": 2, "layers": [{"digest": digest, "size": total}]}, fh)
            self._chunk(dumps(line).encode() + b"\n")
            self.wfile.flush()
            time.sleep(PULL_S / len(lines))
        self._end_stream()

    def _compat(self, kind: str, model: str, body: dict) -> dict:
        """/v1/responses (OpenAI Responses) and /v1/messages (Anthropic Messages), not
        streamed: enough of their shape for routing tests (openai/responses.go,
        anthropic/anthropic.go)."""
        count = int(body.get("max_output_tokens") or body.get("max_tokens") or TOKENS)
        for _ in range(count):
            time.sleep(ENGINE.token_time())
        text = "".join(f"tok{i} " for i in range(count))
        if kind == "responses":
            return {
                "id": "resp_1",
                "object": "response",
                "model": model,
                "status": "completed",
                "output": [
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
                ],
                "usage": {"input_tokens": 10, "output_tokens": count, "total_tokens": 10 + count},
            }
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": count},
        }

    def _embed(self, kind: str, model: str, body: dict) -> None:
        # server/routes.go EmbedHandler: an empty string is no input at all (the model is
        # loaded, nothing is embedded), a list is taken as it is.
        inputs = body.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs] if inputs else []
        vectors = [[0.1, 0.2, 0.3] for _ in inputs]
        if kind == "embed":
            return self._json(200, {"model": model, "embeddings": vectors})
        self._json(
            200,
            {
                "object": "list",
                "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            },
        )

    def _generate(self, kind: str, model: str, body: dict, load: float) -> None:
        options = body.get("options") or {}
        count = int(options.get("num_predict") or body.get("max_tokens") or TOKENS)
        # An empty prompt only loads the model, or with keep_alive 0 unloads it
        # (server/routes.go GenerateHandler / ChatHandler: done_reason "load" / "unload").
        reason = "unload" if "keep_alive" in body and parse_duration(body["keep_alive"]) == 0 else "load"
        if reason == "unload":
            with ENGINE.lock:
                ENGINE.loaded.pop(model, None)
        if kind == "generate" and not body.get("prompt") and not body.get("images"):
            return self._json(
                200, {"model": model, "created_at": now(), "response": "", "done": True, "done_reason": reason}
            )
        if kind == "chat" and not body.get("messages"):
            return self._json(
                200,
                {
                    "model": model,
                    "created_at": now(),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": reason,
                },
            )
        openai = kind.startswith("openai")
        stream = bool(body.get("stream", not openai))  # Ollama streams by default, OpenAI does not
        started = time.monotonic()
        if stream:
            self._start_stream("text/event-stream" if openai else "application/x-ndjson")
        text: list[str] = []
        thought: list[str] = []
        # Thinking models think first by default (GenerateHandler: req.Think defaults to
        # true with CapabilityThinking): the reasoning streams in `thinking` (OpenAI:
        # `reasoning`) with empty content, then the answer.
        thinks = model in THINKING and body.get("think", True) not in (False, "false")
        thoughts = count // 2 if thinks else 0
        for i in range(count):
            time.sleep(ENGINE.token_time())
            if stream and i == ERROR_AFTER:
                # An error mid-stream is one more NDJSON line {"error": ...} (routes.go
                # streamResponse), then the stream ends.
                message = "an error was encountered while running the model: unexpected EOF"
                line = {"error": {"message": message}} if openai else {"error": message}
                self._chunk((b"data: " if openai else b"") + dumps(line).encode() + (b"\n\n" if openai else b"\n"))
                return self._end_stream()
            token = f"tok{i} "
            (text if i >= thoughts else thought).append(token)
            if stream:
                self._chunk(self._piece(kind, model, token, thinking=i < thoughts))
        elapsed = time.monotonic() - started
        final = self._final(kind, model, "".join(text), count, elapsed, load, stream, "".join(thought))
        if stream:
            self._chunk(final)
            if openai:
                self._chunk(b"data: [DONE]\n\n")
            self._end_stream()
        else:
            self._send(200, final, "application/json; charset=utf-8")

    def _piece(self, kind: str, model: str, token: str, thinking: bool = False) -> bytes:
        content, thought = ("", token) if thinking else (token, None)
        if kind == "generate":
            piece = {"model": model, "created_at": now(), "response": content, "done": False}
            if thought:
                piece["thinking"] = thought
            return dumps(piece).encode() + b"\n"
        if kind == "chat":
            message = {"role": "assistant", "content": content}
            if thought:
                message["thinking"] = thought
            return dumps({"model": model, "created_at": now(), "message": message, "done": False}).encode() + b"\n"
        if kind == "openai-chat":
            delta = {"role": "assistant", "content": content}
            if thought:
                delta["reasoning"] = thought
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": token, "finish_reason": None}
            obj = "text_completion"
        return b"data: " + dumps(openai_body(obj, model, choice)).encode() + b"\n\n"

    def _final(
        self, kind: str, model: str, text: str, count: int, elapsed: float, load: float, stream: bool, thought: str = ""
    ) -> bytes:
        if kind in ("generate", "chat"):
            final = {
                "model": model,
                "created_at": now(),
                "done": True,
                "done_reason": "stop",
                "total_duration": int((elapsed + load) * 1e9),
                "load_duration": int(load * 1e9),
                "prompt_eval_count": 10,
                "prompt_eval_duration": 1_000_000,
                "eval_count": count,
                "eval_duration": int(elapsed * 1e9),
            }
            content = "" if stream else text
            if kind == "generate":
                final["response"] = content
                if thought and not stream:
                    final["thinking"] = thought
            else:
                final["message"] = {"role": "assistant", "content": content}
                if thought and not stream:
                    final["message"]["thinking"] = thought
            return dumps(final).encode() + (b"\n" if stream else b"")
        usage = {"prompt_tokens": 10, "completion_tokens": count, "total_tokens": 10 + count}
        if kind == "openai-chat":
            choice = (
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
                if stream
                else {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, **({"reasoning": thought} if thought else {})},
                    "finish_reason": "stop",
                }
            )
            obj = "chat.completion.chunk" if stream else "chat.completion"
        else:
            choice = {"index": 0, "text": "" if stream else text, "finish_reason": "stop"}
            obj = "text_completion"
        body = openai_body(obj, model, choice)
        if not stream:
            body["usage"] = usage
            return dumps(body).encode()
        return b"data: " + dumps(body).encode() + b"\n\n"


def openai_body(obj: str, model: str, choice: dict) -> dict:
    """The envelope of every OpenAI-compatible answer and chunk (openai/openai.go)."""
    return {
        "id": "chatcmpl-1",
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
    }


def tag(model: str) -> dict:
    return {
        "name": model,
        "model": model,
        "modified_at": now(),
        "size": 5_000_000_000,
        "digest": "f" * 64,
        "details": details(),
    }


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


def log(msg: str, **attrs: object) -> None:
    """One line as Ollama's slog text handler writes it: key=value, quoted where needed."""

    def value(v: object) -> str:
        text = str(v)
        return json.dumps(text) if (not text or any(c in text for c in ' ="\\')) else text

    fields = "".join(f" {k}={value(v)}" for k, v in attrs.items())
    sys.stderr.write(f"time={now()} level=INFO source=fake_ollama.py msg={value(msg)}{fields}\n")
    sys.stderr.flush()


def box_gpus() -> list[tuple[str, str]]:
    """The box's GPUs as (UUID, PCI id), numbered as tests/fakes/pynvml.py numbers them."""
    count = int(os.environ.get("FAKE_OLLAMA_GPUS") or 8)
    return [(f"GPU-{i:08x}-1111-2222-3333-444444444444", f"0000:{0x10 + i:02x}:00.0") for i in range(count)]


def discover() -> None:
    """discover/runner.go GPUDevices + discover/types.go LogDetails: one "inference compute"
    line per device it will use. CUDA sees only CUDA_VISIBLE_DEVICES (by UUID or index), and
    remapFilterIDForUserVisibleDevices puts the pin token in filter_id. Vulkan, on by default
    since v0.30 (envconfig.EnableVulkan), ignores it and finds every GPU; the Vulkan copy of a
    GPU CUDA already has is dropped (ml.SameBackendDevice), the others stay: the leak of
    ollama/ollama#16508. No device at all: one `id=cpu library=cpu` line."""
    gpus = box_gpus()
    tokens = [t.strip() for t in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if t.strip()]
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        tokens = [uuid for uuid, _ in gpus]
    cuda = []
    for token in tokens:
        found = [g for k, g in enumerate(gpus) if token in (g[0], str(k))]
        cuda += [(token, *found[0])] if found else []
    if os.environ.get("FAKE_OLLAMA_NO_CUDA") == "1":
        cuda = []
    vulkan_on = os.environ.get("OLLAMA_VULKAN", "").strip().lower() not in ("0", "false", "f")
    own = {pci for _, _, pci in cuda}
    vulkan = [(k, pci) for k, (_, pci) in enumerate(gpus) if vulkan_on and pci not in own]
    # (library, compute, libdirs, driver, total, available) as each backend reports a 4090.
    backends = {
        "CUDA": ("8.9", "ollama,cuda_v13", "13.0", "23.5 GiB", "23.1 GiB"),
        "Vulkan": ("0.0", "ollama,vulkan", "0.0", "24.0 GiB", "23.6 GiB"),
    }
    found = [("CUDA", token, pci) for token, _uuid, pci in cuda] + [("Vulkan", k, pci) for k, pci in vulkan]
    global DEVICES
    DEVICES = len(found)
    for library in backends:
        for n, (_lib, filter_id, pci) in enumerate(d for d in found if d[0] == library):
            compute, libdirs, driver, total, available = backends[library]
            log(
                "inference compute",
                id=n,
                filter_id=filter_id,
                library=library,
                compute=compute,
                name=f"{library}{n}",
                description="NVIDIA GeForce RTX 4090",
                libdirs=libdirs,
                driver=driver,
                pci_id=pci,
                type="discrete",
                total=total,
                available=available,
            )
    if not cuda and not vulkan:
        log(
            "inference compute",
            id="cpu",
            library="cpu",
            compute="",
            name="cpu",
            description="cpu",
            libdirs="ollama",
            driver="",
            pci_id="",
            type="",
            total="62.7 GiB",
            available="60.1 GiB",
        )


def initialize_keypair() -> str | None:
    """cmd/cmd.go initializeKeypair, before it listens: $HOME/.ollama/id_ed25519 is created
    when missing (the dir 0755, the key 0600); any failure is returned and ends the server.
    (Go's os.UserHomeDir: $HOME, else "$HOME is not defined".)"""
    home = os.environ.get("HOME")
    if not home:
        return "$HOME is not defined"
    key = os.path.join(home, ".ollama", "id_ed25519")
    if os.path.exists(key):
        return None
    print(f"Couldn't find '{key}'. Generating new private key.", flush=True)
    try:
        os.makedirs(os.path.dirname(key), mode=0o755, exist_ok=True)
    except OSError as exc:
        return f"could not create directory mkdir {os.path.dirname(key)}: {exc.strerror.lower()}"
    try:
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n")
        with open(key + ".pub", "w") as fh:
            fh.write("ssh-ed25519 AAAAfake\n")
    except OSError as exc:
        return f"open {key}: {exc.strerror.lower()}"
    return None


def main(argv: list[str]) -> int:
    if argv[1:2] != ["serve"]:
        sys.stderr.write("usage: fake_ollama.py serve\n")
        return 1
    # SIGTERM: Ollama closes every connection at once (no drain) and exits 0.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if (error := initialize_keypair()) is not None:
        sys.stderr.write(f"Error: {error}\n")  # cobra prints the error; ollama exits 1
        return 1
    host, port = address()
    try:
        # server/routes.go Serve: it binds first, logs "Listening on", then discovers the
        # GPUs (up to 30 s per library) and only then serves: a request sent meanwhile
        # waits in the listen backlog instead of being refused.
        server = Server((host, port), Handler)
    except OSError as exc:
        sys.stderr.write(f"Error: listen tcp {host}:{port}: bind: {exc.strerror.lower()}\n")
        return 1
    server.loopback = ipaddress.ip_address(host).is_loopback if host != "localhost" else True
    log(f"Listening on {host}:{port} (version {VERSION})")
    # The discovery time counts from exec, like a real server's: this interpreter's own
    # start-up is part of it rather than added to it.
    time.sleep(max(0.0, float(os.environ.get("FAKE_OLLAMA_STARTUP_S", "0")) - process_age()))
    discover()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
