"""The HAProxy engine: a complete haproxy.cfg that queues requests at the gateway (maxconn
per server = the instance's slots), checks instances actively, and exposes a runtime API
and a Prometheus exporter. `up` runs it in master-worker mode, so a reload keeps the pid."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from ollama_fleet.errors import BadInput, UserError
from ollama_fleet.gateway import GatewayStats, InstallLayout, KeyStats, ServerStats
from ollama_fleet.gateway.spec import REDACTED, GatewaySpec, Tls
from ollama_fleet.keys import queue_context
from ollama_fleet.processes import require_tool, run_tool, wait_took_over, with_log_tail, workers
from ollama_fleet.render import RenderedFile, render
from ollama_fleet.state import open_log, read_gateway
from ollama_fleet.waiting import wait_until

PID_FILE = "haproxy.pid"
ACCESS_LOG = "access.log"  # its stdout under `up`: one JSON line per request
# Under systemd: its own config and unit, not the distribution's haproxy.service (whose
# default config has 50 s timeouts that would cut long generations).
INSTALLED_CONFIG = Path("/etc/ollama-fleet/haproxy.cfg")
UNIT = "ollama-fleet-gateway.service"
UNIT_FILE = Path("/etc/systemd/system") / UNIT
RUN_DIR = Path("/run/ollama-fleet")  # the unit's RuntimeDirectory=: pid file, admin socket
SOCKET = "admin.sock"
SOCKET_MAX = 100  # sun_path holds 108 bytes; leave room
BACKEND = "ollama_fleet"
# The requests whose JSON body names a model: the ones placement routes.
# (ollama/ollama server/routes.go GenerateRoutes; /api/show is metadata and goes elsewhere.)
MODEL_PATHS = (
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
)
# Requests that write the shared models dir (and /api/blobs/<digest>): the writer's alone.
WRITES = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def body_bytes(size: str) -> int:
    """nginx's size syntax (100m, 512k, 1g, 1000), as HAProxy compares Content-Length."""
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", size).groups()  # type: ignore[union-attr]
    return int(number) * _UNITS[unit.lower()]


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    return run_tool(argv, what, ("[ALERT]",))


class Haproxy:
    name = "haproxy"
    always_complete = True
    check_command = "haproxy -c"
    drains_installed = True  # its runtime API, in RUN_DIR
    logs_requests = True  # its log-format: access.log under `up`, the unit's journal under systemd

    def ports(self, spec: GatewaySpec) -> dict[str, tuple[str, int]]:
        return {"listen": (spec.listen.host, spec.listen.port), "metrics_port": ("127.0.0.1", spec.metrics_port)}

    def install_layout(self, spec: GatewaySpec) -> InstallLayout:
        content = self.render(spec, standalone=True, prefix=RUN_DIR, user=installed_worker())
        self.check(content, standalone=True)
        unit = render(
            "haproxy/ollama-fleet-gateway.service.j2", haproxy=require_tool("haproxy"), config=INSTALLED_CONFIG
        )
        return InstallLayout(
            files=(RenderedFile(INSTALLED_CONFIG, content, spec.file_mode), RenderedFile(UNIT_FILE, unit)),
            unit=UNIT,
            owned=True,
            # try-: a gateway this install is about to start is started by `enable --now` instead.
            reloads={str(INSTALLED_CONFIG): ("try-reload-or-restart", UNIT), str(UNIT_FILE): ("try-restart", UNIT)},
            runtime_dir=RUN_DIR,
        )

    def render(
        self,
        spec: GatewaySpec,
        *,
        standalone: bool = True,
        prefix: Path,
        user: tuple[str, str] | None = None,
        config: Path | None = None,
    ) -> str:
        """Always a complete haproxy.cfg (`standalone` is accepted for symmetry with nginx);
        `prefix` holds its pid file and admin socket."""
        check_inputs(prefix, spec.tls)
        return render(
            "haproxy/haproxy.cfg.j2",
            instances=spec.instances,
            listen=str(spec.listen),
            allow=spec.allow,
            hosts=spec.hosts,
            writes=WRITES,
            api_keys=spec.api_keys,
            **queue_context(spec.api_keys, spec.read_timeout),
            balance=spec.balance,
            read_timeout=spec.read_timeout,
            max_body_bytes=body_bytes(spec.max_body_size),
            tls=spec.tls,
            metrics_port=spec.metrics_port,
            models=spec.models,
            check=spec.check,
            info=spec.info,
            model_paths=MODEL_PATHS,
            prefix=prefix,
            config=config,
            user=user[0] if user else None,
            group=user[1] if user else None,
        )

    def prepare(self, prefix: Path) -> None:
        """The directory of the pid file and the admin socket (the socket itself is 0600)."""
        prefix.mkdir(mode=0o755, parents=True, exist_ok=True)

    def redact(self, text: str) -> str:
        text = re.sub(r'(var\(txn\.bearer\) -m str )"[^"]*"', rf'\1"{REDACTED}"', text)
        return re.sub(r'"Bearer [^"]*"', f'"Bearer {REDACTED}"', text)

    def check(self, content: str, *, standalone: bool = True, prefix: Path | None = None) -> None:
        """`haproxy -c`: parses the whole config, binds nothing."""
        haproxy = require_tool("haproxy")
        with tempfile.NamedTemporaryFile("w", prefix="ollama-fleet-check-", suffix=".cfg") as fh:
            fh.write(content)
            fh.flush()
            _run([haproxy, "-c", "-f", fh.name], "haproxy -c")  # no -q: it would silence the [ALERT]s

    def start(self, prefix: Path, config: Path) -> int:
        """Start HAProxy in its own session with its stdout (the request log `usage` reads)
        appended to `prefix`/access.log: under `-D` it would write its log nowhere."""
        self.prepare(prefix)
        (prefix / PID_FILE).unlink(missing_ok=True)
        log = prefix / ACCESS_LOG
        # -W: master-worker, so a reload (SIGUSR2 to the master) keeps the master's pid and
        # old workers finish their streams. The config's pidfile holds the master.
        with os.fdopen(open_log(log), "ab") as out:
            proc = subprocess.Popen(
                [require_tool("haproxy"), "-W", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        wait_until(lambda: self.running(prefix) is not None or proc.poll() is not None, 10)
        pid = self.running(prefix)
        if proc.poll() is not None or pid is None:
            raise UserError(with_log_tail(f"haproxy did not start (exit {proc.poll()})", log))
        return pid

    def reload(self, prefix: Path, config: Path) -> None:
        """SIGUSR2 to the master, which re-reads `config` (checked before we got here) and
        starts a new worker; returns once that worker listens and the old ones do not, so
        the next request meets the new config (a request sent a moment after the signal
        still met the old keys)."""
        pid = self.running(prefix)
        if pid is None:
            raise UserError(f"cannot reload haproxy: no pid file in {prefix}")
        before = {w.pid for w in workers(pid)}
        os.kill(pid, signal.SIGUSR2)
        wait_took_over(pid, before, "haproxy", prefix / ACCESS_LOG)

    def running(self, prefix: Path) -> int | None:
        try:
            return int((prefix / PID_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stats(self, prefix: Path) -> GatewayStats | None:
        """The backend's queue and, per instance, its state and requests in flight; None when
        HAProxy does not answer. Raises UserError when this user may not use its socket."""
        sock = prefix / SOCKET
        check_access(sock)
        try:
            # The backends that generate: the main one and one per placed model, each of
            # which checks its instances by loading its own model.
            rows = [row for row in stat_rows(sock) if _generates(row.get("pxname", ""))]
        except UserError:
            return None
        servers: dict[str, ServerStats] = {}
        for row in rows:
            if row["svname"] in ("FRONTEND", "BACKEND"):
                continue
            seen = servers.get(row["svname"])
            down = row["status"].startswith("DOWN")
            servers[row["svname"]] = ServerStats(
                # The main backend's state, unless a model's backend took it out.
                state=row["status"] if seen is None or down else seen.state,
                queued=int(row["qcur"] or 0) + (seen.queued if seen else 0),
                in_flight=int(row["scur"] or 0) + (seen.in_flight if seen else 0),
                check=_check_text(row) if down else seen.check if seen else None,
            )
        # Requests not yet given to a server wait in the backend's queue (leastconn picks
        # the first server with a free slot).
        queued = sum(int(row["qcur"] or 0) for row in rows if row["svname"] == "BACKEND")
        return GatewayStats(queued=queued, servers=servers, keys=key_stats(sock))

    def drain(self, state_dir: Path, name: str, timeout: float) -> int:
        """`set server <backend>/<name> state drain` in every backend that has it: no new
        request, the ones it serves go on. Wait until none is left (in flight or queued)."""
        sock = _socket(state_dir)
        for backend in _rows_of(sock, name):
            _set(sock, f"set server {backend}/{name} state drain")
        wait_until(lambda: not _busy(sock, name), timeout)
        return _busy(sock, name)

    def undrain(self, state_dir: Path, name: str, timeout: float) -> None:
        """Back to `ready`, with its weight (a drain the front keeps across reloads is
        `weight 0` in its config); wait until its health check has it UP in every backend."""
        sock = _socket(state_dir)
        for backend in _rows_of(sock, name):
            _set(sock, f"set server {backend}/{name} state ready")
            _set(sock, f"set weight {backend}/{name} 1")
        # "no check": the writer's backend, whose pulls need no GPU, checks nothing.
        if not wait_until(lambda: all(s in ("UP", "no check") for s in _rows_of(sock, name).values()), timeout):
            raise UserError(f"{name} is not UP at HAProxy {timeout:g}s after it was sent requests again")


def _generates(backend: str) -> bool:
    return backend == BACKEND or backend.startswith(f"{BACKEND}_model")


def _check_text(row: dict[str, str]) -> str:
    """What `show stat` says of a server's last health check: `L7STS` and the status an
    instance answered (500 from a GPU that cannot load), or `L4CON` (refused), `L4TOUT` ..."""
    status, code, desc = row.get("check_status", ""), row.get("check_code", ""), row.get("check_desc", "")
    said = " ".join(part for part in (status.lstrip("* "), code) if part) or "no check result"
    return f"its health check: {said}" + (f" ({desc})" if desc else "")


def check_inputs(prefix: Path, tls: Tls | None) -> None:
    """What HAProxy cannot take, in a box gateway's config or the front's: an admin socket
    path past the Unix limit, a TLS key it cannot find."""
    sock = prefix / SOCKET
    if len(str(sock)) > SOCKET_MAX:
        raise BadInput(
            f"prefix: the admin socket path {sock} is longer than {SOCKET_MAX} bytes (a Unix socket limit); "
            "choose a shorter --state-dir or --prefix"
        )
    if tls is not None and tls.key not in (tls.cert, Path(f"{tls.cert}.key")):
        raise BadInput(
            f"tls_key: HAProxy reads the key from the certificate file or from {tls.cert}.key; "
            "put both in one PEM (cat cert key > both.pem) and pass it as --tls-cert and --tls-key"
        )


def _socket(state_dir: Path) -> Path:
    """The admin socket: in `state_dir` itself (a systemd gateway's /run/ollama-fleet), else
    under the prefix `up` recorded in the state dir."""
    if (state_dir / SOCKET).exists():
        return state_dir / SOCKET
    state = read_gateway(state_dir)
    prefix = state.prefix if state and state.prefix else state_dir / "gateway"
    return prefix / SOCKET


def check_access(sock: Path) -> None:
    """The runtime API is root's (0600) when root started HAProxy (a box gateway or the front)."""
    if sock.exists() and not os.access(sock, os.R_OK | os.W_OK):
        raise UserError(
            f"HAProxy's admin socket {sock} is mode 0600, root's: run this as root to see and steer its "
            "queue (drain, per-server state)"
        )


def stat_rows(sock: Path) -> list[dict[str, str]]:
    check_access(sock)
    text = runtime_command(sock, "show stat")
    if text is None:
        raise UserError(f"HAProxy's runtime API does not answer on {sock}")
    return list(csv.DictReader(io.StringIO(text.lstrip("# "))))


def _rows_of(sock: Path, name: str) -> dict[str, str]:
    """backend -> the server's status, for every backend that has this server."""
    return {row["pxname"]: row["status"] for row in stat_rows(sock) if row.get("svname") == name}


def _busy(sock: Path, name: str) -> int:
    return sum(int(row["scur"] or 0) + int(row["qcur"] or 0) for row in stat_rows(sock) if row.get("svname") == name)


def _set(sock: Path, command: str) -> None:
    answer = runtime_command(sock, command)
    if answer is None or answer.strip():  # HAProxy answers a good `set server` with nothing
        raise UserError(f"HAProxy refused `{command}`: {(answer or 'no answer').strip()}")


def _table(sock: Path, name: str) -> dict[str, dict[str, int]]:
    """`show table NAME`: entry key -> its counters (`use` is how many requests track it now).
    Lines look like `0x55d2...: key=alice use=2 exp=86399000 http_req_cnt=4 gpc0=0`."""
    entries = {}
    for line in (runtime_command(sock, f"show table {name}") or "").splitlines():
        if line.startswith("#") or ": key=" not in line:
            continue
        fields = dict(item.split("=", 1) for item in line.split(": ", 1)[1].split() if "=" in item)
        entries[fields.pop("key")] = {k: int(v) for k, v in fields.items() if v.lstrip("-").isdigit()}
    return entries


def key_stats(sock: Path) -> dict[str, KeyStats]:
    """Per key name: requests, in flight, queued, 429s, bytes out (named keys' stick tables;
    empty without keys). Queued is "tracked at the frontend" minus "being answered"."""
    answering = _table(sock, "ollama_fleet_answering")
    found = {}
    for name, counts in _table(sock, "ollama_fleet_keys").items():
        busy = counts.get("use", 0)
        running = min(busy, answering.get(name, {}).get("use", 0))
        found[name] = KeyStats(
            requests=counts.get("http_req_cnt", 0),
            in_flight=running,
            queued=busy - running,
            rejected=counts.get("gpc0", 0),
            bytes_out=counts.get("bytes_out_cnt", 0),
        )
    return found


def runtime_command(sock: Path, command: str, timeout: float = 2.0) -> str | None:
    """One command on HAProxy's runtime API; None when the socket does not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(sock))
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    except OSError:
        return None


def installed_worker() -> tuple[str, str]:
    """Who the installed gateway's workers run as: the `haproxy` user the distribution's
    package creates, else nobody."""
    import grp
    import pwd

    for name in ("haproxy", "nobody"):
        try:
            account = pwd.getpwnam(name)
            return account.pw_name, grp.getgrgid(account.pw_gid).gr_name
        except KeyError:
            continue
    return "nobody", "nogroup"
