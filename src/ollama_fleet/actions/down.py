"""`down`: stop the gateway, the supervisor (so it restarts nothing) and every instance's
process group (SIGTERM, SIGKILL after the timeout); clear the state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ollama_fleet.processes import stop_processes
from ollama_fleet.state import ACTUAL, DESIRED, GATEWAY, read_actual, read_gateway
from ollama_fleet.systemd import read_manifest


@dataclass
class DownReport:
    stopped: int | None  # instances stopped; None: there was no fleet to stop here
    gateway: bool = False  # a gateway was stopped
    installed: bool = False  # a fleet installed with systemd exists (stopped with systemctl)


def stop_fleet(state_dir: Path, timeout: float) -> tuple[int, bool] | None:
    """`down`: the gateway, the supervisor (so it restarts nothing), every instance group.

    Returns how many instances were stopped and whether a gateway was, or None when there
    was nothing to stop.
    """
    actual = read_actual(state_dir)
    desired_path = state_dir / DESIRED
    gateway = read_gateway(state_dir)
    if actual is None and gateway is None and not desired_path.exists():
        return None
    # SIGTERM to nginx's master: its fast shutdown.
    gateway_stopped = bool(gateway and gateway.process and stop_processes([gateway.process], timeout))
    (state_dir / GATEWAY).unlink(missing_ok=True)
    stopped = 0
    if actual is not None:
        instances = [st.record for st in actual.instances.values() if st.record is not None]
        live = [r for r in instances if r.process() is not None]
        stop_processes([actual.supervisor, *live], timeout)
        stopped = len(live)
        # The supervisor may have restarted one between our read and its exit.
        again = read_actual(state_dir)
        if again is not None:
            stopped += stop_processes(
                [st.record for st in again.instances.values() if st.record is not None and st.record not in live],
                timeout,
            )
    for path in (state_dir / ACTUAL, desired_path):
        path.unlink(missing_ok=True)
    return stopped, gateway_stopped


def down(state_dir: Path, timeout: float) -> DownReport:
    stopped = stop_fleet(state_dir, timeout)
    if stopped is None:
        return DownReport(stopped=None, installed=read_manifest() is not None)
    return DownReport(stopped=stopped[0], gateway=stopped[1])
