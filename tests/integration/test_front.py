"""The front over real boxes: each box a network namespace running `ollama-fleet up --engine
haproxy` over fake Ollamas, the front's HAProxy in a namespace of its own (tests/lab.py)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import ollama
import pytest

from tests.lab import NET, PORT, Lab

FRONT = f"http://{NET}.2:{PORT}"
BOX_KEY = "sk-box-0123456789"


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    try:
        # The boxes want a key; the front presents it (clients of the front need none here).
        key = lab.dir / "box.key"
        key.write_text(f"{BOX_KEY}\n")
        keys = ("--api-keys-file", str(key))
        lab.boxes = [  # type: ignore[attr-defined]
            lab.box("boxa", 11, 2, "--models", "qwen3=gpu1", *keys, FAKE_OLLAMA_TPS="40", FAKE_OLLAMA_PULL_S="0.2"),
            lab.box("boxb", 12, 2, *keys, FAKE_OLLAMA_TPS="40", FAKE_OLLAMA_PULL_S="0.2"),
        ]
        lab.host("front", 2)
        lab.front_up("--box-key-file", str(key), boxes=tuple(lab.boxes))  # type: ignore[attr-defined]
        yield lab
    finally:
        lab.close()


def status(lab: Lab) -> dict:
    result = lab.front("status", "--json")
    return json.loads(result.stdout)


def test_the_front_serves_every_box_with_its_slots_and_models(lab: Lab) -> None:
    data = status(lab)
    assert data["healthy"] is True
    boxes = {box["name"]: box for box in data["boxes"]}
    assert set(boxes) == {"boxa", "boxb"}
    assert boxes["boxa"]["slots"] == 2 and boxes["boxa"]["models"] == {"qwen3:latest": 1}
    assert all(box["state"] == "UP" for box in boxes.values())

    def chat() -> tuple[str, str, str]:
        client = ollama.Client(host=FRONT)
        reply = client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        raw = httpx.post(FRONT + "/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False})
        return reply.message.content, raw.headers["x-fleet-box"], raw.headers["x-fleet-instance"]

    content, box, instance = lab.call("front", chat)
    assert content and box in ("boxa", "boxb") and instance.startswith("gpu")
    # The boxes refuse a client without their key: it was the front's, in requests and checks.
    assert lab.call("front", httpx.get, lab.boxes[0] + "/fleet/info").status_code == 401  # type: ignore[attr-defined]

    from prometheus_client.parser import text_string_to_metric_families

    text = lab.front("status", "--format", "prometheus").stdout
    families = {family.name: family for family in text_string_to_metric_families(text)}
    up = {sample.labels["box"]: sample.value for sample in families["ollama_fleet_front_box_up"].samples}
    assert up == {"boxa": 1.0, "boxb": 1.0}
    assert families["ollama_fleet_front_up"].samples[0].value == 1.0
    table = lab.front("status").stdout
    assert "boxa" in table and "qwen3:latest (1)" in table
    # The front's log, per key name ("-": its clients bring no key here).
    used = json.loads(lab.front("usage", "--json", "--since", "1h").stdout)["keys"]
    assert used["-"]["requests"] >= 2 and used["-"]["errors"] == 0


def test_a_placed_model_goes_only_to_the_box_that_carries_it(lab: Lab) -> None:
    def ask() -> set[tuple[str, str]]:
        seen = set()
        for name in ("qwen3", "Qwen3:latest", "library/qwen3"):
            r = httpx.post(FRONT + "/api/generate", json={"model": name, "prompt": "x", "stream": False})
            assert r.status_code == 200
            seen.add((r.headers["x-fleet-box"], r.headers["x-fleet-instance"]))
        return seen

    assert lab.call("front", ask) == {("boxa", "gpu1")}


def test_model_writes_are_refused_at_the_front_and_pull_reaches_every_box(lab: Lab) -> None:
    refused = lab.call("front", httpx.post, FRONT + "/api/pull", json={"model": "tinyllama"})
    assert refused.status_code == 403 and "ollama-fleet pull" in refused.json()["error"]

    result = lab.run("front", *lab.fleet("pull", "tinyllama", "--state-dir", str(lab.dir / "front-state")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "boxa: pulled tinyllama" in result.stdout and "boxb: pulled tinyllama" in result.stdout

    def tags(url: str) -> list[str]:
        auth = {"Authorization": f"Bearer {BOX_KEY}"}
        return [m["name"] for m in httpx.get(url + "/api/tags", headers=auth).json()["models"]]

    for url in lab.boxes:  # type: ignore[attr-defined]
        assert "tinyllama:latest" in lab.call("front", tags, url)

    # On one fleet, without a front: through its own gateway.
    single = lab.run("boxa", *lab.fleet("pull", "gemma3", "--state-dir", str(lab.dir / "boxa" / "state")))
    assert single.returncode == 0 and "this box: pulled gemma3" in single.stdout, single.stdout + single.stderr

    failed = lab.run("front", *lab.fleet("pull", "no-such-model", "--state-dir", str(lab.dir / "front-state")))
    assert failed.returncode == 1
    assert "boxa: failed: pull model manifest: file does not exist" in failed.stdout


def test_requests_queue_at_the_front_and_no_box_gets_more_than_its_slots(lab: Lab) -> None:
    """12 long generations over 4 slots: 4 run, 8 wait at the front (not at the boxes)."""
    body = {"model": "llama3.2", "prompt": "x", "options": {"num_predict": 40}}
    done: list[str] = []

    def generate() -> None:
        with httpx.stream("POST", FRONT + "/api/generate", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = [json.loads(line) for line in r.iter_lines()]
            assert lines[-1]["done"] is True
            done.append(r.headers["x-fleet-box"])

    pool = lab.pool("front", 12)
    futures = [pool.submit(generate) for _ in range(12)]
    deadline = time.monotonic() + 5
    queued = 0
    while time.monotonic() < deadline and queued < 8:
        data = status(lab)
        queued = data["queued"] + sum(box["queued"] for box in data["boxes"])
        assert all(box["in_flight"] <= box["slots"] for box in data["boxes"])
    assert queued == 8
    for future in futures:
        future.result(timeout=60)
    assert len(done) == 12


@pytest.fixture
def pair():
    """Two boxes of two one-slot instances behind a front, for tests that break a box."""
    lab = Lab()
    try:
        lab.boxes = [  # type: ignore[attr-defined]
            lab.box("boxa", 11, 2, FAKE_OLLAMA_TPS="20"),
            lab.box("boxb", 12, 2, FAKE_OLLAMA_TPS="20"),
        ]
        lab.host("front", 2)
        lab.front_up(boxes=tuple(lab.boxes))  # type: ignore[attr-defined]
        yield lab
    finally:
        lab.close()


def box_state(lab: Lab, name: str) -> str:
    from ollama_fleet.gateway.front import stats

    return stats(lab.dir / "front-state" / "front" / "admin.sock").boxes[name].state


def wait_state(lab: Lab, name: str, state: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if box_state(lab, name) == state:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{name} not {state} after {timeout}s (it is {box_state(lab, name)})")


def stream(box_seen: list[str], ended: list[float], tokens: int = 100) -> str:
    """One generation through the front: "ok"; "cut" when its answer had begun; else "lost: why"."""
    body = {"model": "llama3.2", "prompt": "x", "options": {"num_predict": tokens}}
    begun = False
    try:
        with httpx.stream("POST", FRONT + "/api/generate", json=body, timeout=30) as r:
            box_seen.append(r.headers.get("x-fleet-box", "?"))
            if r.status_code != 200:
                return f"lost: HTTP {r.status_code}"
            begun = True  # its answer has begun: from here no proxy can move it elsewhere
            last = {}
            for line in r.iter_lines():
                last = json.loads(line)
            return "ok" if last.get("done") else "cut"
    except httpx.HTTPError as exc:
        return "cut" if begun else f"lost: {type(exc).__name__}"
    finally:
        ended.append(time.monotonic())


def test_a_box_that_vanishes_is_out_fast_its_streams_end_and_no_waiting_request_is_lost(pair: Lab) -> None:
    pool = pair.pool("front", 16)
    seen: list[str] = []
    ended: list[float] = []
    running = [pool.submit(stream, seen, ended) for _ in range(4)]  # 5 s each: every slot busy
    deadline = time.monotonic() + 5
    while len(seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(seen) == ["boxa", "boxa", "boxb", "boxb"]
    waiting = [pool.submit(stream, [], [], 10) for _ in range(6)]  # queued at the front
    time.sleep(0.3)
    cut = time.monotonic()
    pair.cut("boxb")
    assert wait_state(pair, "boxb", "DOWN", 10) < 5  # measured ~1.7 s (benchmarks/multihost.py)
    on_b = [f.result(timeout=30) for f in running]
    assert on_b.count("ok") == 2  # boxa's two streams go on
    assert max(ended[:2]) - cut < 5  # boxb's end at its mark-down, not after the read timeout
    assert [f.result(timeout=60) for f in waiting] == ["ok"] * 6  # none that had not started is lost
    pair.mend("boxb")
    assert wait_state(pair, "boxb", "UP", 10) < 5


def test_a_box_whose_gateway_dies_costs_at_most_one_request(pair: Lab) -> None:
    import os
    import signal

    pool = pair.pool("front", 8)
    stop = threading.Event()
    results: list[str] = []

    def loop() -> None:
        for _ in range(200):  # bounded
            if stop.is_set():
                return
            results.append(stream([], [], 4))

    loops = [pool.submit(loop) for _ in range(4)]
    time.sleep(1)
    for pid in pair.pids("boxb", "haproxy"):
        os.kill(pid, signal.SIGKILL)
    assert wait_state(pair, "boxb", "DOWN", 10) < 5
    time.sleep(1)
    stop.set()
    for f in loops:
        f.result(timeout=30)
    # Streams boxb was serving when its gateway died are cut, whatever the front does; of
    # the requests that had not begun, at most the one that trips the mark-down is lost
    # (the front holds each request whole, `http-buffer-request`, so it can retry it).
    lost = [r for r in results if r.startswith("lost")]
    assert len(results) > 20 and len(lost) <= 1, lost


def test_drain_lets_streams_finish_and_sends_the_box_nothing_new(pair: Lab) -> None:
    pool = pair.pool("front", 8)
    seen: list[str] = []
    running = [pool.submit(stream, seen, [], 60) for _ in range(4)]  # 3 s each, 2 per box
    while len(seen) < 4:
        time.sleep(0.02)
    drained = pair.front("drain", "boxb", "--timeout", "30")
    assert drained.returncode == 0, drained.stderr
    assert [f.result(timeout=30) for f in running] == ["ok"] * 4  # nothing was cut
    assert box_state(pair, "boxb") == "DRAIN"
    after: list[str] = []
    assert [f.result(timeout=30) for f in [pool.submit(stream, after, [], 5) for _ in range(4)]] == ["ok"] * 4
    assert set(after) == {"boxa"}
    assert pair.front("status").returncode == 1  # a drained box is not UP
    # A drain survives a reload (front up again re-reads the boxes).
    pair.front_up(boxes=tuple(pair.boxes))  # type: ignore[attr-defined]
    time.sleep(0.5)
    assert box_state(pair, "boxb") == "DRAIN"
    assert pair.front("undrain", "boxb").returncode == 0
    assert box_state(pair, "boxb") == "UP"
    assert pair.front("drain", "nobox").returncode == 2


def test_boxes_join_and_leave_with_the_srv_records_without_a_reload(tmp_path) -> None:
    from tests.helpers import require_tool

    dnsmasq = require_tool("dnsmasq")
    lab = Lab()
    try:
        for k, box in enumerate(("boxa", "boxb")):
            lab.box(box, 11 + k, 1)
        lab.host("front", 2)
        lab.host("dns", 53)
        name = "_ollama-fleet._tcp.lab.test"

        def serve_records(*members: str) -> None:
            lab.publish_srv(dnsmasq, name, *members)

        def serving() -> dict[str, str]:
            data = status(lab)
            return {box["address"]: box["state"] for box in data["boxes"]}

        def wait_for(expected: dict[str, str], timeout: float = 15) -> float:
            started = time.monotonic()
            while time.monotonic() - started < timeout:
                if serving() == expected:
                    return time.monotonic() - started
                time.sleep(0.2)
            raise AssertionError(f"front serves {serving()}, not {expected}")

        serve_records("boxa")
        lab.front_up("--box-srv", name, "--box-slots", "1", "--resolver", f"{NET}.53")
        pid = (lab.dir / "front-state" / "front" / "haproxy.pid").read_text()
        a, b = f"{lab.hosts['boxa']}:{PORT}", f"{lab.hosts['boxb']}:{PORT}"
        wait_for({a: "UP"})

        def answered_by() -> set[str]:
            return {httpx.get(FRONT + "/api/version").headers["x-fleet-box"] for _ in range(6)}

        serve_records("boxa", "boxb")
        wait_for({a: "UP", b: "UP"})
        assert len(lab.call("front", answered_by)) == 2
        serve_records("boxb")
        wait_for({b: "UP"})
        assert len(lab.call("front", answered_by)) == 1
        assert (lab.dir / "front-state" / "front" / "haproxy.pid").read_text() == pid  # never reloaded
    finally:
        lab.close()


def test_front_render_runs_as_its_header_says_and_installs_as_a_verified_unit(tmp_path) -> None:
    import os
    import re
    import signal
    import subprocess

    from tests.helpers import (
        CONSOLE_SCRIPT,
        Gateway,
        free_port_range,
        require_tool,
        start_instances,
        stop,
        subprocess_env,
        wait_answering,
    )

    base, procs = start_instances(2)
    box = Gateway(base, 2, "--name", "loop", engine="haproxy")
    config = tmp_path / "front" / "front.cfg"
    keys = tmp_path / "keys"  # named keys at the front: its own queue's priorities and limits
    keys.write_text("sk-chat-0123456789 name=chat priority=interactive\nsk-ci-0123456789 name=ci rate=2/m\n")
    port = free_port_range(1)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(CONSOLE_SCRIPT), "front", *args, "--state-dir", str(tmp_path / "state")],
            capture_output=True,
            text=True,
            env=subprocess_env(),
        )

    try:
        rendered = cli(
            "render",
            "--box",
            box.url,
            "--listen",
            f"127.0.0.1:{port}",
            "-o",
            str(config),
            "--prefix",
            str(tmp_path / "run"),
            "--api-keys-file",
            str(keys),
            "--check",
        )
        assert rendered.returncode == 0, rendered.stderr
        command = re.search(r"^#   (haproxy .*)$", config.read_text(), re.M)[1].split()  # type: ignore[index]
        subprocess.run([require_tool("haproxy"), *command[1:]], check=True)
        try:
            url = f"http://127.0.0.1:{port}/api/version"
            assert wait_answering(url).status_code == 401
            ci = {"Authorization": "Bearer sk-ci-0123456789"}
            answers = [httpx.get(url, headers=ci) for _ in range(3)]
            assert [a.status_code for a in answers] == [200, 200, 429]
            assert answers[0].headers["x-fleet-box"] == "loop"
            from ollama_fleet.gateway.front import stats

            counts = stats(tmp_path / "run" / "admin.sock").keys
            assert (counts["ci"].requests, counts["ci"].rejected) == (3, 1)
        finally:
            os.kill(int((tmp_path / "run" / "haproxy.pid").read_text().split()[0]), signal.SIGTERM)

        root = tmp_path / "root"
        installed = cli("install-systemd", "--box", box.url, "--root", str(root))
        assert installed.returncode == 0, installed.stderr
        units = root / "etc/systemd/system"
        verify = subprocess.run(
            [require_tool("systemd-analyze"), "verify", "ollama-fleet-front.service"],
            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
            capture_output=True,
            text=True,
        )
        assert (verify.returncode, verify.stderr) == (0, "")
        assert "ExecStart=" in (units / "ollama-fleet-front.service").read_text()
        assert "/run/ollama-fleet-front/admin.sock" in (root / "etc/ollama-fleet/front.cfg").read_text()

        gone = cli("up", "--box", f"http://127.0.0.1:{free_port_range(1)}", "--listen", f"127.0.0.1:{port}")
        assert gone.returncode == 1
        assert "does not answer /fleet/info (refused)" in gone.stderr and ",slots=N" in gone.stderr
        nothing = cli("up", "--listen", f"127.0.0.1:{port}")
        assert nothing.returncode == 2 and nothing.stderr.startswith("error: boxes: a front needs boxes")
        assert "Traceback" not in gone.stderr + nothing.stderr
    finally:
        box.close()
        stop(procs)


def test_a_plain_ollama_is_a_box_with_the_slots_given_and_is_checked_at_api_version() -> None:
    import sys

    from tests.helpers import FAKE_OLLAMA, fake_home, subprocess_env

    lab = Lab()
    try:
        fleet = lab.box("boxa", 11, 1)
        plain = lab.host("plain", 13)
        ollama_serve = lab.spawn(
            "plain",
            sys.executable,
            str(FAKE_OLLAMA),
            "serve",
            env=subprocess_env(HOME=fake_home(), OLLAMA_HOST=f"{plain}:11434", OLLAMA_NUM_PARALLEL="2"),
        )
        lab.host("front", 2)
        lab.front_up(boxes=(fleet, f"http://{plain}:11434,slots=2"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and {b["state"] for b in status(lab)["boxes"]} != {"UP"}:
            time.sleep(0.2)
        boxes = {box["name"]: box for box in status(lab)["boxes"]}
        assert {name: (box["state"], box["slots"]) for name, box in boxes.items()} == {
            "boxa": ("UP", 1),
            f"{plain}:11434": ("UP", 2),
        }

        def answered_by() -> set[str]:
            body = {"model": "llama3.2", "prompt": "x", "stream": False}
            return {httpx.post(FRONT + "/api/generate", json=body).headers["x-fleet-box"] for _ in range(6)}

        assert lab.call("front", answered_by) == {"boxa", f"{plain}:11434"}
        ollama_serve.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and status(lab)["boxes"][1]["state"] != "DOWN":
            time.sleep(0.2)
        assert [box["state"] for box in status(lab)["boxes"]] == ["UP", "DOWN"]
        assert lab.front("status").returncode == 1
    finally:
        lab.close()
