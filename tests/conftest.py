"""Shared fixtures: a clean environment, the fake NVML, a fleet of fake Ollamas run by the real CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import CliFleet, fake_pynvml


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
    f = CliFleet(tmp_path)
    yield f
    f.run("down", "--timeout", "2")
