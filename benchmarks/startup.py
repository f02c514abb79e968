#!/usr/bin/env python3
"""How long `up` takes for 8 instances that each need 1 s to start, and how long `down` takes.

Parallel start and prompt readiness detection should keep `up` under 1.3 × the start-up delay
(a serial start would take 8 ×). Runs the real CLI against the fake Ollama and a fake NVML.
The package's bytecode is compiled first, as `pip install` does: a checkout run with
PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module of the CLI on each run.

    python benchmarks/startup.py
"""

from __future__ import annotations

import compileall
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DELAY = 1.0
COUNT = 8


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import ollama_fleet
    from tests.helpers import FAKE_OLLAMA, as_root_on_purpose, free_port_range, subprocess_env

    compileall.compile_dir(Path(ollama_fleet.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "models").mkdir()
        # Exec the fake with this interpreter directly: a pyenv or venv shim in its `env
        # python3` shebang would add ~60 ms per instance that a real (Go) ollama never pays.
        ollama = Path(tmp) / "ollama"
        ollama.write_text(f"#!{sys.executable}\n" + FAKE_OLLAMA.read_text())
        ollama.chmod(0o755)
        env = {
            **subprocess_env(**as_root_on_purpose()),  # the fake pynvml; as root, root instances on purpose
            "HOME": tmp,  # instances write ~/.ollama/id_ed25519, as Ollama does
            "FAKE_NVML_GPUS": str(COUNT),
            "OLLAMA_FLEET_ENV": f"FAKE_OLLAMA_STARTUP_S={DELAY}",  # instances inherit only what [env] names
            "OLLAMA_FLEET_STATE_DIR": f"{tmp}/state",
            "OLLAMA_FLEET_MODELS_DIR": f"{tmp}/models",
            "OLLAMA_FLEET_OLLAMA_BIN": str(ollama),
            "OLLAMA_FLEET_BASE_PORT": str(free_port_range(COUNT)),
        }
        cli = [sys.executable, "-m", "ollama_fleet"]
        started = time.perf_counter()
        subprocess.run([*cli, "--version"], env=env, capture_output=True, check=True)
        cli_s = time.perf_counter() - started
        started = time.perf_counter()
        up = subprocess.run([*cli, "up", "--no-gateway"], env=env, capture_output=True, text=True)
        up_s = time.perf_counter() - started
        started = time.perf_counter()
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True)
        down_s = time.perf_counter() - started
    if up.returncode or down.returncode:
        print(up.stderr, down.stderr, file=sys.stderr)
        return 1
    ratio = up_s / DELAY
    print(f"instances: {COUNT}, start-up delay of each: {DELAY:.1f} s")
    print(f"up:   {up_s:.2f} s  = {ratio:.2f} x the delay (target < 1.3; serial would be {COUNT}x)")
    print(f"      of which the CLI's own Python start-up: {cli_s:.2f} s; without it {(up_s - cli_s) / DELAY:.2f} x")
    print(f"down: {down_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
