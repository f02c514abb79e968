"""The fake Ollama behaves as DESIGN.md §5 says the real one does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import FAKE_OLLAMA, start_instances, stop


@pytest.fixture
def fake(tmp_path):
    """Start one fake `ollama serve`; yields (base URL, Popen)."""
    procs = []

    def start(**env: str):
        base, started = start_instances(1, **env)
        procs.extend(started)
        return f"http://127.0.0.1:{base}", started[0]

    yield start
    stop(procs)


def test_root_version_tags(fake) -> None:
    url, _ = fake()
    assert httpx.get(url + "/").text == "Ollama is running"
    assert httpx.head(url + "/").status_code == 200
    assert httpx.get(url + "/api/version").json() == {"version": "0.33.0"}
    names = [m["name"] for m in httpx.get(url + "/api/tags").json()["models"]]
    assert "qwen3:latest" in names


def test_generate_streams_ndjson_ending_with_done(fake) -> None:
    url, _ = fake(FAKE_OLLAMA_TOKENS="5")
    with httpx.stream("POST", url + "/api/generate", json={"model": "qwen3", "prompt": "hi"}) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["done"] for line in lines] == [False] * 5 + [True]
    assert lines[-1]["eval_count"] == 5 and lines[-1]["eval_duration"] > 0
    assert lines[-1]["done_reason"] == "stop"


def test_chat_stream_false_is_one_object(fake) -> None:
    url, _ = fake(FAKE_OLLAMA_TOKENS="3")
    body = httpx.post(url + "/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}],
                                              "stream": False}).json()
    assert body["done"] is True and body["message"]["content"] == "tok0 tok1 tok2 "
    # qwen3 thinks by default: the reasoning in `thinking`, the answer after it.
    body = httpx.post(url + "/api/chat", json={"model": "qwen3", "messages": [{"role": "user", "content": "x"}],
                                              "stream": False}).json()
    assert body["message"] == {"role": "assistant", "content": "tok1 tok2 ", "thinking": "tok0 "}
    body = httpx.post(url + "/api/chat", json={"model": "qwen3", "messages": [{"role": "user", "content": "x"}],
                                              "stream": False, "think": False}).json()
    assert body["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 "}


def test_openai_chat_streams_sse_ending_with_done_marker(fake) -> None:
    url, _ = fake(FAKE_OLLAMA_TOKENS="3")
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    # A thinking model: the reasoning field first, with empty content.
    assert json.loads(events[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": "", "reasoning": "tok0 "}
    assert json.loads(events[1][6:])["choices"][0]["delta"]["content"] == "tok1 "


def test_unknown_model_is_ollamas_404(fake) -> None:
    url, _ = fake()
    response = httpx.post(url + "/api/generate", json={"model": "nope", "prompt": "x"})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'nope' not found"}


def test_empty_prompt_loads_the_model(fake) -> None:
    url, _ = fake()
    body = httpx.post(url + "/api/generate", json={"model": "qwen3", "prompt": "", "keep_alive": -1}).json()
    assert body["done_reason"] == "load"
    assert [m["name"] for m in httpx.get(url + "/api/ps").json()["models"]] == ["qwen3:latest"]


def test_embed(fake) -> None:
    url, _ = fake()
    body = httpx.post(url + "/api/embed", json={"model": "nomic-embed-text", "input": ["a", "b"]}).json()
    assert len(body["embeddings"]) == 2


@pytest.mark.parametrize(("host", "status"), [("localhost", 200), ("127.0.0.1:1", 200), ("x.localhost", 200),
                                              ("box.internal", 200), ("llm.example.com", 403)])
def test_loopback_host_check(fake, host: str, status: int) -> None:
    url, _ = fake()
    assert httpx.get(url + "/api/version", headers={"Host": host}).status_code == status


def test_slots_queue_beyond_num_parallel(fake) -> None:
    url, _ = fake(OLLAMA_NUM_PARALLEL="2", FAKE_OLLAMA_TOKENS="10", FAKE_OLLAMA_TPS="100")
    threads = [threading.Thread(target=httpx.post, args=(url + "/api/generate",),
                                kwargs={"json": {"model": "qwen3", "prompt": "x", "stream": False}, "timeout": 30})
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = httpx.get(url + "/_fake/stats").json()
    assert stats["peak_concurrency"] == 2
    assert stats["served"] == 5


def test_sigterm_cuts_streams_and_exits_0(fake) -> None:
    url, proc = fake(FAKE_OLLAMA_TOKENS="1000", FAKE_OLLAMA_TPS="50")
    received = []
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", url + "/api/generate", json={"model": "qwen3", "prompt": "x"}, timeout=10) as r:
            for line in r.iter_lines():
                received.append(line)
                if len(received) == 3:
                    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert 3 <= len(received) < 1000


def test_start_environment_is_readable(fake) -> None:
    url, _ = fake(CUDA_VISIBLE_DEVICES="GPU-x")
    assert httpx.get(url + "/_fake/env").json()["CUDA_VISIBLE_DEVICES"] == "GPU-x"


def test_sockets_have_tcp_nodelay(fake) -> None:
    """Replies on kept-alive connections must not wait on delayed ACKs (Nagle)."""
    url, _ = fake()
    with httpx.Client() as client:
        started = time.perf_counter()
        for _ in range(20):
            client.get(url + "/api/version")
        per_request = (time.perf_counter() - started) / 20
    assert per_request < 0.02  # with Nagle + delayed ACK each would take ~40 ms


def test_port_in_use_is_ollamas_error(fake) -> None:
    url, _ = fake()
    port = url.rsplit(":", 1)[1]
    proc = subprocess.run([sys.executable, str(FAKE_OLLAMA), "serve"], env={"OLLAMA_HOST": f"127.0.0.1:{port}"},
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1
    assert "bind: address already in use" in proc.stderr
