"""Shared fixtures: a clean environment, the fake NVML, the fake Ollama, real tools."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
FAKES = TESTS / "fakes"
FAKE_OLLAMA = TESTS / "fake_ollama.py"
sys.path.insert(0, str(FAKES))
import pynvml as fake_pynvml  # noqa: E402  (the fake, from tests/fakes)

assert Path(fake_pynvml.__file__).parent == FAKES, "tests must use the fake pynvml"


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


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for the real CLI in a subprocess: the fake pynvml first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAKES), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def require_tool(name: str) -> str:
    """The path of a real tool; under CI=true its absence fails the test instead of skipping it."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI=true but is not installed")
        pytest.skip(f"{name} is not installed")
    return path
