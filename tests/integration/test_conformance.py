"""Conformance against a real Ollama: the same checks the fake stands in for, run with the
`ollama` binary on PATH, on a machine with NVIDIA GPUs. This is how an operator checks a
fleet before trusting it:

    OLLAMA_FLEET_CONFORMANCE_MODEL=qwen3:0.6b .venv/bin/python -m pytest tests/integration/test_conformance.py

It starts two instances (one if the box has one GPU) on the real NVML, verifies each one's
pinning from Ollama's own log (`up` fails otherwise), preloads the model, streams through
the gateway with the official client, restarts with --rolling under a stream, and stops.
The model must be pulled already (`ollama pull`); the models dir is the fleet's default, or
OLLAMA_FLEET_CONFORMANCE_MODELS_DIR (else OLLAMA_MODELS). Without an `ollama` binary or a model
named, it is skipped: CI machines have neither (no GPU, no Ollama), also under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import free_port_range

OLLAMA = shutil.which("ollama")
# Read at import: the suite's autouse fixture clears OLLAMA_* from the environment.
MODEL = os.environ.get("OLLAMA_FLEET_CONFORMANCE_MODEL")
MODELS_DIR = os.environ.get("OLLAMA_FLEET_CONFORMANCE_MODELS_DIR") or os.environ.get("OLLAMA_MODELS")
pytestmark = pytest.mark.skipif(  # also under CI=true: CI machines have no GPU and no Ollama
    OLLAMA is None or not MODEL,
    reason="needs a real `ollama` on PATH and OLLAMA_FLEET_CONFORMANCE_MODEL (absent on CI machines too)",
)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ollama_fleet", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_a_real_fleet_is_pinned_serves_streams_and_rolls(tmp_path: Path) -> None:
    import ollama

    assert OLLAMA is not None and MODEL is not None
    # The real NVML: no fake pynvml on the path, none of the test run's OLLAMA_* either.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "PYTHONPATH", "FAKE_"))}
    env.update(OLLAMA_FLEET_STATE_DIR=str(tmp_path / "state"), OLLAMA_FLEET_BASE_PORT=str(free_port_range(2)))
    gpus = json.loads(_cli("gpus", "--json", env=env).stdout)["gpus"]
    assert gpus, "no GPU found through NVML"
    port = free_port_range(1)
    engine = "haproxy" if shutil.which("haproxy", path=env.get("PATH", "") + ":/usr/sbin") else "nginx"
    flags = [
        "--gpus",
        ",".join(str(g["index"]) for g in gpus[:2]),
        "--engine",
        engine,
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-port",
        str(free_port_range(1)),
        "--preload",
        MODEL,
        "--keep-alive",
        "10m",
        "--wait-timeout",
        "180",
    ]
    if MODELS_DIR:
        flags += ["--models-dir", MODELS_DIR]
    try:
        up = _cli("up", *flags, env=env)
        assert up.returncode == 0, up.stdout + up.stderr  # pinning verified from each instance's log
        report = json.loads(_cli("status", "--json", env=env).stdout)
        assert report["healthy"], report
        for inst in report["instances"]:
            assert inst["devices"] and all(d.startswith("CUDA ") for d in inst["devices"]), inst
            assert any(m["name"].startswith(MODEL.split(":")[0]) for m in inst["models"]), inst

        client = ollama.Client(host=f"http://127.0.0.1:{port}")
        parts = list(client.generate(model=MODEL, prompt="Say hi.", stream=True, options={"num_predict": 16}))
        assert parts[-1].done and parts[-1].eval_count

        results: list[bool] = []

        def stream() -> None:
            chunks = list(
                client.generate(model=MODEL, prompt="Count to fifty.", stream=True, options={"num_predict": 200})
            )
            results.append(bool(chunks) and chunks[-1].done)

        thread = threading.Thread(target=stream)
        thread.start()
        rolled = _cli("restart", "--rolling", env=env)
        thread.join(timeout=300)
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        assert results == [True]  # the stream in flight was not cut
    finally:
        _cli("down", env=env)
