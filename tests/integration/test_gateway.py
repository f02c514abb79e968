"""The gateway, proved with real nginx and HAProxy processes in front of fake Ollama
instances: the behaviour both engines share runs against each."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import ollama
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import ollama_fleet
from ollama_fleet.cli import app
from ollama_fleet.config import load_config
from ollama_fleet.errors import BadInput
from ollama_fleet.gateway.haproxy import Haproxy
from ollama_fleet.gateway.nginx import Nginx
from ollama_fleet.gateway.spec import spec_from
from ollama_fleet.gpus import Discovery, Gpu
from ollama_fleet.plan import ModelsDir, plan
from tests.helpers import (
    Gateway,
    free_port_range,
    gateway_up,
    refused_source,
    require_tool,
    start_instances,
    stop,
    subprocess_env,
    wait_answering,
)

ENGINES = ["nginx", "haproxy"]


@pytest.fixture(scope="module", params=ENGINES)
def four(request):
    """Four fake instances (slow enough that streams overlap) behind one gateway of each engine."""
    base, procs = start_instances(4, FAKE_OLLAMA_TPS="20", FAKE_OLLAMA_TOKENS="10")
    gateway = Gateway(base, 4, "--server-name", "llm.example.com", engine=request.param)
    yield gateway
    gateway.close()
    stop(procs)


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


def test_least_conn_spreads_8_long_streams_2_per_instance(four) -> None:
    seen: list[str] = []
    barrier = threading.Barrier(8)

    def stream() -> None:
        barrier.wait()
        body = {"model": "qwen3", "prompt": "x", "options": {"num_predict": 40}}
        with httpx.stream("POST", four.url + "/api/generate", json=body, timeout=30) as response:
            assert response.status_code == 200
            seen.append(response.headers["x-fleet-instance"])
            for _ in response.iter_lines():
                pass

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(seen) == {"gpu0": 2, "gpu1": 2, "gpu2": 2, "gpu3": 2}


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_ndjson_lines_arrive_within_50ms_of_being_sent(four, path: str) -> None:
    body = {"model": "qwen3", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}
    lags = []
    with httpx.stream("POST", four.url + path, json=body, timeout=30) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        for line in response.iter_lines():
            arrived = time.time()
            sent = datetime.fromisoformat(json.loads(line)["created_at"].replace("Z", "+00:00")).timestamp()
            lags.append(arrived - sent)
    assert len(lags) == 11
    assert max(lags) < 0.05, lags


def test_sse_events_arrive_as_they_are_generated(four) -> None:
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "x"}], "stream": True}
    arrivals = []
    with httpx.stream("POST", four.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            if line:
                arrivals.append(time.monotonic())
    # 10 tokens at 20/s: one event every 50 ms. Buffering would deliver them in a burst.
    gaps = [b - a for a, b in itertools.pairwise(arrivals[:10])]
    assert min(gaps) > 0.02, gaps


def test_a_server_name_reaches_an_instance_that_checks_hosts_and_a_rebinding_name_does_not(four) -> None:
    response = httpx.get(four.url + "/api/version", headers={"Host": "llm.example.com"})
    assert response.status_code == 200
    assert response.json() == {"version": "0.33.0"}
    # DNS rebinding: a hostile page whose name now resolves here. Ollama itself answers 403
    # to it on loopback; the gateway, which sends Ollama `Host: localhost`, must as well.
    for host in ("rebind.attacker.example", "llm.example.com.attacker.example", "localhost.attacker.example"):
        response = httpx.get(four.url + "/api/tags", headers={"Host": host})
        assert response.status_code == 403, host
    for host in ("localhost", "LOCALHOST:8080", "ollama.internal", "box.local", "10.1.2.3:80", "[::1]:8080"):
        assert httpx.get(four.url + "/api/version", headers={"Host": host}).status_code == 200, host


def test_model_writing_paths_go_to_the_first_instance(four) -> None:
    for _ in range(4):
        response = httpx.post(four.url + "/api/pull", json={"model": "qwen3"})
        assert response.headers["x-fleet-instance"] == "gpu0"


def test_official_ollama_client_through_the_gateway(four) -> None:
    client = ollama.Client(host=four.url)
    assert "qwen3:latest" in [m.model for m in client.list().models]
    answer = client.generate(model="qwen3", prompt="hi")  # qwen3 thinks first, as Ollama's does
    assert answer.thinking == "tok0 tok1 tok2 tok3 tok4 " and answer.response.startswith("tok5")
    parts = [
        part.message.content
        for part in client.chat(model="llama3.2", messages=[{"role": "user", "content": "x"}], stream=True)
    ]
    assert "".join(parts).startswith("tok0 tok1")
    assert client.embed(model="nomic-embed-text", input="x").embeddings == [[0.1, 0.2, 0.3]]


def test_allowlist_forbids_other_clients(engine: str) -> None:
    base, procs = start_instances(1)
    gateway = Gateway(base, 1, engine=engine)  # only loopback 127.0.0.1 and ::1 allowed
    try:
        assert httpx.get(gateway.url + "/api/version").status_code == 200
        refused_source(gateway.url + "/api/version", engine)
    finally:
        gateway.close()
        stop(procs)


def test_api_keys(tmp_path: Path, engine: str) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nsk-fleet-0123456789\n\nsk-other-9876543210  # ci\n")
    base, procs = start_instances(1)
    gateway = Gateway(base, 1, "--api-keys-file", str(keys), engine=engine)
    try:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key-123"},
            {"Authorization": "sk-fleet-0123456789"},
            {"Authorization": "Bearer SK-FLEET-0123456789"},
            {"Authorization": "Bearer sk-fleet-0123456789x"},
        ):
            response = httpx.get(gateway.url + "/api/tags", headers=headers)
            assert response.status_code == 401
            assert "error" in response.json()
        with httpx.stream(
            "POST",
            gateway.url + "/api/generate",
            json={"model": "qwen3", "prompt": "x"},
            headers={"Authorization": "Bearer sk-other-9876543210"},
        ) as response:
            assert response.status_code == 200
            assert json.loads(list(response.iter_lines())[-1])["done"] is True
        assert oct(gateway.conf.stat().st_mode & 0o777) == "0o640"
    finally:
        gateway.close()
        stop(procs)


def test_a_cors_preflight_passes_without_a_key_to_ollamas_own_rules(tmp_path: Path, engine: str) -> None:
    """A browser sends OPTIONS without Authorization before a keyed request: the gateway lets
    it through, and Ollama answers it from OLLAMA_ORIGINS (204 for an allowed origin, 403
    for any other). Only OPTIONS passes without a key."""
    keys = tmp_path / "keys"
    keys.write_text("sk-fleet-0123456789\n")
    base, procs = start_instances(2, OLLAMA_ORIGINS="https://chat.example.com")
    gateway = Gateway(base, 2, "--api-keys-file", str(keys), engine=engine)
    try:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        allowed = httpx.options(gateway.url + "/api/chat", headers={"Origin": "https://chat.example.com", **preflight})
        assert allowed.status_code == 204, allowed.text
        assert allowed.headers["access-control-allow-origin"] == "https://chat.example.com"
        other = httpx.options(gateway.url + "/api/chat", headers={"Origin": "https://evil.example", **preflight})
        assert other.status_code == 403
        assert (
            httpx.post(
                gateway.url + "/api/chat",
                headers={"Origin": "https://chat.example.com"},
                json={"model": "llama3.2", "messages": []},
            ).status_code
            == 401
        )
    finally:
        gateway.close()
        stop(procs)


def test_keys_never_reach_stdout(tmp_path: Path, nvml, engine: str) -> None:
    nvml(2)
    keys = tmp_path / "keys"
    keys.write_text("sk-secret-0123456789\n")
    result = CliRunner().invoke(app, [f"render-{engine}", "--api-keys-file", str(keys)])
    assert result.exit_code == 0, result.output
    assert "sk-secret" not in result.output
    assert "<redacted>" in result.stdout


def test_a_killed_instance_costs_no_request(engine: str) -> None:
    base, procs = start_instances(3, FAKE_OLLAMA_TOKENS="2", FAKE_OLLAMA_TPS="1000")
    gateway = Gateway(base, 3, engine=engine)
    try:
        procs[1].kill()
        procs[1].wait()
        with httpx.Client(timeout=10) as client:
            statuses = [
                client.post(
                    gateway.url + "/api/generate", json={"model": "qwen3", "prompt": "x", "stream": False}
                ).status_code
                for _ in range(100)
            ]
        assert statuses == [200] * 100
    finally:
        gateway.close()
        stop(procs)


# ------------------------------------------------------------------ every accepted config is valid nginx

networks = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}"),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    count=st.integers(1, 8),
    per=st.integers(1, 2),
    base_port=st.integers(1024, 60000),
    listen=st.one_of(st.integers(1, 65535).map(str), st.integers(1, 65535).map(lambda p: f"[::]:{p}")),
    allow=st.lists(networks, max_size=4),
    balance=st.sampled_from(["least_conn", "round_robin", "random"]),
    read_timeout=st.integers(1, 86400),
    body=st.from_regex(r"[1-9][0-9]{0,4}[kmg]?", fullmatch=True),
    keys=st.lists(st.from_regex(r"[A-Za-z0-9._~+/=-]{16,40}", fullmatch=True), max_size=3),
    slots=st.one_of(st.none(), st.integers(1, 64)),
)
def test_every_accepted_config_passes_nginx_t_and_haproxy_c(
    tmp_path_factory, count, per, base_port, listen, allow, balance, read_timeout, body, keys, slots
) -> None:
    require_tool("nginx")
    require_tool("haproxy")
    if per > count:
        return
    tmp = tmp_path_factory.mktemp("prop")
    flags = {
        "base_port": str(base_port),
        "gpus_per_instance": str(per),
        "listen": listen,
        "allow": allow,
        "balance": balance,
        "read_timeout": str(read_timeout),
        "max_body_size": body,
        "env": [f"OLLAMA_NUM_PARALLEL={slots}"] if slots else [],
    }
    if keys:
        (tmp / "keys").write_text("\n".join(keys) + "\n")
        flags["api_keys_file"] = str(tmp / "keys")
    try:
        config = load_config(flags, environ={"OLLAMA_FLEET_STATE_DIR": str(tmp)}, cwd=tmp)
    except BadInput:
        reject()  # the property is about what validation accepts
    found = Discovery(gpus=[Gpu(index=i, uuid=f"GPU-{i}") for i in range(count)], pinned_by="uuid")
    spec = spec_from(config, plan(config, found, ModelsDir(path=tmp, exists=True)))
    Nginx().check(Nginx().render(spec, standalone=False, prefix=tmp), standalone=False)
    haproxy = Haproxy().render(spec, prefix=tmp)
    Haproxy().check(haproxy)
    assert haproxy.count(f"maxconn {slots or 1}\n") == len(spec.instances)


INJECTIONS = [
    ["--allow", "1.2.3.4; include /etc/passwd"],
    ["--allow", "10.0.0.0/8 }"],
    ["--listen", "8080; include /etc/passwd"],
    ["--max-body-size", "1m; deny all"],
    ["--tls-cert", "/etc/ssl/a.pem;", "--tls-key", "/etc/ssl/a.key"],
    ["--state-dir", "/tmp/x;y"],
    ["--standalone", "--prefix", "/tmp/p; include /etc/passwd"],
    ["--api-keys-file", "KEYFILE_WITH_BRACE"],
    ["--api-keys-file", "KEYFILE_WITH_NEWLINE"],
]


@pytest.mark.parametrize(
    "args",
    [
        *INJECTIONS,
        ["--env", "OLLAMA_NUM_PARALLEL=4\n  server evil 1.2.3.4:80"],
        ["--env", "OLLAMA_NUM_PARALLEL=4 weight 0"],
    ],
)
def test_injection_attempts_exit_2_and_write_nothing(tmp_path: Path, nvml, args: list[str], engine: str) -> None:
    nvml(2)
    brace = tmp_path / "brace"
    brace.write_text('sk-valid-0123456789\nsk-evil"; } server { listen 1; #\n')
    newline = tmp_path / "newline"
    newline.write_text("sk-valid-0123456789\r\ninclude /etc/passwd;\n")
    args = [{"KEYFILE_WITH_BRACE": str(brace), "KEYFILE_WITH_NEWLINE": str(newline)}.get(a, a) for a in args]
    out = tmp_path / "out.conf"
    result = CliRunner().invoke(app, [f"render-{engine}", "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert "sk-evil" not in result.output


def test_check_reports_nginx_own_message(tmp_path: Path, nvml, monkeypatch) -> None:
    require_tool("nginx")
    nvml(1)
    # A snippet that nginx rejects: an upstream without servers.
    result = CliRunner().invoke(app, ["render-nginx", "--check", "--listen", "127.0.0.1:1"])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(Nginx, "render", lambda self, spec, **kw: "upstream ollama_fleet { }\n")
    result = CliRunner().invoke(app, ["render-nginx", "--check"])
    assert result.exit_code == 1
    assert "[emerg]" in result.stderr and "no servers are inside upstream" in result.stderr


def test_check_without_nginx_is_exit_3(tmp_path: Path, nvml, monkeypatch) -> None:
    nvml(1)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("ollama_fleet.processes.TOOL_DIRS", str(tmp_path))
    result = CliRunner().invoke(app, ["render-nginx", "--check"])
    assert result.exit_code == 3
    assert "nginx is not installed" in result.stderr


# ------------------------------------------------------------------ `up` runs it, `down` stops it


def test_up_starts_reloads_and_down_stops_the_gateway(fleet) -> None:
    require_tool("nginx")
    port = free_port_range(1)
    flags = ["--gateway", "--listen", f"127.0.0.1:{port}", "--server-name", "llm.example.com"]
    result = fleet.run("up", *flags)
    assert result.returncode == 0, result.stderr
    assert f"gateway: nginx started, listening on 127.0.0.1:{port}" in result.stdout
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(url + "/api/version", headers={"Host": "llm.example.com"}).status_code == 200
    master = json.loads((fleet.state / "gateway.json").read_text())["process"]["pid"]

    result = fleet.run("up", *flags, "--gpus", "0")
    assert result.returncode == 0, result.stderr
    assert "gateway: nginx reloaded" in result.stdout
    assert json.loads((fleet.state / "gateway.json").read_text())["process"]["pid"] == master  # not restarted
    names = {httpx.get(url + "/api/version").headers["x-fleet-instance"] for _ in range(6)}
    assert names == {"gpu0"}

    result = fleet.run("down")
    assert "and the gateway" in result.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/api/version", timeout=2)


def test_standalone_config_runs_unprivileged(tmp_path: Path) -> None:
    """`nginx -p DIR -c FILE` as an ordinary user: pid, logs and temp paths all under DIR."""
    nginx = require_tool("nginx")
    base, procs = start_instances(1)
    prefix = Path(tempfile.mkdtemp(prefix="fleet-nobody-"))
    os.chmod(prefix, 0o777)
    port = free_port_range(1)
    conf = prefix / "nginx.conf"
    gateway_files = subprocess.run(
        [
            sys.executable,
            "-m",
            "ollama_fleet",
            "render-nginx",
            "--standalone",
            "--check",
            "--prefix",
            str(prefix),
            "-o",
            str(conf),
            "--gpus",
            "0",
            "--base-port",
            str(base),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(FAKE_NVML_GPUS="1"),
    )
    try:
        assert gateway_files.returncode == 0, gateway_files.stderr
        for path in prefix.rglob("*"):
            os.chown(path, 65534, 65534)
        subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                nginx,
                "-p",
                str(prefix),
                "-c",
                str(conf),
            ],
            check=True,
            capture_output=True,
        )
        assert wait_answering(f"http://127.0.0.1:{port}/api/version").status_code == 200
        assert (prefix / "nginx.pid").exists()
    finally:
        pid = prefix / "nginx.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)
        stop(procs)
        shutil.rmtree(prefix, ignore_errors=True)


def test_standalone_names_its_worker_user_only_when_root(monkeypatch, tmp_path: Path) -> None:
    config = load_config({}, environ={"OLLAMA_FLEET_STATE_DIR": str(tmp_path)}, cwd=tmp_path)
    found = Discovery(gpus=[Gpu(index=0, uuid="GPU-0")], pinned_by="uuid")
    spec = spec_from(config, plan(config, found, ModelsDir(path=tmp_path, exists=True)))
    from ollama_fleet.accounts import worker_user

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert worker_user() is None
    assert "\nuser " not in Nginx().render(spec, standalone=True, prefix=tmp_path, user=None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert worker_user() == ("nobody", "nogroup")  # never root, nor the instances' user
    assert "\nuser nobody nogroup;\n" in Nginx().render(spec, standalone=True, prefix=tmp_path, user=worker_user())


def test_tls_gateway_serves_https(tmp_path: Path, engine: str) -> None:
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    if engine == "haproxy":  # HAProxy reads the key from the certificate's file
        both = tmp_path / "both.pem"
        both.write_text(cert.read_text() + key.read_text())
        cert = key = both
    base, procs = start_instances(1)
    gateway = None
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        gateway = Gateway(
            base, 1, "--tls-cert", str(cert), "--tls-key", str(key), engine=engine, scheme="https", verify=trust
        )
        response = httpx.get(gateway.url + "/api/version", verify=trust)
        assert response.status_code == 200
        assert response.headers["x-fleet-instance"] == "gpu0"
        try:  # it speaks TLS only: plain HTTP is refused (nginx answers 400, HAProxy hangs up)
            plain = httpx.get(gateway.url.replace("https", "http") + "/api/version").status_code
        except httpx.TransportError:
            plain = None
        assert plain in (None, 400)
    finally:
        if gateway is not None:
            gateway.close()
        stop(procs)


def test_haproxy_wants_the_key_with_the_certificate(tmp_path: Path, nvml) -> None:
    nvml(1)
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    result = CliRunner().invoke(
        app, ["render-haproxy", "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: tls_key: HAProxy reads the key from the certificate file")


def test_tls_files_must_exist(tmp_path: Path, nvml) -> None:
    nvml(1)
    result = CliRunner().invoke(
        app, ["render-nginx", "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: tls_cert: ") and "does not exist" in result.stderr


def test_up_refuses_a_taken_gateway_port_before_starting_anything(fleet) -> None:
    require_tool("nginx")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = fleet.run("up", "--gateway", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: listen: port {port} for the gateway is taken by pid {os.getpid()}")
    assert not (fleet.state / "fleet.json").exists()  # no instance was started


def test_nginx_sends_requests_again_at_once_when_instances_come_back() -> None:
    """After every instance failed (a crash loop), nginx answers 502 "no live upstreams"
    until fail_timeout ends, even to instances back up: it is 1 s, not 10 s."""
    from tests.helpers import FAKE_OLLAMA, fake_home

    base, procs = start_instances(2)
    gateway = Gateway(base, 2, engine="nginx")
    try:
        for proc in procs:
            proc.kill()
            proc.wait()
        assert httpx.get(gateway.url + "/api/version").status_code == 502
        procs[:] = [
            subprocess.Popen(
                [sys.executable, str(FAKE_OLLAMA), "serve"],
                stderr=subprocess.DEVNULL,
                env={"PATH": os.environ["PATH"], "HOME": fake_home(), "OLLAMA_HOST": f"127.0.0.1:{base + k}"},
            )
            for k in range(2)
        ]
        for k in range(2):
            wait_answering(f"http://127.0.0.1:{base + k}/api/version")
        back = time.monotonic()
        while httpx.get(gateway.url + "/api/version").status_code != 200:
            assert time.monotonic() - back < 4, "nginx still holds the instances down"
            time.sleep(0.05)
    finally:
        gateway.close()
        stop(procs)


def test_fleet_info_describes_the_box_and_answers_while_every_slot_is_busy(tmp_path: Path, engine: str) -> None:
    """A front checks /fleet/info every second: a box whose every slot is busy (and, on
    HAProxy, whose queue is long) must still answer it at once, behind its allowlist and keys."""
    keys = tmp_path / "keys"
    keys.write_text("sk-fleet-0123456789\n")
    auth = {"Authorization": "Bearer sk-fleet-0123456789"}
    base, procs = start_instances(2, FAKE_OLLAMA_TPS="5", FAKE_OLLAMA_TOKENS="40", OLLAMA_NUM_PARALLEL="2")
    placement = ["--models", "qwen3=gpu1"] if engine == "haproxy" else []
    gateway = Gateway(
        base,
        2,
        "--env",
        "OLLAMA_NUM_PARALLEL=2",
        "--name",
        "box-a",
        "--api-keys-file",
        str(keys),
        *placement,
        engine=engine,
    )
    streams: list[threading.Thread] = []
    try:
        info = httpx.get(gateway.url + "/fleet/info", headers=auth)
        assert info.status_code == 200 and info.headers["content-type"].startswith("application/json")
        assert info.json() == {
            "schema": 1,
            "name": "box-a",
            "version": ollama_fleet.__version__,
            "slots": 4,
            "instances": [{"name": "gpu0", "slots": 2}, {"name": "gpu1", "slots": 2}],
            "models": {"qwen3:latest": 2} if engine == "haproxy" else {},
        }

        def hold() -> None:  # 8 s of tokens each; cut when the test ends
            body = {"model": "llama3.2", "prompt": "x"}
            url = gateway.url + "/api/generate"
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream("POST", url, json=body, headers=auth, timeout=30) as r,
            ):
                for _ in r.iter_lines():
                    pass

        streams = [threading.Thread(target=hold, daemon=True) for _ in range(8)]  # 4 slots busy, 4 more waiting
        for t in streams:
            t.start()
        deadline = time.monotonic() + 5
        while (
            time.monotonic() < deadline
            and sum(httpx.get(f"http://127.0.0.1:{base + k}/_fake/stats").json()["busy"] for k in range(2)) < 4
        ):
            time.sleep(0.05)
        started = time.monotonic()
        assert httpx.get(gateway.url + "/fleet/info", headers=auth, timeout=5).status_code == 200
        assert time.monotonic() - started < 0.5
        assert httpx.get(gateway.url + "/fleet/info").status_code == 401
        refused_source(gateway.url + "/fleet/info", engine, auth)
    finally:
        gateway.close()
        stop(procs)


def test_a_cloud_model_never_leaves_the_box_unless_asked(fleet) -> None:
    """Every instance runs with OLLAMA_NO_CLOUD=1: a `:cloud` model name gets Ollama's 403
    instead of reaching ollama.com under the box's account; `--env OLLAMA_NO_CLOUD=0` is the
    opt-in (then the fake, which has no ollama.com, answers 502)."""
    url = gateway_up(fleet, "nginx")
    body = {"model": "gpt-oss:120b-cloud", "prompt": "hi", "stream": False}
    refused = httpx.post(url + "/api/generate", json=body, timeout=10)
    assert refused.status_code == 403 and "ollama cloud is disabled" in refused.json()["error"], refused.text
    assert fleet.run("down").returncode == 0
    url = gateway_up(fleet, "nginx", "--env", "OLLAMA_NO_CLOUD=0")
    assert httpx.post(url + "/api/generate", json=body, timeout=10).status_code == 502
