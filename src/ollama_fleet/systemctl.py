"""The systemd seam: `systemctl` to steer units, `systemctl show` and `journalctl` to read
what systemd knows of them. Tests put a fake systemctl and journalctl on PATH."""

from __future__ import annotations

import shutil
import subprocess

from ollama_fleet.errors import Missing, UserError


class Systemctl:
    """`systemctl`, refusing early when it is absent or systemd is not the init system."""

    def __init__(self, path: str | None) -> None:
        hint = "stage the files with --root DIR, or write them without starting anything with --no-enable"
        if path is None:
            raise Missing(f"systemctl not found: this machine does not run systemd; {hint}")
        self.path = path
        state = subprocess.run([path, "is-system-running"], capture_output=True, text=True).stdout.strip()
        # offline: systemd is not PID 1 (a container, another init). "degraded" is fine.
        if state in ("offline", "unknown", ""):
            raise Missing(
                f"systemd is not the init system here (systemctl is-system-running: {state or 'no answer'}); {hint}"
            )

    def __call__(self, *args: str) -> None:
        proc = subprocess.run([self.path, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()
            said = detail[-1] if detail else f"exit {proc.returncode}"
            # "Job for X failed. See systemctl status": what the failed units said instead.
            failed = [a for a in args if a.endswith(".service") and not self.is_active(a)]
            raise UserError(f"systemctl {' '.join(args)} failed: {said}" + "".join(map(journal_tail, failed)))

    def is_active(self, unit: str) -> bool:
        return subprocess.run([self.path, "is-active", "--quiet", unit], capture_output=True).returncode == 0


def unit_facts(unit: str) -> dict[str, str]:
    """`systemctl show` of a unit (MainPID, NRestarts, InvocationID, ...): readable by any
    user, unlike the listening sockets of another user's processes. Empty without systemd."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return {}
    shown = subprocess.run(
        [systemctl, "show", "-p", "MainPID", "-p", "NRestarts", "-p", "InvocationID", "-p", "ActiveState", unit],
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


def journal_tail(unit: str, lines: int = 10) -> str:
    """The unit's last journal lines, indented, to explain a failure ("" when unreadable)."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return ""
    proc = subprocess.run(
        [journalctl, "-u", unit, "-n", str(lines), "-o", "cat", "--no-pager", "-q"], capture_output=True, text=True
    )
    tail = proc.stdout.strip().splitlines() if proc.returncode == 0 else []
    return f"; last lines of journalctl -u {unit}:\n" + "\n".join("    " + line for line in tail) if tail else ""


def journal_lines(unit: str) -> list[str] | None:
    """What the unit's current run wrote (its journal entries under its InvocationID), or
    None where the journal cannot tell (no systemd, or no right to read it: as a user, join
    the systemd-journal group)."""
    invocation = unit_facts(unit).get("InvocationID")
    journalctl = shutil.which("journalctl")
    if not invocation or journalctl is None:
        return None
    proc = subprocess.run(
        [journalctl, f"_SYSTEMD_INVOCATION_ID={invocation}", "-o", "cat", "--no-pager", "-q"],
        capture_output=True,
        text=True,
    )
    return proc.stdout.splitlines() if proc.returncode == 0 else None


def journal_since(unit: str, seconds: int) -> list[str]:
    """What the unit wrote in the last `seconds` (all its runs); UserError when the journal
    cannot be read."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise UserError(f"reading the journal of {unit} needs journalctl, which is not installed")
    proc = subprocess.run(
        [journalctl, "-u", unit, "-o", "cat", "--no-pager", "-q", "--since", f"-{seconds}s"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise UserError(f"journalctl -u {unit} failed: {proc.stderr.strip()}")
    return proc.stdout.splitlines()
