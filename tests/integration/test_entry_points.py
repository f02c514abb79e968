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


def test_only_the_command_run_is_built_and_help_still_lists_all(tmp_path: Path) -> None:
    """main() keeps on the app only the command its first word names (start-up cost);
    help, a group's subcommands and click's suggestion for a typo still see every command."""
    env = subprocess_env(FAKE_NVML_GPUS="2", OLLAMA_FLEET_MODELS_DIR=str(tmp_path))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CONSOLE_SCRIPT), *args], env=env, capture_output=True, text=True)

    top = run("--help")
    assert top.returncode == 0
    for name in ("gpus", "plan", "up", "down", "status", "logs", "usage", "front", "pull"):
        assert f" {name} " in top.stdout, name
    up = run("up", "--help")
    assert up.returncode == 0 and "Usage: ollama-fleet up [OPTIONS]" in up.stdout
    front = run("front", "--help")
    assert front.returncode == 0
    assert all(f" {name} " in front.stdout for name in ("up", "down", "status", "drain", "undrain")), front.stdout
    typo = run("upp")
    assert typo.returncode == 2 and "Did you mean 'up'?" in typo.stderr
    assert run("plan", "--gpus", "0,1", "--json").returncode == 0
