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


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    try:
        lab.boxes = [  # type: ignore[attr-defined]
            lab.box("boxa", 11, 2, "--models", "qwen3=gpu1", FAKE_OLLAMA_TPS="40", FAKE_OLLAMA_PULL_S="0.2"),
            lab.box("boxb", 12, 2, FAKE_OLLAMA_TPS="40", FAKE_OLLAMA_PULL_S="0.2"),
        ]
        lab.host("front", 2)
        result = lab.front("up", *sum((["--box", url] for url in lab.boxes), []),  # type: ignore[attr-defined]
                           "--listen", f"{NET}.2:{PORT}", "--allow", f"{NET}.0/24")
        assert result.returncode == 0, result.stdout + result.stderr
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
        return [m["name"] for m in httpx.get(url + "/api/tags").json()["models"]]

    for url in lab.boxes:  # type: ignore[attr-defined]
        assert "tinyllama:latest" in lab.call("front", tags, url)

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
