"""The installed entry points, in real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import CONSOLE_SCRIPT, subprocess_env


def test_console_script_and_module_run(tmp_path: Path) -> None:
    """The installed entry points, in real subprocesses, with the fake NVML on the path."""
    env = subprocess_env(FAKE_NVML_GPUS="8", OLLAMA_FLEET_MODELS_DIR=str(tmp_path))
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT}: the package is not installed in this environment"
    for argv in ([str(CONSOLE_SCRIPT)], [sys.executable, "-m", "ollama_fleet"]):
        proc = subprocess.run([*argv, "plan", "--gpus", "0,1,2,3", "--json"], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert [i["port"] for i in json.loads(proc.stdout)["instances"]] == [11534, 11535, 11536, 11537]
    proc = subprocess.run([str(CONSOLE_SCRIPT), "plan", "--base-port", "x"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: base_port: Input should be a valid integer, unable to parse string as an integer (got 'x') [from --base-port]"
    ]
