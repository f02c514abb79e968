"""Every setting is a flag of the commands that take it, built once from FleetConfig."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from ollama_fleet.cli import app
from ollama_fleet.cli.options import METAVARS
from ollama_fleet.config import FleetConfig


def _options(command: str) -> dict[str, str]:
    """--flag -> help, as Click sees the command."""
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {opt: param.help or "" for param in click_command.params for opt in [*param.opts, *param.secondary_opts]}


def test_every_setting_has_a_flag_with_its_description() -> None:
    assert set(METAVARS) == set(FleetConfig.model_fields)
    up = _options("up")
    for name, field in FleetConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if name in ("state_dir", "user") or flag in up:
            assert flag in up, flag
            assert up[flag].startswith(field.description or ""), (flag, up[flag])


def test_a_command_takes_only_the_settings_it_names() -> None:
    down = _options("down")
    assert "--state-dir" in down and "--gpus" not in down
    # Every command reads a config (./ollama-fleet.toml too), so every one takes --config.
    assert all("--config" in _options(name) for name in ("down", "status", "restart", "logs", "usage", "up"))
    assert "--no-gateway" in _options("install-systemd") and "--metrics-port" not in _options("render-nginx")


def test_a_setting_flag_reaches_the_config_validated(nvml, models_dir) -> None:
    nvml(2)
    bad = CliRunner().invoke(app, ["plan", "--base-port", "70000"])
    assert bad.exit_code == 2 and "base_port: Input should be less than or equal to 65535" in bad.stderr
    good = CliRunner().invoke(app, ["plan", "--base-port", "12000", "--json"])
    assert good.exit_code == 0 and '"port": 12000' in good.stdout
