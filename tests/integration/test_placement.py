"""Model placement: validated against the plan, honoured by preload, routed by HAProxy on
the request body's model, shown by status. Real haproxy, fake Ollama instances."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ollama_fleet.cli import app
from ollama_fleet.state import read_actual
from tests.helpers import Gateway, free_port_range, gateway_up, start_instances, stop

PLACED = {"qwen3": {"gpu0", "gpu1"}, "qwen3:latest": {"gpu0", "gpu1"}, "llama3.2": {"gpu2"}}
MODELS = ["qwen3", "qwen3:latest", "llama3.2", "nomic-embed-text"]


@pytest.fixture(scope="module")
def routed():
    """4 instances; qwen3 on gpu0 and gpu1, llama3.2 on gpu2, the rest anywhere."""
    base, procs = start_instances(4, OLLAMA_NUM_PARALLEL="4", FAKE_OLLAMA_TPS="2000")
    gateway = Gateway(
        base,
        4,
        "--models",
        "qwen3=gpu0,gpu1",
        "--models",
        "llama3.2=gpu2",
        "--env",
        "OLLAMA_NUM_PARALLEL=4",
        engine="haproxy",
    )
    yield gateway
    gateway.close()
    stop(procs)


def requests_for(model: str) -> list[tuple[str, dict]]:
    """Every API that names a model in its body, streamed and not."""
    chat = [{"role": "user", "content": "x"}]
    calls = []
    for stream in (True, False):
        calls += [
            ("/api/generate", {"model": model, "prompt": "x", "stream": stream}),
            ("/api/chat", {"model": model, "messages": chat, "stream": stream}),
            ("/v1/chat/completions", {"model": model, "messages": chat, "stream": stream}),
            ("/v1/completions", {"model": model, "prompt": "x", "stream": stream}),
        ]
    if "embed" in model:  # an embedding model only embeds: generate and chat are a 400
        calls = []
    return [*calls, ("/api/embed", {"model": model, "input": "x"}), ("/v1/embeddings", {"model": model, "input": "x"})]


@pytest.mark.parametrize("model", MODELS)
def test_each_placed_model_reaches_only_its_group_on_every_api(routed, model: str) -> None:
    seen: Counter = Counter()
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            for path, body in requests_for(model):
                with client.stream("POST", routed.url + path, json=body) as response:
                    assert response.status_code == 200, (path, response.read())
                    response.read()
                    seen[response.headers["x-fleet-instance"]] += 1
    if model in PLACED:
        assert set(seen) == PLACED[model], (model, seen)
    else:  # an unplaced model may go anywhere: over 45 requests it went to more than a group
        assert len(seen) >= 3, seen


@pytest.mark.parametrize(
    "spelling", ["Qwen3", "library/qwen3", "registry.ollama.ai/library/qwen3:latest", "QWEN3:LATEST"]
)
def test_every_spelling_ollama_accepts_routes_to_the_placement(routed, spelling: str) -> None:
    """Ollama fills in the default host, namespace and tag and ignores case
    (types/model/name.go); so does the gateway, on every route that carries a model,
    /v1/responses and /v1/messages included."""
    seen: Counter = Counter()
    for _ in range(4):
        for path, body in [
            ("/api/generate", {"model": spelling, "prompt": "x", "stream": False}),
            ("/v1/responses", {"model": spelling, "input": "x"}),
            ("/v1/messages", {"model": spelling, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}),
        ]:
            response = httpx.post(routed.url + path, json=body, timeout=30)
            assert response.status_code == 200, (path, response.text)
            seen[response.headers["x-fleet-instance"]] += 1
    assert set(seen) == PLACED["qwen3"], seen


def test_metadata_never_waits_behind_a_generation(routed) -> None:
    """Every slot of the qwen3 group busy with long generations, and more queued: /api/tags,
    /api/ps, /api/version, /api/show and / still answer at once (their backend has no
    maxconn), from any instance."""
    import threading

    body = {"model": "qwen3", "prompt": "x", "stream": False, "options": {"num_predict": 4000}}  # 2 s each
    threads = [
        threading.Thread(
            target=httpx.post, args=(routed.url + "/api/generate",), daemon=True, kwargs={"json": body, "timeout": 60}
        )
        for _ in range(12)
    ]  # 8 slots, 4 queued
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    for path in ("/api/tags", "/api/ps", "/api/version", "/"):
        started = time.monotonic()
        assert httpx.get(routed.url + path, timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0, path  # a queued request would wait 2 s or more
    started = time.monotonic()
    assert httpx.post(routed.url + "/api/show", json={"model": "qwen3"}, timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0
    for thread in threads:
        thread.join(timeout=60)


def test_other_paths_go_to_any_instance(routed) -> None:
    seen = {
        httpx.get(routed.url + path).headers["x-fleet-instance"]
        for path in ("/api/tags", "/api/ps", "/api/version")
        for _ in range(8)
    }
    assert len(seen) >= 3


def test_a_20mb_body_and_an_unparsable_one_never_fail_at_the_gateway(routed) -> None:
    big = {"model": "llama3.2", "prompt": "x" * (20 * 2**20), "stream": False}
    response = httpx.post(routed.url + "/api/generate", json=big, timeout=60)
    assert response.status_code == 200 and response.json()["done"] is True
    # Larger than HAProxy's buffer: the model is not read, any instance serves it.
    assert response.headers["x-fleet-instance"].startswith("gpu")
    broken = httpx.post(
        routed.url + "/api/generate",
        content=b'{"model": "llama3.2", "prompt": ',
        headers={"Content-Type": "application/json"},
    )
    assert broken.status_code == 400 and "x-fleet-instance" in broken.headers  # the instance's own answer


def test_unknown_instances_and_empty_groups_are_exit_2(nvml, tmp_path: Path) -> None:
    nvml(2)
    result = CliRunner().invoke(app, ["plan", "--models", "qwen3=gpu0,gpu5"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: models.qwen3:latest: no instance 'gpu5' in the plan (instances: gpu0, gpu1)"
    config = tmp_path / "fleet.toml"
    config.write_text('[models]\n"qwen3:8b" = []\n"gemma3" = { instances = ["gpu0-1"] }\n')
    result = CliRunner().invoke(app, ["plan", "--config", str(config)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "models.qwen3:8b.instances: empty" in lines[0]
    assert "'gpu0-1' is not an instance name" in lines[1] and "ranges are not accepted" in lines[1]
    for other in ("qwen3:latest", "Library/Qwen3", "registry.ollama.ai/library/qwen3:latest"):
        same = CliRunner().invoke(app, ["plan", "--models", "qwen3=gpu0", "--models", f"{other}=gpu1"])
        assert same.exit_code == 2 and "Ollama reads both names as 'qwen3:latest'" in same.stderr, same.stderr


def test_nginx_refuses_a_placement_naming_haproxy(nvml, fleet) -> None:
    nvml(2)
    result = CliRunner().invoke(app, ["render-nginx", "--models", "qwen3=gpu0"])
    assert result.exit_code == 2
    assert "--engine haproxy" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # `up` refuses before it starts anything.
    up = fleet.run("up", "--gateway", "--listen", f"127.0.0.1:{free_port_range(1)}", "--models", "qwen3=gpu0")
    assert up.returncode == 2 and "--engine haproxy" in up.stderr
    assert not (fleet.state / "fleet.json").exists()


def test_preload_honours_placement_and_status_flags_missing_and_stray(fleet) -> None:
    """qwen3 resident on gpu1 only; llama3.2 (--preload, unplaced) on both. Then qwen3 is
    loaded on gpu0 by hand (stray) and unloaded from gpu1 (missing): status says so."""
    config = fleet.state.parent / "fleet.toml"
    config.write_text('[models]\nqwen3 = { instances = ["gpu1"], keep_alive = "-1" }\n')
    assert fleet.run("up", "--config", str(config), "--preload", "llama3.2").returncode == 0
    ps = [{m["name"]: m for m in httpx.get(fleet.url(k, "/api/ps")).json()["models"]} for k in range(2)]
    assert set(ps[0]) == {"llama3.2:latest"}
    assert set(ps[1]) == {"llama3.2:latest", "qwen3:latest"}
    assert ps[1]["qwen3:latest"]["expires_at"] > "2200"  # kept forever: keep_alive -1

    data = json.loads(fleet.run("status", "--json").stdout)
    by = {i["name"]: i for i in data["instances"]}
    assert by["gpu1"]["placed"] == ["qwen3:latest"] and by["gpu1"]["missing"] == [] and by["gpu0"]["stray"] == []

    def unload_qwen3_from_gpu1() -> None:
        body = {"model": "qwen3", "prompt": "", "keep_alive": 0, "stream": False}
        httpx.post(fleet.url(1, "/api/generate"), json=body)

    httpx.post(fleet.url(0, "/api/generate"), json={"model": "qwen3", "prompt": "", "stream": False})
    unload_qwen3_from_gpu1()
    result = fleet.run("status", "--json")
    data = json.loads(result.stdout)
    by = {i["name"]: i for i in data["instances"]}
    assert by["gpu0"]["stray"] == ["qwen3:latest"] and by["gpu1"]["missing"] == ["qwen3:latest"]
    assert result.returncode == 0  # flagged, but every instance answers
    # status proved gpu1 serves by loading its first model, qwen3, as `up` placed it (kept forever).
    qwen3 = {m["name"]: m for m in httpx.get(fleet.url(1, "/api/ps")).json()["models"]}["qwen3:latest"]
    assert qwen3["expires_at"] > "2200"
    unload_qwen3_from_gpu1()
    table = fleet.run("status").stdout
    assert "stray" in table and "missing" in table


def test_placement_routes_through_up_with_haproxy(fleet) -> None:
    url = gateway_up(fleet, "haproxy", "--models", "llama3.2=gpu1")
    assert read_actual(fleet.state) is not None
    names = {
        httpx.post(url + "/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False}).headers[
            "x-fleet-instance"
        ]
        for _ in range(6)
    }
    assert names == {"gpu1"}


@pytest.mark.parametrize("engine", ["nginx", "haproxy"])
def test_a_compressed_body_is_routed_never_refused(fleet, engine: str) -> None:
    """Codex sends zstd bodies; Ollama decompresses them on its /v1 routes (server/cloud_proxy.go).
    The gateway cannot read the model in them: it passes them on as for an unplaced model,
    never refuses them (#24 item 5). A gzip body reaches an instance too (Ollama, not the
    gateway, then says it is no JSON)."""
    import gzip
    import sys

    import zstandard

    from tests.helpers import FAKE_OLLAMA

    # The fake under the tests' own Python, which has zstandard (the system's may not).
    ollama = fleet.state.parent / "ollama"
    ollama.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_OLLAMA} "$@"\n')
    ollama.chmod(0o755)
    extra = ("--models", "llama3.2=gpu1") if engine == "haproxy" else ()
    url = gateway_up(fleet, engine, "--ollama-bin", str(ollama), *extra)
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for encoding, data in (("zstd", zstandard.ZstdCompressor().compress(body)), ("gzip", gzip.compress(body))):
        headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
        answer = httpx.post(url + "/v1/chat/completions", content=data, headers=headers, timeout=10)
        assert answer.headers.get("x-fleet-instance") in ("gpu0", "gpu1"), (encoding, answer.status_code)
        expected = 200 if encoding == "zstd" else 400
        assert answer.status_code == expected, (encoding, answer.text)
