"""install-systemd / uninstall-systemd: units judged by the real `systemd-analyze verify`,
golden files, idempotence, dry runs, the manifest, and the systemctl calls (a fake
`systemctl` on PATH records them: these machines do not boot with systemd)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ollama_fleet import __version__
from ollama_fleet.render import render
from tests.helpers import FAKES, TESTS, require_root, require_tool, subprocess_env

GOLDEN = TESTS / "golden" / "systemd"
UNITS = "etc/systemd/system"
CONF = "etc/ollama-fleet"


@pytest.fixture
def ollama_bin(tmp_path: Path) -> Path:
    """An executable at a path with a `%` in it: systemd would expand it unless doubled."""
    path = tmp_path / "bin%i" / "ollama"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def install(
    tmp_path: Path, *args: str, gpus: int = 2, path: str | None = None, **env: str
) -> subprocess.CompletedProcess:
    environ = subprocess_env(FAKE_NVML_GPUS=str(gpus), OLLAMA_FLEET_MODELS_DIR=str(tmp_path / "models%q"))
    environ.update(env)
    if path is not None:
        environ["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "ollama_fleet", *args], env=environ, capture_output=True, text=True, timeout=60
    )


def staged(tmp_path: Path, root: Path, ollama_bin: Path, *args: str, gpus: int = 2) -> subprocess.CompletedProcess:
    result = install(
        tmp_path,
        "install-systemd",
        "--root",
        str(root),
        "--ollama-bin",
        str(ollama_bin),
        "--listen",
        "127.0.0.1:8080",
        *args,
        gpus=gpus,
    )
    assert result.returncode == 0, result.stderr
    return result


def files_under(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_units_pass_systemd_analyze_verify_without_a_warning(tmp_path: Path, ollama_bin: Path, gpus: int) -> None:
    analyze = require_tool("systemd-analyze")
    root = tmp_path / "root"
    staged(tmp_path, root, ollama_bin, gpus=gpus)
    names = [f"gpu{i}" for i in range(gpus)]
    assert sorted(p.stem for p in (root / CONF).glob("*.env")) == names
    result = subprocess.run(
        [analyze, "verify", "ollama-fleet.target", *(f"ollama-fleet@{n}.service" for n in names)],
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{root / UNITS}:"},  # trailing ':' appends the default path
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")
    target = (root / UNITS / "ollama-fleet.target").read_text()
    assert [line for line in target.splitlines() if line.startswith("Wants=ollama")] == [
        f"Wants=ollama-fleet@{n}.service" for n in names
    ]


def exposure(analyze: str, units: Path, unit: str) -> float:
    """`systemd-analyze security`'s overall exposure of a unit file (0 best, 10 worst)."""
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", unit], cwd=units, capture_output=True, text=True
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found[1])


def test_the_units_are_hardened(tmp_path: Path, ollama_bin: Path) -> None:
    """Scored by systemd itself (#23 item 12): the instance unit <= 3.0, the HAProxy gateway
    and front units <= 5.0 (they were 8.2 and 9.6); the boot test runs them under systemd."""
    analyze = require_tool("systemd-analyze")
    require_tool("haproxy")
    root = tmp_path / "root"
    staged(tmp_path, root, ollama_bin, "--engine", "haproxy", "--user", "daemon", gpus=1)
    assert exposure(analyze, root / UNITS, "ollama-fleet@.service") <= 3.0
    assert exposure(analyze, root / UNITS, "ollama-fleet-gateway.service") <= 5.0
    unit = [line for line in (root / UNITS / "ollama-fleet@.service").read_text().splitlines() if "#" not in line]
    for never in ("PrivateDevices=", "ProtectClock=", "MemoryDenyWriteExecute=", "ProcSubset="):
        assert not any(line.startswith(never) for line in unit), f"{never} would keep CUDA or NVML from the GPUs"
    front = render("front/ollama-fleet-front.service.j2", haproxy="/usr/sbin/haproxy", config="/etc/x.cfg")
    (root / UNITS / "ollama-fleet-front.service").write_text(front)
    assert exposure(analyze, root / UNITS, "ollama-fleet-front.service") <= 5.0


def test_verify_is_a_real_judge(tmp_path: Path, ollama_bin: Path) -> None:
    """A unit with an unknown key or an undoubled % fails the same verify."""
    analyze = require_tool("systemd-analyze")
    root = tmp_path / "root"
    staged(tmp_path, root, ollama_bin, gpus=1)
    unit = root / UNITS / "ollama-fleet@.service"
    unit.write_text(unit.read_text().replace("%%i", "%i"))
    result = subprocess.run(
        [analyze, "verify", "ollama-fleet@gpu0.service"],
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{root / UNITS}:"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "is not executable" in result.stderr


def test_golden_files(tmp_path: Path, ollama_bin: Path) -> None:
    root = tmp_path / "root"
    staged(tmp_path, root, ollama_bin, "--env", "OLLAMA_ORIGINS=http://a.example", gpus=2)
    rendered = {
        "ollama-fleet@.service": root / UNITS / "ollama-fleet@.service",
        "ollama-fleet.target": root / UNITS / "ollama-fleet.target",
        "gpu0.env": root / CONF / "gpu0.env",
        "gpu1.env": root / CONF / "gpu1.env",
    }
    for name, path in rendered.items():
        text = path.read_text().replace(str(tmp_path), "<tmp>").replace(__version__, "<version>")
        if os.environ.get("UPDATE_GOLDEN"):
            (GOLDEN / name).write_text(text)
        assert text == (GOLDEN / name).read_text(), name
    assert oct((root / CONF / "gpu0.env").stat().st_mode & 0o777) == "0o600"


def test_env_values_survive_quoting(tmp_path: Path, ollama_bin: Path) -> None:
    """%, quotes, backslashes, $ and backticks reach the instance as typed. systemd expands
    no specifiers in EnvironmentFile= (so % stays single there) and reads its quoting as a
    POSIX shell does: the shell is the judge here, systemd-analyze cannot read env files."""
    root = tmp_path / "root"
    value = """50% "quoted" 'single' back\\slash $HOME `cmd` ;{}#"""
    staged(tmp_path, root, ollama_bin, "--env", f"TRICKY={value}", gpus=1)
    env_file = root / CONF / "gpu0.env"
    read = subprocess.run(["sh", "-c", f'set -a; . "{env_file}"; printf %s "$TRICKY"'], capture_output=True, text=True)
    assert read.stdout == value
    # In the unit file, where systemd expands specifiers, the models dir's % is doubled.
    unit = (root / UNITS / "ollama-fleet@.service").read_text()
    assert f"ReadWritePaths=-{tmp_path}/models%%q\n" in unit
    assert f"ExecStart={tmp_path}/bin%%i/ollama serve\n" in unit


def test_second_install_is_unchanged_and_touches_nothing(tmp_path: Path, ollama_bin: Path) -> None:
    root = tmp_path / "root"
    staged(tmp_path, root, ollama_bin, gpus=4)
    before = files_under(root)
    again = staged(tmp_path, root, ollama_bin, gpus=4)
    assert "unchanged" in again.stdout and "wrote" not in again.stdout
    assert files_under(root) == before


def test_shrinking_the_plan_removes_env_files(tmp_path: Path, ollama_bin: Path) -> None:
    root = tmp_path / "root"
    staged(tmp_path, root, ollama_bin, gpus=4)
    result = staged(tmp_path, root, ollama_bin, gpus=2)
    assert sorted(p.name for p in (root / CONF).glob("*.env")) == ["gpu0.env", "gpu1.env"]
    assert (
        "removed /etc/ollama-fleet/gpu2.env" in result.stdout and "removed /etc/ollama-fleet/gpu3.env" in result.stdout
    )
    assert "Wants=ollama-fleet@gpu2" not in (root / UNITS / "ollama-fleet.target").read_text()


def test_dry_run_prints_the_diff_and_writes_nothing(tmp_path: Path, ollama_bin: Path) -> None:
    root = tmp_path / "root"
    keys = tmp_path / "keys"
    keys.write_text("sk-first-secret-key\n")
    staged(tmp_path, root, ollama_bin, "--api-keys-file", str(keys), gpus=2)
    before = files_under(root)
    keys.write_text("sk-second-secret-key\n")
    result = staged(tmp_path, root, ollama_bin, "--dry-run", "--api-keys-file", str(keys), "--keep-alive", "1h", gpus=1)
    assert files_under(root) == before
    assert '-OLLAMA_KEEP_ALIVE="5m"' in result.stdout and '+OLLAMA_KEEP_ALIVE="1h"' in result.stdout
    assert "removed: /etc/ollama-fleet/gpu1.env" in result.stdout
    assert "secret" not in result.stdout + result.stderr  # neither the old key nor the new one
    assert "<redacted>" in result.stdout or "API keys change" in result.stdout
    # A change of keys alone is said, not shown.
    keys.write_text("sk-third-secret-key\n")
    result = staged(tmp_path, root, ollama_bin, "--dry-run", "--api-keys-file", str(keys), gpus=2)
    assert "/etc/nginx/conf.d/ollama-fleet.conf: API keys change (not shown)" in result.stdout
    assert "secret" not in result.stdout + result.stderr


def test_uninstall_removes_exactly_the_manifest_files(tmp_path: Path, ollama_bin: Path) -> None:
    root = tmp_path / "root"
    (root / UNITS).mkdir(parents=True)
    (root / UNITS / "other.service").write_text("[Service]\nExecStart=/bin/true\n")
    (root / "etc/nginx/conf.d").mkdir(parents=True)
    (root / "etc/nginx/conf.d/default.conf").write_text("# not ours\n")
    theirs = files_under(root)
    staged(tmp_path, root, ollama_bin, gpus=2)
    assert "etc/nginx/conf.d/ollama-fleet.conf" in files_under(root)
    result = install(tmp_path, "uninstall-systemd", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert files_under(root) == theirs
    again = install(tmp_path, "uninstall-systemd", "--root", str(root))
    assert again.returncode == 0 and "nothing to uninstall" in again.stdout


def test_no_gateway_skips_the_snippet(tmp_path: Path, ollama_bin: Path) -> None:
    root = tmp_path / "root"
    staged(tmp_path, root, ollama_bin, "--no-gateway", gpus=1)
    assert not (root / "etc/nginx").exists()


def test_a_snippet_nginx_rejects_leaves_the_old_one(tmp_path: Path, ollama_bin: Path) -> None:
    """`nginx -t` checks the snippet before it replaces the previous one."""
    require_tool("nginx")
    root = tmp_path / "root"
    staged(tmp_path, root, ollama_bin, gpus=1)
    snippet = root / "etc/nginx/conf.d/ollama-fleet.conf"
    before = snippet.read_text()
    # A valid setting nginx still refuses: a TLS certificate that is not one.
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    result = install(
        tmp_path,
        "install-systemd",
        "--root",
        str(root),
        "--ollama-bin",
        str(ollama_bin),
        "--tls-cert",
        str(tmp_path / "cert.pem"),
        "--tls-key",
        str(tmp_path / "key.pem"),
        gpus=1,
    )
    assert result.returncode == 1, result.stderr
    assert "nginx -t" in result.stderr and "Traceback" not in result.stderr
    assert snippet.read_text() == before


# ------------------------------------------------------------------ against the real root


def fake_systemctl_path(tmp_path: Path) -> str:
    """The fake systemctl and journalctl first (they need cat, grep and tail after them)."""
    return f"{FAKES / 'bin'}:{os.path.dirname(sys.executable)}:/usr/bin:/bin"


@pytest.mark.parametrize("state", [None, "offline"])
def test_without_systemd_as_init_it_exits_3_and_suggests_root(
    tmp_path: Path, ollama_bin: Path, state: str | None
) -> None:
    require_root()  # without root install-systemd refuses earlier (tested below)
    # No systemctl at all (an empty PATH), or one that says systemd is not PID 1.
    path = str(tmp_path) if state is None else fake_systemctl_path(tmp_path)
    result = install(
        tmp_path,
        "install-systemd",
        "--ollama-bin",
        str(ollama_bin),
        gpus=1,
        path=path,
        FAKE_SYSTEMCTL_STATE=state or "",
        FAKE_SYSTEMCTL_LOG=str(tmp_path / "calls"),
    )
    assert result.returncode == 3, result.stderr
    assert "--root" in result.stderr and "--no-enable" in result.stderr
    assert not Path("/etc/ollama-fleet/manifest.json").exists()


def test_unprivileged_against_the_real_root_is_refused(monkeypatch: pytest.MonkeyPatch, nvml, models_dir) -> None:
    from typer.testing import CliRunner

    from ollama_fleet.cli import app

    nvml(1)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the uid seam: an ordinary user
    result = CliRunner().invoke(app, ["install-systemd", "--ollama-bin", sys.executable])
    assert result.exit_code == 1
    assert "run it as root" in result.output and "--root DIR" in result.output


@pytest.fixture
def service_user():
    """A system user made for the test, with a home of its own (Ollama writes its key in
    ~/.ollama, so install-systemd refuses a user without a home, such as nobody); removed
    afterwards."""
    require_root()
    require_tool("useradd")
    name = f"fleet-test-{os.getpid() % 100000}"
    home = Path(tempfile.mkdtemp(prefix="fleet-test-home-"))
    home.chmod(0o755)
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
        capture_output=True,
    )
    try:
        shutil.chown(home, name, name)
        yield name, home
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def real_root(tmp_path: Path):
    """Install into the real /etc with a fake systemctl; every file is removed afterwards."""
    require_root()  # it writes /etc
    if Path("/etc/ollama-fleet").exists() or Path("/etc/systemd/system/ollama-fleet@.service").exists():
        pytest.fail("this machine already has an ollama-fleet install; the test will not touch it")
    # The service user must reach and write it: not under root's 0700 tmp_path.
    models = Path(tempfile.mkdtemp(prefix="fleet-models%"))
    models.chmod(0o777)
    calls = tmp_path / "calls"
    env = dict(FAKE_SYSTEMCTL_LOG=str(calls), OLLAMA_FLEET_MODELS_DIR=str(models))
    yield env, calls
    shutil.rmtree(models)
    for path in (
        "/etc/ollama-fleet",
        "/etc/systemd/system/ollama-fleet@.service",
        "/etc/systemd/system/ollama-fleet.target",
        "/etc/systemd/system/ollama-fleet-gateway.service",
        "/etc/nginx/conf.d/ollama-fleet.conf",
    ):
        p = Path(path)
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def test_enable_path_calls_systemctl_and_restarts_only_what_changed(
    tmp_path: Path, ollama_bin: Path, real_root, service_user
) -> None:
    env, calls = real_root
    user, home = service_user
    path = fake_systemctl_path(tmp_path)
    # --no-wait: the fake systemctl starts nothing that could answer.
    args = ["install-systemd", "--ollama-bin", str(ollama_bin), "--user", user, "--no-gateway", "--no-wait"]

    def run(*extra: str, gpus: int = 2) -> list[str]:
        calls.unlink(missing_ok=True)
        result = install(tmp_path, *args, *extra, gpus=gpus, path=path, **env)
        assert result.returncode == 0, result.stderr
        return calls.read_text().splitlines() if calls.exists() else []

    assert run() == ["daemon-reload", "enable --now ollama-fleet.target"]
    assert f"User={user}" in Path("/etc/systemd/system/ollama-fleet@.service").read_text()
    # Ollama writes its key to ~/.ollama before it listens: the dir exists, the user's own.
    state = home / ".ollama"
    assert state.is_dir() and state.owner() == user and oct(state.stat().st_mode & 0o777) == "0o755"
    assert f"ReadWritePaths=-{state}" in Path("/etc/systemd/system/ollama-fleet@.service").read_text()
    assert run() == ["enable --now ollama-fleet.target"]  # unchanged: nothing restarted
    assert run("--keep-alive", "1h") == [
        "try-restart ollama-fleet@gpu0.service ollama-fleet@gpu1.service",
        "enable --now ollama-fleet.target",
    ]
    assert run("--keep-alive", "1h", gpus=1) == [
        "stop ollama-fleet@gpu1.service",
        "daemon-reload",
        "enable --now ollama-fleet.target",
    ]
    assert not Path("/etc/ollama-fleet/gpu1.env").exists()
    calls.unlink()
    result = install(tmp_path, "uninstall-systemd", path=path, **env)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == ["disable --now ollama-fleet.target", "daemon-reload"]
    assert not Path("/etc/ollama-fleet").exists()
    assert not Path("/etc/systemd/system/ollama-fleet@.service").exists()


def test_a_missing_service_user_is_exit_3_with_the_useradd_line(tmp_path: Path, ollama_bin: Path, real_root) -> None:
    env, _ = real_root
    result = install(
        tmp_path,
        "install-systemd",
        "--ollama-bin",
        str(ollama_bin),
        "--user",
        "no-such-user-here",
        gpus=1,
        path=fake_systemctl_path(tmp_path),
        **env,
    )
    assert result.returncode == 3
    assert "useradd --system" in result.stderr and "no-such-user-here" in result.stderr
    assert not Path("/etc/ollama-fleet").exists()


def test_a_models_dir_the_user_cannot_write_is_exit_3(tmp_path: Path, ollama_bin: Path, real_root) -> None:
    env, _ = real_root
    private = tmp_path / "private-models"  # under root's 0700 tmp dir: nobody cannot reach it
    private.mkdir(mode=0o777)
    result = install(
        tmp_path,
        "install-systemd",
        "--ollama-bin",
        str(ollama_bin),
        "--user",
        "nobody",
        gpus=1,
        path=fake_systemctl_path(tmp_path),
        **{**env, "OLLAMA_FLEET_MODELS_DIR": str(private)},
    )
    assert result.returncode == 3, result.stderr
    # Said once, with the reason a chown cannot mend: a parent nobody may pass.
    assert f"user nobody can never reach {private}" in result.stderr and "mode 0700" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not Path("/etc/ollama-fleet").exists()


def test_restart_of_a_systemd_fleet_uses_systemctl(tmp_path: Path, ollama_bin: Path, real_root, service_user) -> None:
    from tests.helpers import start_instances, stop

    env, calls = real_root
    base, procs = start_instances(2)  # stand-ins for the units' processes, on their ports
    try:
        path = fake_systemctl_path(tmp_path)
        result = install(
            tmp_path,
            "install-systemd",
            "--ollama-bin",
            str(ollama_bin),
            "--user",
            service_user[0],
            "--no-gateway",
            "--base-port",
            str(base),
            path=path,
            **env,
        )
        assert result.returncode == 0, result.stderr
        assert "all 2 instance(s) answer" in result.stdout  # it waited for them
        calls.unlink()
        result = install(tmp_path, "restart", "gpu1", path=path, **env)
        assert result.returncode == 0, result.stderr
        assert calls.read_text().splitlines() == ["restart ollama-fleet@gpu1.service"]
        assert "restarted: gpu1" in result.stdout
        rolling = install(tmp_path, "restart", "--rolling", path=path, **env)
        assert rolling.returncode == 1 and "--rolling" in rolling.stderr
    finally:
        stop(procs)


def gateway_install_args(ollama_bin: Path, user: str) -> list[str]:
    """install-systemd with a gateway, against the fake systemctl (which starts nothing: no wait)."""
    return [
        "install-systemd",
        "--ollama-bin",
        str(ollama_bin),
        "--user",
        user,
        "--listen",
        "127.0.0.1:18080",
        "--no-wait",
    ]


def test_switching_the_gateway_from_haproxy_to_nginx_stops_the_old_unit(
    tmp_path: Path, ollama_bin: Path, real_root, service_user
) -> None:
    require_tool("haproxy")
    require_tool("nginx")
    env, calls = real_root
    path = fake_systemctl_path(tmp_path)
    args = gateway_install_args(ollama_bin, service_user[0])
    assert install(tmp_path, *args, "--engine", "haproxy", path=path, **env).returncode == 0
    assert Path("/etc/systemd/system/ollama-fleet-gateway.service").exists()
    calls.unlink()
    result = install(tmp_path, *args, "--engine", "nginx", path=path, **env)
    assert result.returncode == 0, result.stderr
    # nginx takes the port over first (both listen with SO_REUSEPORT), then the old one goes.
    assert calls.read_text().splitlines() == [
        "daemon-reload",
        "enable --now ollama-fleet.target",
        "reload nginx.service",
        "stop ollama-fleet-gateway.service",
    ]
    assert not Path("/etc/systemd/system/ollama-fleet-gateway.service").exists()
    assert not Path("/etc/ollama-fleet/haproxy.cfg").exists()
    assert Path("/etc/nginx/conf.d/ollama-fleet.conf").exists()


def test_nginx_not_running_is_started_and_said(tmp_path: Path, ollama_bin: Path, real_root, service_user) -> None:
    """The snippet is served only by a running nginx: install starts a stopped one and says
    so, and checks again on every run (a second run after a failed start mends it)."""
    require_tool("nginx")
    env, calls = real_root
    path = fake_systemctl_path(tmp_path)
    args = gateway_install_args(ollama_bin, service_user[0])
    first = install(tmp_path, *args, path=path, FAKE_SYSTEMCTL_INACTIVE="nginx.service", **env)
    assert first.returncode == 0, first.stderr
    assert "nginx.service was not running: started it" in first.stdout
    assert calls.read_text().splitlines()[-1] == "start nginx.service"
    calls.unlink()
    again = install(tmp_path, *args, path=path, **env)
    assert again.returncode == 0 and "unchanged" in again.stdout and "not running" not in again.stdout
    assert calls.read_text().splitlines() == ["enable --now ollama-fleet.target"]


def test_install_waits_and_fails_with_the_journal_of_what_did_not_come_up(
    tmp_path: Path, ollama_bin: Path, real_root, service_user
) -> None:
    """`Type=exec` reports a start as soon as the process runs: install asks each instance
    instead, and names the one that never answered with its journal's last lines."""
    from tests.helpers import FAKE_OLLAMA, fake_home, free_port_range, stop

    env, _ = real_root
    journal = tmp_path / "journal"
    journal.mkdir()
    (journal / "ollama-fleet@gpu1.service.log").write_text(
        "Couldn't find '/usr/share/ollama/.ollama/id_ed25519'. Generating new private key.\n"
        "Error: could not create directory mkdir /usr/share/ollama/.ollama: read-only file system\n"
    )
    base = free_port_range(2)
    # gpu0's unit "runs" (a stand-in on its port); gpu1's crash-loops, as its journal says.
    procs = [
        subprocess.Popen(
            [sys.executable, str(FAKE_OLLAMA), "serve"],
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ["PATH"], "HOME": fake_home(), "OLLAMA_HOST": f"127.0.0.1:{base}"},
        )
    ]
    try:
        result = install(
            tmp_path,
            "install-systemd",
            "--ollama-bin",
            str(ollama_bin),
            "--user",
            service_user[0],
            "--no-gateway",
            "--base-port",
            str(base),
            "--wait-timeout",
            "2",
            path=fake_systemctl_path(tmp_path),
            FAKE_JOURNAL_DIR=str(journal),
            **env,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert (
            "gpu1 did not answer GET /api/version within 2s; last lines of journalctl -u ollama-fleet@gpu1.service:"
            in result.stderr
        )
        assert "read-only file system" in result.stderr and "gpu0" not in result.stderr
    finally:
        stop(procs)


def test_the_default_models_dir_is_the_service_users_own(
    tmp_path: Path, ollama_bin: Path, real_root, service_user
) -> None:
    """Run as root with no models dir: not /root/.ollama/models (root's 0700 home, which the
    service user can never reach) but the service user's ~/.ollama/models."""
    env, _ = real_root
    user, home = service_user
    environ = subprocess_env(
        FAKE_NVML_GPUS="1", PATH=fake_systemctl_path(tmp_path), FAKE_SYSTEMCTL_LOG=env["FAKE_SYSTEMCTL_LOG"]
    )
    environ.pop("OLLAMA_FLEET_MODELS_DIR", None)
    argv = [
        sys.executable,
        "-m",
        "ollama_fleet",
        "install-systemd",
        "--ollama-bin",
        str(ollama_bin),
        "--user",
        user,
        "--no-gateway",
        "--no-wait",
    ]
    missing = subprocess.run(argv, env=environ, capture_output=True, text=True)
    assert missing.returncode == 3
    assert f"models_dir: {home}/.ollama/models does not exist (create it, owned by {user}" in missing.stderr
    (home / ".ollama" / "models").mkdir(parents=True)
    shutil.chown(home / ".ollama", user, user)
    shutil.chown(home / ".ollama" / "models", user, user)
    done = subprocess.run(argv, env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    unit = Path("/etc/systemd/system/ollama-fleet@.service").read_text()
    assert f"ReadWritePaths=-{home}/.ollama/models" in unit
