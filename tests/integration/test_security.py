"""The gateway's rules, tried as an attacker would, against real nginx and HAProxy (a box
and the front) in front of fake Ollamas that decode and route paths as Go and gin do.
docs/security.md says what each test stands for."""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from typer.testing import CliRunner

from ollama_fleet.cli import app
from tests.helpers import (
    FAKE_OLLAMA,
    Gateway,
    free_port_range,
    refused_source,
    require_tool,
    start_instances,
    stop,
    subprocess_env,
    wait_answering,
)

ENGINES = ["nginx", "haproxy"]
KEY = "sk-security-0123456789"
# What Ollama (Go's decoded URL.Path, gin's routes) reads as a model write, spelled so that a
# rule matching the raw path misses it.
ENCODED_WRITES = [
    ("POST", "/api%2Fpull"),
    ("POST", "/api/pul%6C"),
    ("DELETE", "/api/del%65te"),
    ("POST", "/api/cr%65ate"),
    ("POST", "/api/cop%79"),
    ("POST", "/api/pus%68"),
    ("POST", "/api/blob%73/sha256-0123"),
]


def raw(url: str, method: str, path: str, body: bytes = b"{}", headers: dict[str, str] | None = None):
    """One request with `path` sent exactly as written (httpx would normalise it)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module", params=ENGINES)
def box(request):
    base, procs = start_instances(3)
    gateway = Gateway(base, 3, engine=request.param)
    yield gateway
    gateway.close()
    stop(procs)


def test_the_fake_routes_on_the_decoded_path_as_ollama_does() -> None:
    base, procs = start_instances(1)
    try:
        url = f"http://127.0.0.1:{base}"
        status, _, body = raw(url, "POST", "/api/gen%65rate", b'{"model": "qwen3", "prompt": "x", "stream": false}')
        assert status == 200 and json.loads(body)["done"] is True
        assert raw(url, "GET", "/api/../api/version")[0] == 301  # ServeMux cleans paths
        assert raw(url, "GET", "/api/versio%zz")[0] == 400
    finally:
        stop(procs)


@pytest.mark.parametrize(("method", "path"), ENCODED_WRITES)
def test_an_encoded_model_write_still_reaches_the_one_writer(box, method: str, path: str) -> None:
    for _ in range(3):  # least connections would spread them over the three instances
        status, headers, _ = raw(box.url, method, path, b'{"model": "qwen3"}')
        assert headers.get("x-fleet-instance") == "gpu0", (box.engine, path, status)


def test_the_allowlist_comes_before_the_key(tmp_path: Path, engine: str) -> None:
    """From outside --allow, a right key and a wrong one get the same refusal (no key
    oracle), and neither spends the key's rate."""
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY} name=team rate=2/m\n")
    keys.chmod(0o600)
    base, procs = start_instances(1)
    gateway = Gateway(base, 1, "--api-keys-file", str(keys), engine=engine)
    try:
        for key in (KEY, "sk-wrong-key-0123456789"):
            for _ in range(3):
                refused_source(gateway.url + "/api/version", engine, {"Authorization": f"Bearer {key}"})
        # The allowed client still has its whole rate (2 a minute), and the scheme is
        # case-insensitive (RFC 7235).
        answers = [
            httpx.get(gateway.url + "/api/version", headers={"Authorization": f"{scheme} {KEY}"}).status_code
            for scheme in ("Bearer", "bearer", "BEARER")
        ]
        assert answers == [200, 200, 429]
        assert httpx.get(gateway.url + "/api/version", headers={"Authorization": "Bearer"}).status_code == 401
    finally:
        gateway.close()
        stop(procs)


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


def test_a_chunked_body_over_the_limit_is_refused(engine: str) -> None:
    base, procs = start_instances(1)
    gateway = Gateway(base, 1, "--max-body-size", "1k", engine=engine)
    try:
        body = json.dumps({"model": "qwen3", "prompt": "x" * 8192, "stream": False}).encode()

        def chunks():
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000]

        assert httpx.post(gateway.url + "/api/generate", content=chunks()).status_code == 413
        assert httpx.post(gateway.url + "/api/generate", content=body).status_code == 413
        small = json.dumps({"model": "qwen3", "prompt": "x", "stream": False}).encode()
        assert httpx.post(gateway.url + "/api/generate", content=iter([small])).status_code == 200
    finally:
        gateway.close()
        stop(procs)


def test_a_body_limit_of_zero_is_bad_input(nvml) -> None:
    nvml(1)
    result = CliRunner().invoke(app, ["render-haproxy", "--max-body-size", "0"])
    assert result.exit_code == 2 and "max_body_size: 0 has no single meaning" in result.stderr


# ------------------------------------------------------------------ the front


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    """A front on loopback over one plain fake Ollama (a box given with its slots), with
    client keys and a box key: what a client of the front may and may not reach."""
    require_tool("haproxy")
    home = tmp_path_factory.mktemp("front")
    keys = home / "keys"
    keys.write_text(f"{KEY} name=team\n")
    box_key = home / "box.key"
    box_key.write_text("sk-the-box-key-0123456789\n")
    for path in (keys, box_key):
        path.chmod(0o600)
    port, box_port = free_port_range(1), free_port_range(1)
    ollama = subprocess.Popen(
        [sys.executable, str(FAKE_OLLAMA), "serve"],
        env=subprocess_env(OLLAMA_HOST=f"127.0.0.1:{box_port}", HOME=str(home)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    flags = [
        "--box",
        f"http://127.0.0.1:{box_port},slots=2",
        "--listen",
        f"127.0.0.1:{port}",
        "--api-keys-file",
        str(keys),
        "--box-key-file",
        str(box_key),
        "--server-name",
        "llm.example.com",
        "--state-dir",
        str(home / "state"),
    ]

    def fleet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ollama_fleet", *args], capture_output=True, text=True, env=subprocess_env()
        )

    try:
        wait_answering(f"http://127.0.0.1:{box_port}/api/version")
        result = fleet("front", "up", *flags)
        assert result.returncode == 0, result.stdout + result.stderr
        url = f"http://127.0.0.1:{port}"
        for _ in range(50):  # the box's first check
            if httpx.get(url + "/api/version", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                break
            time.sleep(0.1)
        yield url, flags, fleet
    finally:
        fleet("front", "down", "--state-dir", str(home / "state"))
        ollama.kill()
        ollama.wait()


AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        *ENCODED_WRITES,
        ("POST", "/api/pull"),
        ("POST", "/api/signout"),
        ("POST", "/api/me"),
        ("DELETE", "/api/user/keys/c3NoLWVk"),
        ("POST", "/api/experimental/web_search"),
        ("GET", "/api/status"),
        ("POST", "/api/../api/pull"),
        ("GET", "/v1/models/..%2F..%2Fapi%2Fps/x"),
    ],
)
def test_the_front_serves_an_allowlist_of_routes_on_the_decoded_path(front, method: str, path: str) -> None:
    url, _, _ = front
    status, headers, body = raw(url, method, path, b'{"model": "qwen3"}', AUTH)
    assert status == 403 and "ollama-fleet pull" in json.loads(body)["error"], (path, status)
    assert "x-fleet-box" not in headers  # never reached a box, nor carried its key there


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/generate"), ("POST", "/api/gen%65rate"), ("GET", "/api/tags"), ("GET", "/"), ("GET", "/v1/models")],
)
def test_the_front_passes_generation_and_metadata(front, method: str, path: str) -> None:
    url, _, _ = front
    status, headers, _ = raw(url, method, path, b'{"model": "qwen3", "prompt": "x", "stream": false}', AUTH)
    assert status == 200 and headers["x-fleet-box"], (path, status)


def test_the_front_refuses_outsiders_and_foreign_hosts_before_keys(front) -> None:
    url, _, _ = front
    refused_source(url + "/api/version", "haproxy", AUTH)
    assert httpx.get(url + "/api/version", headers={**AUTH, "Host": "rebind.attacker.example"}).status_code == 403
    assert httpx.get(url + "/api/version", headers={**AUTH, "Host": "llm.example.com"}).status_code == 200
    assert httpx.get(url + "/api/version").status_code == 401


def test_front_render_to_stdout_redacts_every_key(front) -> None:
    _, flags, fleet = front
    shown = fleet("front", "render", *flags[:-2])  # without its --state-dir
    assert shown.returncode == 0, shown.stderr
    assert "sk-" not in shown.stdout and "<redacted>" in shown.stdout


# ------------------------------------------------------------------ files root opens


SWAPPER = """
import os, sys, time
home, target = sys.argv[1], sys.argv[2]
end = time.monotonic() + 30
n = 0
while time.monotonic() < end:  # the attacker: replace a fresh ~/.ollama by a link, at once
    try:
        os.rename(os.path.join(home, ".ollama"), os.path.join(home, f"moved{n}"))
        os.symlink(target, os.path.join(home, ".ollama"))
        n += 1
    except OSError:
        pass
"""


def test_making_the_service_users_home_never_chowns_through_a_swapped_link(tmp_path: Path) -> None:
    """install-systemd makes ~user/.ollama as root in a dir that user owns: a link swapped in
    after the mkdir must never make root chown what it points to (#23 item 4)."""
    import os
    import pwd
    import shutil

    from ollama_fleet.accounts import prepare_home
    from ollama_fleet.errors import UserError
    from tests.helpers import require_root

    require_root()
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    target = tmp_path / "root-only"
    target.write_text("secret\n")
    target.chmod(0o600)
    account = pwd.struct_passwd(("svc", "x", 65534, 65534, "", str(home), "/bin/sh"))
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(home), str(target)])
    try:
        for _ in range(400):
            with contextlib.suppress(UserError):  # it saw the swap and said so
                prepare_home(account)
            assert target.stat().st_uid == 0, "root chowned the link's target"
            for entry in home.iterdir():
                with contextlib.suppress(OSError):  # the swapper moves things meanwhile
                    if entry.is_symlink() or entry.is_file():
                        entry.unlink()
                    else:
                        shutil.rmtree(entry)
    finally:
        swapper.kill()
        swapper.wait()


def test_a_planted_log_link_is_never_written_through(fleet, tmp_path: Path) -> None:
    """A state dir's logs/gpu0.log linked to a root-only file: the supervisor never opens a
    log through a link (O_NOFOLLOW); the log takes the link's place (#23 item 5)."""
    target = tmp_path / "root-only"
    target.write_text("secret\n")
    (fleet.state / "logs").mkdir(parents=True)
    (fleet.state / "logs" / "gpu0.log").symlink_to(target)
    assert fleet.run("up", "--gpus", "0").returncode == 0
    assert target.read_text() == "secret\n"
    log = fleet.state / "logs" / "gpu0.log"
    assert not log.is_symlink() and "inference compute" in log.read_text()


def test_the_state_dir_and_its_files_are_private(fleet) -> None:
    assert fleet.run("up", "--gpus", "0", "--env", "HTTPS_PROXY=http://user:hunter2@proxy:3128").returncode == 0
    assert fleet.state.stat().st_mode & 0o077 in (0, 0o011), oct(fleet.state.stat().st_mode)  # 0711 as root
    for path in fleet.state.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, path
    # The supervisor shows a command line of its own: not `up`'s, with the proxy's password.
    import psutil

    supervisor = json.loads((fleet.state / "supervisor.json").read_text())["supervisor"]["pid"]
    shown = " ".join(psutil.Process(supervisor).cmdline())
    assert "hunter2" not in shown and shown.startswith("ollama-fleet supervisor --state-dir "), shown


def test_a_root_owned_models_dir_runs_no_root_instance_unless_asked(fleet) -> None:
    """As root, instances run as the models dir's owner: root only when --user root says so
    (#23 item 11); and the gateway's workers are never the instances' user."""
    from tests.helpers import require_root

    require_root()
    env = {k: v for k, v in fleet.env.items() if k != "OLLAMA_FLEET_USER"}
    refused = subprocess.run(fleet.argv("up", "--gpus", "0"), env=env, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert "user: the models dir" in refused.stderr and "--user root" in refused.stderr
    assert not (fleet.state / "fleet.json").exists()
    asked = subprocess.run(fleet.argv("up", "--gpus", "0", "--user", "root"), env=env, capture_output=True, text=True)
    assert asked.returncode == 0 and "instances run as root" in asked.stderr, asked.stderr
