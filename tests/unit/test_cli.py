"""The CLI contract for `gpus` and `plan`: output, JSON schema, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ollama_fleet import __version__
from ollama_fleet.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"ollama-fleet {__version__}"


def test_every_command_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)
    assert set(group.commands) >= {"gpus", "plan"}
    for name, cmd in group.commands.items():
        assert cmd.help, f"{name} has no help text"
        result = run(name, "-h")
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.stdout


def test_gpus_json(nvml) -> None:
    nvml(2, mig="1")
    result = run("gpus", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == 1
    assert data["pinned_by"] == "uuid"
    assert [g["uuid"][:4] for g in data["gpus"]] == ["GPU-", "MIG-", "MIG-"]
    assert set(data["gpus"][0]) == {
        "index",
        "uuid",
        "name",
        "mig",
        "memory_total",
        "memory_used",
        "utilization",
        "temperature",
        "power",
        "pci_bus_id",
    }


def test_gpus_table(nvml) -> None:
    nvml(2)
    result = run("gpus")
    assert result.exit_code == 0, result.output
    assert "4090" in result.stdout and "gpu1" in result.stdout


def test_plan_json_schema(nvml, models_dir: Path, tmp_path: Path) -> None:
    nvml(8)
    result = run("plan", "--gpus", "0,1,2,3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"schema", "models_dir", "instances", "unused_gpus", "pinned_by", "models"}
    assert data["schema"] == 1
    assert data["models_dir"]["path"] == str(models_dir)
    assert data["models_dir"]["exists"] is True
    assert [i["port"] for i in data["instances"]] == [11534, 11535, 11536, 11537]
    first = data["instances"][0]
    assert set(first) == {"name", "gpus", "host", "port", "env", "log"}
    assert first["gpus"] == [
        {"index": 0, "uuid": "GPU-00000000-1111-2222-3333-444444444444", "mig": None, "pci_bus_id": "00000000:10:00.0"}
    ]
    assert first["env"]["OLLAMA_HOST"] == "127.0.0.1:11534"
    assert first["log"] == str(tmp_path / "state" / "logs" / "gpu0.log")
    assert data["models"] == {}
    placed = json.loads(run("plan", "--gpus", "0,1", "--json", "--models", "qwen3=gpu1").stdout)
    assert placed["models"] == {"qwen3:latest": {"instances": ["gpu1"], "keep_alive": None}}


def test_plan_env_is_what_the_fleet_sets_never_the_callers(nvml, models_dir: Path, monkeypatch) -> None:
    nvml(1)
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    result = run("plan", "--json")
    assert "hunter2" not in result.stdout
    assert set(json.loads(result.stdout)["instances"][0]["env"]) == {
        "CUDA_VISIBLE_DEVICES",
        "OLLAMA_HOST",
        "OLLAMA_MODELS",
        "OLLAMA_KEEP_ALIVE",
        "OLLAMA_VULKAN",
        "OLLAMA_NO_CLOUD",
    }


def test_plan_never_fails_on_a_missing_models_dir(nvml, tmp_path: Path) -> None:
    nvml(1)
    result = run("plan", "--models-dir", str(tmp_path / "absent"))
    assert result.exit_code == 0, result.output
    assert "missing" in result.stdout


def test_plan_without_nvml_warns_and_pins_by_index(nvml, models_dir: Path) -> None:
    nvml("missing")
    result = run("plan", "--gpus", "0,1", "--json")
    assert result.exit_code == 0, result.output
    assert "pinning by index" in result.stderr
    assert [i["env"]["CUDA_VISIBLE_DEVICES"] for i in json.loads(result.stdout)["instances"]] == ["0", "1"]


def test_unused_gpus_are_reported(nvml, models_dir: Path) -> None:
    nvml(3)
    result = run("plan", "--gpus-per-instance", "2")
    assert result.exit_code == 0, result.output
    assert "GPU 2 is not used" in result.stderr


BAD_INPUTS = [
    # (args, environment, config file text, exit code, the field the line must name)
    (["--base-port", "0"], {}, None, 2, "base_port"),
    (["--base-port", "70000"], {}, None, 2, "base_port"),
    (["--base-port", "eleven"], {}, None, 2, "base_port"),
    (["--base-port", "65530"], {}, None, 2, "base_port"),  # 8 instances run past 65535
    (["--gpus", "9"], {}, None, 2, "gpus"),
    (["--gpus", "0,0"], {}, None, 2, "gpus"),
    (["--gpus", "zero"], {}, None, 2, "gpus"),
    (["--gpus", ""], {}, None, 2, "gpus"),
    (["--gpus-per-instance", "0"], {}, None, 2, "gpus_per_instance"),
    (["--gpus-per-instance", "9"], {}, None, 2, "gpus_per_instance"),
    (["--keep-alive", "5 minutes"], {}, None, 2, "keep_alive"),
    (["--keep-alive", "1d"], {}, None, 2, "keep_alive"),
    (["--env", "X=a\nb"], {}, None, 2, "env"),
    (["--env", "lower=1"], {}, None, 2, "env"),
    (["--env", "NOEQUALS"], {}, None, 2, "env"),
    (["--env", "OLLAMA_HOST=0.0.0.0"], {}, None, 2, "env"),
    (["--env", "X=a\0b"], {}, None, 2, "env"),
    (["--models-dir", "/srv/models; rm -rf /"], {}, None, 2, "models_dir"),
    ([], {"OLLAMA_FLEET_BASE_PORT": "-1"}, None, 2, "base_port"),
    ([], {"OLLAMA_FLEET_ALLOW": "300.1.1.1/8"}, None, 2, "allow[0]"),
    ([], {"OLLAMA_FLEET_LISTEN": "example.com:80"}, None, 2, "listen"),
    ([], {"OLLAMA_FLEET_ALLOW": "255.255.255.255"}, None, 2, "allow[0]"),  # found by hypothesis: nginx rejects it
    ([], {"OLLAMA_FLEET_BALANCE": "fastest"}, None, 2, "balance"),
    ([], {"OLLAMA_FLEET_MAX_BODY_SIZE": "lots"}, None, 2, "max_body_size"),
    ([], {"OLLAMA_FLEET_TLS_CERT": "/etc/cert.pem"}, None, 2, "tls_key"),
    ([], {}, "frobnicate = 1\n", 2, "frobnicate"),
    ([], {}, "base_port = \n", 2, "config"),  # TOML syntax error
    ([], {}, 'allow = ["10.0.0.0/8", "1.2.3.4; include /etc/passwd"]\n', 2, "allow[1]"),
    ([], {}, "[env]\nCUDA_VISIBLE_DEVICES = '1'\n", 2, "env"),
    ([], {}, "read_timeout = 0\n", 2, "read_timeout"),
    (["--config", "/nonexistent/fleet.toml"], {}, None, 2, "config"),
    (["--gpus", "all"], {"FAKE_NVML_GPUS": "missing"}, None, 3, "gpus"),
    (["--gpus", "GPU-abc"], {"FAKE_NVML_GPUS": "missing"}, None, 3, "gpus"),
]


@pytest.mark.parametrize(("args", "environ", "toml", "code", "field"), BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_field(
    nvml, models_dir: Path, tmp_path: Path, monkeypatch, args, environ, toml, code, field
) -> None:
    nvml(8)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    if toml is not None:
        (tmp_path / "ollama-fleet.toml").write_text(toml)
    result = run("plan", *args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {field}"), lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_several_bad_fields_give_one_line_each(nvml, models_dir: Path) -> None:
    result = run("plan", "--base-port", "0", "--keep-alive", "soon")
    assert result.exit_code == 2
    assert [line.split(":")[1].strip() for line in result.stderr.splitlines()] == ["base_port", "keep_alive"]


@pytest.mark.parametrize(
    ("first", "kept"),
    [("up", ["up"]), ("front", ["front"]), ("--help", None), ("upp", None), ("", None)],
)
def test_main_builds_only_the_command_its_first_word_names(
    first: str, kept: list[str] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ollama_fleet.cli as cli

    monkeypatch.setattr(app, "registered_commands", list(app.registered_commands))
    monkeypatch.setattr(app, "registered_groups", list(app.registered_groups))
    everything = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    cli._only(first)
    left = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert left == (kept if kept is not None else everything)


def test_a_bug_is_one_line_and_a_file_with_its_traceback(nvml, monkeypatch, tmp_path: Path) -> None:
    """Not a fleet error but a bug: exit 1, one line naming it and the file that holds the
    traceback (private), never a raw traceback; --debug shows it too (#24 item 7)."""
    import re
    import tempfile

    import ollama_fleet.gpus

    def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("the bug")

    monkeypatch.setattr(ollama_fleet.gpus, "discover", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    nvml(1)
    result = run("gpus")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "failed unexpectedly (ZeroDivisionError: the bug), a bug" in lines[0], lines
    crash = Path(re.search(r"the traceback is in (\S+)", lines[0])[1])  # type: ignore[index]
    assert crash.parent == tmp_path and crash.stat().st_mode & 0o077 == 0
    assert "Traceback" in crash.read_text() and "ZeroDivisionError: the bug" in crash.read_text()
    debug = run("gpus", "--debug")
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "the bug" in debug.stderr
