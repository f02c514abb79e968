"""The fake Ollama behaves as DESIGN.md §5 says the real one does."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import FAKE_OLLAMA, NOBODY, any_python, fake_home, readable_copy, start_instances, stop


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
    body = httpx.post(
        url + "/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": False}
    ).json()
    assert body["done"] is True and body["message"]["content"] == "tok0 tok1 tok2 "
    # qwen3 thinks by default: the reasoning in `thinking`, the answer after it.
    body = httpx.post(
        url + "/api/chat", json={"model": "qwen3", "messages": [{"role": "user", "content": "x"}], "stream": False}
    ).json()
    assert body["message"] == {"role": "assistant", "content": "tok1 tok2 ", "thinking": "tok0 "}
    body = httpx.post(
        url + "/api/chat",
        json={"model": "qwen3", "messages": [{"role": "user", "content": "x"}], "stream": False, "think": False},
    ).json()
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
    assert json.loads(events[0][6:])["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "reasoning": "tok0 ",
    }
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


@pytest.mark.parametrize(
    ("host", "status"),
    [("localhost", 200), ("127.0.0.1:1", 200), ("x.localhost", 200), ("box.internal", 200), ("llm.example.com", 403)],
)
def test_loopback_host_check(fake, host: str, status: int) -> None:
    url, _ = fake()
    assert httpx.get(url + "/api/version", headers={"Host": host}).status_code == status


def test_slots_queue_beyond_num_parallel(fake) -> None:
    url, _ = fake(OLLAMA_NUM_PARALLEL="2", FAKE_OLLAMA_TOKENS="10", FAKE_OLLAMA_TPS="100")
    threads = [
        threading.Thread(
            target=httpx.post,
            args=(url + "/api/generate",),
            kwargs={"json": {"model": "qwen3", "prompt": "x", "stream": False}, "timeout": 30},
        )
        for _ in range(5)
    ]
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
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream("POST", url + "/api/generate", json={"model": "qwen3", "prompt": "x"}, timeout=10) as r,
    ):
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
    proc = subprocess.run(
        [sys.executable, str(FAKE_OLLAMA), "serve"],
        env={"OLLAMA_HOST": f"127.0.0.1:{port}", "HOME": fake_home()},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 1
    assert "bind: address already in use" in proc.stderr


# ---------------------------------------------------------------- fidelity (DESIGN.md §5)


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost", 200),
        ("LOCALHOST:11434", 200),
        ("10.1.2.3", 200),
        ("[::1]:80", 200),
        ("0.0.0.0", 200),
        ("box.local", 200),
        ("gpu.internal", 200),
        ("a.localhost", 200),
        ("llm.example.com", 403),
        ("8.8.8.8", 403),
        ("example.localhost.com", 403),
    ],
)
def test_host_check_is_ollamas(fake, host: str, status: int) -> None:
    """allowedHostsMiddleware on a loopback listener: IPs that are loopback, private or
    unspecified, and local names only."""
    url, _ = fake()
    assert httpx.get(url + "/api/version", headers={"Host": host}).status_code == status


def test_cors_runs_before_the_host_check(fake) -> None:
    url, _ = fake(OLLAMA_ORIGINS="https://chat.example.com")
    preflight = {"Origin": "https://chat.example.com", "Access-Control-Request-Method": "POST"}
    answer = httpx.options(url + "/api/chat", headers=preflight)
    assert answer.status_code == 204 and answer.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert httpx.get(url + "/api/tags", headers={"Origin": "https://evil.example"}).status_code == 403
    assert httpx.get(url + "/api/tags", headers={"Origin": "http://localhost:3000"}).status_code == 200
    assert httpx.get(url + "/api/tags", headers={"Origin": "vscode-webview://abc"}).status_code == 200


def test_embedding_models_do_not_generate_and_embed_loads_any_model(fake) -> None:
    url, _ = fake()
    refused = httpx.post(url + "/api/generate", json={"model": "nomic-embed-text", "prompt": ""})
    assert refused.status_code == 400 and refused.json() == {"error": '"nomic-embed-text" does not support generate'}
    for model in ("nomic-embed-text", "qwen3"):
        loaded = httpx.post(url + "/api/embed", json={"model": model, "input": "", "keep_alive": -1})
        assert loaded.status_code == 200 and loaded.json()["embeddings"] == []  # nothing embedded: only loaded
    assert sorted(m["name"] for m in httpx.get(url + "/api/ps").json()["models"]) == [
        "nomic-embed-text:latest",
        "qwen3:latest",
    ]


def test_keep_alive_0_with_an_empty_prompt_unloads(fake) -> None:
    url, _ = fake()
    assert httpx.post(url + "/api/generate", json={"model": "qwen3", "prompt": ""}).json()["done_reason"] == "load"
    assert httpx.get(url + "/api/ps").json()["models"]
    unloaded = httpx.post(url + "/api/generate", json={"model": "qwen3", "prompt": "", "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"
    assert httpx.get(url + "/api/ps").json()["models"] == []


def test_expiry_has_nanoseconds_and_a_local_offset(fake) -> None:
    url, _ = fake()
    httpx.post(url + "/api/generate", json={"model": "qwen3", "prompt": "", "keep_alive": "1h"})
    expires = httpx.get(url + "/api/ps").json()["models"][0]["expires_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", expires), expires


def test_model_names_compare_as_ollama_reads_them(fake) -> None:
    url, _ = fake()
    for name in ("Qwen3", "library/qwen3", "registry.ollama.ai/library/qwen3:latest"):
        answer = httpx.post(url + "/api/generate", json={"model": name, "prompt": "x", "stream": False})
        assert answer.status_code == 200, name


def serve_with_log(port: int, **env: str) -> subprocess.Popen:
    """One fake `ollama serve` whose log (stderr) the test reads line by line."""
    return subprocess.Popen(
        [sys.executable, str(FAKE_OLLAMA), "serve"],
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": fake_home(), "OLLAMA_HOST": f"127.0.0.1:{port}", **env},
    )


def test_it_binds_before_discovery_and_answers_after(tmp_path) -> None:
    """server/routes.go Serve: the port is bound at once; a request sent during GPU
    discovery waits in the backlog and is answered when discovery ends, never refused."""
    from tests.helpers import free_port_range

    port = free_port_range(1)
    proc = serve_with_log(
        port,
        FAKE_OLLAMA_STARTUP_S="1.5",
        OLLAMA_VULKAN="0",
        CUDA_VISIBLE_DEVICES="GPU-00000002-1111-2222-3333-444444444444",
    )
    try:
        assert proc.stderr is not None
        assert "Listening on" in proc.stderr.readline()  # bound: the port refuses nothing now
        started = time.monotonic()
        assert httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=10).status_code == 200
        assert time.monotonic() - started > 0.5  # it waited for the discovery
        compute = proc.stderr.readline()
        assert 'msg="inference compute" id=0 filter_id=GPU-00000002-1111-2222-3333-444444444444 library=CUDA' in compute
        assert "pci_id=0000:12:00.0" in compute
    finally:
        stop([proc])


@pytest.mark.parametrize(
    ("env", "libraries"),
    [
        ({"CUDA_VISIBLE_DEVICES": "GPU-00000001-1111-2222-3333-444444444444"}, ["CUDA", "Vulkan", "Vulkan"]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-00000001-1111-2222-3333-444444444444", "OLLAMA_VULKAN": "0"}, ["CUDA"]),
        ({"CUDA_VISIBLE_DEVICES": "1", "OLLAMA_VULKAN": "false"}, ["CUDA"]),
        ({"FAKE_OLLAMA_NO_CUDA": "1", "OLLAMA_VULKAN": "0"}, ["cpu"]),
    ],
)
def test_inference_compute_lines(env: dict, libraries: list[str]) -> None:
    """discover/types.go LogDetails, one line per device; Vulkan (on by default since v0.30)
    ignores CUDA_VISIBLE_DEVICES and adds the box's other GPUs."""
    from ollama_fleet.pinning import devices
    from tests.helpers import free_port_range

    port = free_port_range(1)
    proc = serve_with_log(port, FAKE_OLLAMA_GPUS="3", **env)
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(1 + len(libraries))]
        found = devices(lines)
        assert found is not None and [d.library for d in found] == libraries
        if libraries[0] == "CUDA":
            assert found[0].pci_id == "0000:11:00.0"
    finally:
        stop([proc])


def test_it_writes_its_key_first_and_exits_when_it_cannot(tmp_path) -> None:
    """cmd/cmd.go initializeKeypair runs before the server listens: a home whose ~/.ollama
    cannot be created (ProtectSystem=full, a read-only /usr) ends the process with exit 1."""
    from tests.helpers import free_port_range

    port = free_port_range(1)
    home = tmp_path / "home"
    home.mkdir()
    ok = subprocess.Popen(
        [sys.executable, str(FAKE_OLLAMA), "serve"],
        stdout=subprocess.DEVNULL,
        env={"HOME": str(home), "OLLAMA_HOST": f"127.0.0.1:{port}"},
    )
    try:
        deadline = time.monotonic() + 10
        while not (home / ".ollama" / "id_ed25519").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert oct((home / ".ollama").stat().st_mode & 0o777) == "0o755"
        assert oct((home / ".ollama" / "id_ed25519").stat().st_mode & 0o777) == "0o600"
    finally:
        stop([ok])
    locked = Path(tempfile.mkdtemp(prefix="fleet-locked-"))  # tmp_path may be root's alone
    locked.chmod(0o555)
    failed = subprocess.run(
        [*NOBODY, any_python(), str(readable_copy(FAKE_OLLAMA)), "serve"],
        env={"HOME": str(locked), "OLLAMA_HOST": f"127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert failed.returncode == 1
    assert f"Error: could not create directory mkdir {locked}/.ollama: permission denied" in failed.stderr
    missing = subprocess.run(
        [sys.executable, str(FAKE_OLLAMA), "serve"],
        env={"OLLAMA_HOST": f"127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert missing.returncode == 1 and "Error: $HOME is not defined" in missing.stderr


def test_a_pull_streams_progress_and_every_instance_sharing_the_models_dir_has_the_model(tmp_path) -> None:
    models = str(tmp_path / "models")
    base, procs = start_instances(2, OLLAMA_MODELS=models, FAKE_OLLAMA_PULL_S="0.1")
    try:
        with httpx.stream("POST", f"http://127.0.0.1:{base}/api/pull", json={"model": "TinyLlama"}) as response:
            assert response.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) for line in response.iter_lines()]
        assert lines[0] == {"status": "pulling manifest"}
        assert lines[-1] == {"status": "success"}
        progress = [line for line in lines if "completed" in line]
        assert progress and progress[-1]["completed"] == progress[-1]["total"]
        tags = httpx.get(f"http://127.0.0.1:{base + 1}/api/tags").json()["models"]
        assert "tinyllama:latest" in [tag["name"] for tag in tags]

        unknown = httpx.post(f"http://127.0.0.1:{base}/api/pull", json={"model": "no-such-model"})
        assert json.loads(unknown.text.splitlines()[-1]) == {"error": "pull model manifest: file does not exist"}
        quiet = httpx.post(f"http://127.0.0.1:{base}/api/pull", json={"model": "no-such-model", "stream": False})
        assert quiet.status_code == 500 and quiet.json() == {"error": "pull model manifest: file does not exist"}
    finally:
        stop(procs)


def test_a_changed_runner_option_reloads_the_model_and_a_main_gpu_it_lacks_fails() -> None:
    """server/sched.go runnerRef.needsReload: other runner options (num_ctx, main_gpu even
    as 0 when loaded without one, num_gpu but -1) reload the model; a main_gpu at or past
    the instance's device count fails the load with a 500."""
    base, procs = start_instances(1, CUDA_VISIBLE_DEVICES="0", OLLAMA_VULKAN="0")
    url = f"http://127.0.0.1:{base}"

    def generate(options: dict) -> int:
        body = {"model": "llama3.2", "prompt": "hi", "stream": False, "options": options}
        return httpx.post(url + "/api/generate", json=body, timeout=10).status_code

    def loads() -> int:
        return httpx.get(url + "/_fake/stats").json()["loads"]["llama3.2:latest"]

    try:
        assert generate({}) == 200 and loads() == 1
        assert generate({"num_gpu": -1}) == 200 and loads() == 1  # -1 matches whatever is loaded
        assert generate({"num_ctx": 8192}) == 200 and loads() == 2
        assert generate({"num_ctx": 8192}) == 200 and loads() == 2
        assert generate({"main_gpu": 0}) == 200 and loads() == 3  # 0, but loaded without one
        assert generate({"main_gpu": 1}) == 500  # one GPU: device 1 is not there
    finally:
        stop(procs)
