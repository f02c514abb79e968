"""Waiting for instances the supervisor started: until each answers `GET /api/version` and
has logged its devices, exits, or times out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ollama_fleet.pinning import Device
from ollama_fleet.processes import with_log_tail
from ollama_fleet.state import Desired, read_actual

# Ollama binds its port before GPU discovery and answers after it: a probe sent meanwhile
# waits in the backlog, so it is given long enough to be answered, not retried.
PROBE_TIMEOUT = 3.0
DEVICES_GRACE = 3.0  # seconds an answering instance gets to have its device lines read


@dataclass
class Readiness:
    versions: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why, with its log tail
    # name -> the devices it logged; None: it answered but logged none (an Ollama that does
    # not, or lines not yet read after DEVICES_GRACE): its pinning is unverified.
    devices: dict[str, list[Device] | None] = field(default_factory=dict)


def wait_ready(
    state_dir: Path,
    desired: Desired,
    timeout: float,
    tick: Callable[[], None],
    progress: Callable[[int, int], None] = lambda ready, total: None,
) -> Readiness:
    """Poll until every instance of `desired` answers `GET /api/version` and its device lines
    are read (or DEVICES_GRACE passed), exits, or times out.

    `tick` runs the supervisor's loop when it is attached, or checks the background one lives.
    """
    # Imported here, once the instances are starting: probe brings asyncio (and httpx), which
    # `up` would otherwise pay for before it starts them (docs/architecture.md, "Start-up").
    from ollama_fleet import probe

    result = Readiness()
    baseline: dict[str, int] = {}
    answered: dict[str, float] = {}  # name -> when it first answered
    pending = {inst.name: inst for inst in desired.instances}
    deadline = time.monotonic() + timeout
    while pending:
        tick()
        actual = read_actual(state_dir)
        states = actual.instances if actual else {}
        probing = {}
        for name, inst in pending.items():
            st = states.get(name)
            if st is None or st.spec != desired.fingerprint(inst):
                continue  # the supervisor has not taken this plan yet
            baseline.setdefault(name, st.exits)
            if st.exits > baseline[name]:
                result.failed[name] = with_log_tail(f"{name} exited during start-up ({st.last_exit})", inst.log)
            elif name in answered:
                # Ollama logs its devices before it serves; the supervisor reads them a
                # moment later. An Ollama that never logs them is let go after the grace.
                if st.devices is not None or time.monotonic() - answered[name] > DEVICES_GRACE:
                    result.devices[name] = st.devices
            elif st.pid is not None:
                probing[name] = inst.address
        for name in [*result.failed, *result.devices]:
            pending.pop(name, None)
        for name in result.failed:
            result.versions.pop(name, None)
        # Said before the probe, which waits for answers: the first status comes at once.
        progress(len(result.devices), len(desired.instances))
        for address_name, version in zip(
            probing, probe.versions(list(probing.values()), timeout=PROBE_TIMEOUT).values(), strict=True
        ):
            if version is not None:
                result.versions[address_name] = version
                answered[address_name] = time.monotonic()
        if pending and time.monotonic() > deadline:
            for name, inst in pending.items():
                if name in answered:
                    result.devices[name] = None
                else:
                    result.failed[name] = with_log_tail(
                        f"{name} did not answer GET /api/version within {timeout:g}s", inst.log
                    )
            break
        if pending and not answered.keys() & probing.keys():
            # An instance that answered has logged its devices already, and the supervisor
            # writes them at once: look again now after an answer, soon while one waits.
            time.sleep(0.01 if answered.keys() & pending.keys() else 0.05)
    return result
