"""Loading and validating FleetConfig: the layers, their precedence, the error lines."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ollama_fleet.config import FleetConfig, load_config, reference_table
from ollama_fleet.errors import EXIT_BAD_INPUT, BadInput
from tests.helpers import ROOT


def test_defaults(tmp_path: Path) -> None:
    config = load_config({}, environ={"XDG_STATE_HOME": str(tmp_path)}, cwd=tmp_path)
    assert config.gpus == "all"
    assert config.base_port == 11534
    assert config.keep_alive == "5m"
    assert config.balance == "least_conn"
    assert str(config.listen) == "0.0.0.0:8080"
    assert config.state_dir is not None


def test_file_layer(tmp_path: Path) -> None:
    (tmp_path / "ollama-fleet.toml").write_text('base_port = 12000\nkeep_alive = "15s"\n')
    config = load_config({}, environ={}, cwd=tmp_path)
    assert (config.base_port, config.keep_alive) == (12000, "15s")


def test_env_overrides_file(tmp_path: Path) -> None:
    (tmp_path / "ollama-fleet.toml").write_text("base_port = 12000\n")
    config = load_config({}, environ={"OLLAMA_FLEET_BASE_PORT": "13000"}, cwd=tmp_path)
    assert config.base_port == 13000


def test_flag_overrides_env(tmp_path: Path) -> None:
    config = load_config({"base_port": "14000"}, environ={"OLLAMA_FLEET_BASE_PORT": "13000"}, cwd=tmp_path)
    assert config.base_port == 14000


def test_config_flag_beats_local_file_and_env_var(tmp_path: Path) -> None:
    (tmp_path / "ollama-fleet.toml").write_text("base_port = 1\n")
    other = tmp_path / "other.toml"
    other.write_text("base_port = 2000\n")
    via_env = tmp_path / "env.toml"
    via_env.write_text("base_port = 3000\n")
    environ = {"OLLAMA_FLEET_CONFIG": str(via_env)}
    assert load_config({}, config_path=other, environ=environ, cwd=tmp_path).base_port == 2000
    assert load_config({}, environ=environ, cwd=tmp_path).base_port == 1
    (tmp_path / "ollama-fleet.toml").unlink()
    assert load_config({}, environ=environ, cwd=tmp_path).base_port == 3000


def test_env_tables_add_up_later_layer_wins_per_key(tmp_path: Path) -> None:
    (tmp_path / "ollama-fleet.toml").write_text('[env]\nOLLAMA_NUM_PARALLEL = "4"\nOLLAMA_DEBUG = "0"\n')
    config = load_config(
        {"env": ["OLLAMA_DEBUG=1"]},
        environ={"OLLAMA_FLEET_ENV": "OLLAMA_ORIGINS=http://x"},
        cwd=tmp_path,
    )
    assert config.env == {"OLLAMA_NUM_PARALLEL": "4", "OLLAMA_DEBUG": "1", "OLLAMA_ORIGINS": "http://x"}


def test_lists_from_env_are_comma_separated(tmp_path: Path) -> None:
    config = load_config(
        {}, environ={"OLLAMA_FLEET_ALLOW": "10.0.0.0/8, 192.168.1.7/24", "OLLAMA_FLEET_GPUS": "0,2"}, cwd=tmp_path
    )
    assert config.allow == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.0/24"))
    assert config.gpus == ("0", "2")


def test_toml_gpus_may_be_a_list_of_ints(tmp_path: Path) -> None:
    (tmp_path / "ollama-fleet.toml").write_text("gpus = [0, 3]\n")
    assert load_config({}, environ={}, cwd=tmp_path).gpus == ("0", "3")


@pytest.mark.parametrize("value", ["15s", "5m", "1h30m", "-1", "3600", "0", "1.5h", "-1m", "300ms"])
def test_keep_alive_accepts_what_ollama_accepts(value: str, tmp_path: Path) -> None:
    assert load_config({"keep_alive": value}, environ={}, cwd=tmp_path).keep_alive == value


@pytest.mark.parametrize("value", ["5 minutes", "m", "1d", "", "5m;", "1h 30m", "5M", "1.5"])
def test_keep_alive_rejects_what_ollama_rejects(value: str, tmp_path: Path) -> None:
    with pytest.raises(BadInput) as info:
        load_config({"keep_alive": value}, environ={}, cwd=tmp_path)
    assert info.value.lines[0].startswith("keep_alive: ")


def test_every_bad_field_gets_its_own_line(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as info:
        load_config({"base_port": "0", "allow": ["10.0.0.0/8", "nope"]}, environ={}, cwd=tmp_path)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert [line.split(":")[0] for line in info.value.lines] == ["base_port", "allow[1]"]
    assert "[from --allow]" in info.value.lines[1]


def test_the_source_of_a_bad_value_is_named(tmp_path: Path) -> None:
    (tmp_path / "ollama-fleet.toml").write_text('balance = "fastest"\n')
    with pytest.raises(BadInput, match=r"balance: .*\[from .*ollama-fleet.toml\]"):
        load_config({}, environ={}, cwd=tmp_path)
    with pytest.raises(BadInput, match=r"read_timeout: .*\[from OLLAMA_FLEET_READ_TIMEOUT\]"):
        load_config({}, environ={"OLLAMA_FLEET_READ_TIMEOUT": "soon"}, cwd=tmp_path)


def test_reference_table_lists_every_setting() -> None:
    table = reference_table()
    for name in FleetConfig.model_fields:
        assert f"| `{name}` |" in table


def test_readme_reference_matches_the_model() -> None:
    readme = (ROOT / "README.md").read_text()
    assert reference_table() in readme, "README settings reference drifted: paste config.reference_table()"


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"preload": "qwen3", "keep_alive": "0"}, "keep_alive"),
        ({"preload": "qwen3", "keep_alive": "0m0s"}, "keep_alive"),
        ({"models": ["qwen3=gpu0"], "keep_alive": "0"}, "keep_alive"),
    ],
)
def test_a_zero_keep_alive_with_a_preload_is_bad_input(flags: dict, field: str, tmp_path: Path) -> None:
    """Ollama unloads a model after every request with keep_alive 0: a preload would load it
    and unload it at once (done_reason "unload"), and `up` would count it loaded."""
    with pytest.raises(BadInput) as info:
        load_config(flags, environ={}, cwd=tmp_path)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert info.value.lines[0].startswith(f"{field}: 0 unloads a model after every request")
    assert load_config({"keep_alive": "0"}, environ={}, cwd=tmp_path).keep_alive == "0"  # without a preload: fine
    toml = tmp_path / "placed.toml"
    toml.write_text('keep_alive = "0"\n[models]\nqwen3 = { instances = ["gpu0"], keep_alive = "-1" }\n')
    assert load_config({}, config_path=toml, environ={}, cwd=tmp_path).keep_alive == "0"  # its own keep-alive


# ------------------------------------------------------------------ what may be trusted


def _owned_by_someone_else(path: Path, monkeypatch) -> None:
    """Make `path` belong to another user: chown it as root, else pretend to be another uid."""
    import os

    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: 4242)


@pytest.mark.parametrize("where", ["cwd", "flag", "env"])
def test_a_config_file_someone_else_owns_is_refused(tmp_path: Path, monkeypatch, where: str) -> None:
    """As root in /tmp or a shared checkout: a planted ollama-fleet.toml must not choose
    the ollama binary, the user or the state dir."""
    planted = tmp_path / "ollama-fleet.toml"
    planted.write_text('ollama_bin = "/tmp/evil"\n')
    _owned_by_someone_else(planted, monkeypatch)
    flag = planted if where == "flag" else None
    environ = {"OLLAMA_FLEET_CONFIG": str(planted)} if where == "env" else {}
    with pytest.raises(BadInput, match=r"^config: .*ollama-fleet.toml belongs to .*refused"):
        load_config({}, config_path=flag, environ=environ, cwd=tmp_path if where == "cwd" else tmp_path / "x")


def test_a_config_file_others_may_write_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "ollama-fleet.toml"
    planted.write_text("base_port = 12000\n")
    planted.chmod(0o666)
    with pytest.raises(BadInput, match=r"writable by every user \(mode 0666\): refused; chmod go-w"):
        load_config({}, environ={}, cwd=tmp_path)
    planted.chmod(0o664)
    with pytest.raises(BadInput, match="writable by its group"):
        load_config({}, environ={}, cwd=tmp_path)
    planted.chmod(0o644)
    assert load_config({}, environ={}, cwd=tmp_path).base_port == 12000


def test_a_state_dir_someone_else_owns_or_may_write_is_refused(tmp_path: Path, monkeypatch) -> None:
    shared = tmp_path / "state"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BadInput, match=r"^state_dir: .* is writable by every user"):
        load_config({"state_dir": str(shared)}, environ={}, cwd=tmp_path)
    shared.chmod(0o755)
    _owned_by_someone_else(shared, monkeypatch)
    with pytest.raises(BadInput, match=r"^state_dir: .* belongs to"):
        load_config({"state_dir": str(shared)}, environ={}, cwd=tmp_path)


def test_the_state_dir_is_absolute(tmp_path: Path, monkeypatch) -> None:
    """A relative one would move with the working directory, and `abns@x/admin.sock` was
    an abstract socket."""
    monkeypatch.chdir(tmp_path)
    config = load_config({"state_dir": "abns@x"}, environ={}, cwd=tmp_path)
    assert config.state_path == tmp_path / "abns@x"


def test_root_instances_only_when_asked_on_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "ollama-fleet.toml").write_text('user = "root"\n')
    with pytest.raises(BadInput, match=r"^user: root only as --user root, never from a file"):
        load_config({}, environ={}, cwd=tmp_path)
    assert load_config({"user": "root"}, environ={}, cwd=tmp_path).user == "root"


def test_an_env_file_keeps_secrets_off_the_command_line(tmp_path: Path) -> None:
    env_file = tmp_path / "fleet.env"
    env_file.write_text("# the proxy\nHTTPS_PROXY=http://user:p#ss=word@proxy:3128\n\nOLLAMA_NUM_PARALLEL=2\n")
    env_file.chmod(0o600)
    config = load_config({"env_file": str(env_file), "env": ["OLLAMA_NUM_PARALLEL=4"]}, environ={}, cwd=tmp_path)
    assert config.env == {"HTTPS_PROXY": "http://user:p#ss=word@proxy:3128", "OLLAMA_NUM_PARALLEL": "4"}
    env_file.write_text("HTTPS_PROXY\n")
    with pytest.raises(BadInput, match=r"^env_file: line 1 of .* is not KEY=VALUE$"):
        load_config({"env_file": str(env_file)}, environ={}, cwd=tmp_path)
    env_file.write_text("CUDA_VISIBLE_DEVICES=1\n")
    with pytest.raises(BadInput, match=r"^env_file: .*CUDA_VISIBLE_DEVICES is set by the fleet"):
        load_config({"env_file": str(env_file)}, environ={}, cwd=tmp_path)
