"""Shared fixtures: a clean environment, the fake NVML, a fleet of fake Ollamas run by the real CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    FAKE_OLLAMA,
    as_root_on_purpose,
    fake_knobs_as_fleet_env,
    fake_pynvml,
    free_port_range,
    subprocess_env,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No OLLAMA_*, OLLAMA_FLEET_*, CUDA_* or FAKE_* from the caller; state under tmp_path."""
    for key in list(os.environ):
        if key.startswith(("OLLAMA_", "CUDA_", "FAKE_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("OLLAMA_FLEET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FAKE_NVML_GPUS", "0")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml)
    return tmp_path


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch):
    """Set the number of fake GPUs: `nvml(8)`, `nvml("missing")`, `nvml(2, mig="1")`."""

    def configure(count: int | str, mig: str = "") -> None:
        monkeypatch.setenv("FAKE_NVML_GPUS", str(count))
        monkeypatch.setenv("FAKE_NVML_MIG", mig)

    return configure


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    monkeypatch.setenv("OLLAMA_FLEET_MODELS_DIR", str(path))
    return path


@pytest.fixture
def fleet(tmp_path: Path):
    """Run the real CLI in subprocesses against fake Ollama instances; `down` at teardown."""
    import subprocess

    class Fleet:
        def __init__(self) -> None:
            self.state = tmp_path / "fleet-state"
            self.models = tmp_path / "fleet-models"
            self.models.mkdir()
            self.base_port = free_port_range(8)
            (tmp_path / "home").mkdir()
            self.env = subprocess_env(
                HOME=str(tmp_path / "home"),  # instances write ~/.ollama/id_ed25519 there
                FAKE_NVML_GPUS="2",
                OLLAMA_FLEET_STATE_DIR=str(self.state),
                OLLAMA_FLEET_MODELS_DIR=str(self.models),
                OLLAMA_FLEET_OLLAMA_BIN=str(FAKE_OLLAMA),
                OLLAMA_FLEET_BASE_PORT=str(self.base_port),
                OLLAMA_FLEET_WAIT_TIMEOUT="20",
                OLLAMA_FLEET_GATEWAY="false",  # gateway tests turn it on, on a port of their own
                **as_root_on_purpose(),
            )

        def argv(self, *args: str) -> list[str]:
            return [sys.executable, "-m", "ollama_fleet", *args]

        def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                self.argv(*args),
                env=fake_knobs_as_fleet_env({**self.env, **env}),
                capture_output=True,
                text=True,
                timeout=120,
            )

        def url(self, k: int, path: str = "/api/version") -> str:
            return f"http://127.0.0.1:{self.base_port + k}{path}"

    f = Fleet()
    yield f
    f.run("down", "--timeout", "2")
