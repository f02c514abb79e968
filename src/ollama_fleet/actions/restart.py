"""`restart`: restart instances, or roll through them without cutting a stream.

A rolling restart takes one instance at a time: the gateway stops sending it new requests
(drain), the requests it serves finish (bounded by a timeout that is reported, never
silently exceeded), it restarts, answers, gets its models back, and the gateway sends it
requests again. Ollama closes every connection at once on SIGTERM (server/routes.go Serve), so
without the drain every stream on it would be cut.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ollama_fleet import probe
from ollama_fleet.actions import Progress
from ollama_fleet.errors import BadInput, FleetError, Interrupted, UserError
from ollama_fleet.fleet import Fleet


@dataclass
class Outcome:
    restarted: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _chosen(names: list[str], known: list[str]) -> list[str]:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadInput([f"instance: no instance {n!r} in this fleet (instances: {', '.join(known)})" for n in unknown])
    return names or known


def restart(
    fleet: Fleet, names: list[str], *, rolling: bool, drain_timeout: float, wait_timeout: float, progress: Progress
) -> Outcome:
    """Restart `names` (all when empty); with `rolling`, one at a time, drained first."""
    say = progress.say
    chosen = _chosen(names, fleet.names)
    outcome = Outcome()
    if not rolling:
        say(f"restarting {', '.join(chosen)}")
        failed = fleet.restart(chosen, wait_timeout)
        outcome.problems += failed.values()
        outcome.restarted = [n for n in chosen if n not in failed]
        for name in outcome.restarted:
            outcome.problems += fleet.preload(name, max(wait_timeout, probe.PRELOAD_TIMEOUT))
        return outcome
    if fleet.engine is None:
        raise UserError(
            "restart --rolling drains each instance through the gateway, and this fleet runs none "
            "(or, installed with systemd, uses the system's nginx): restart without --rolling, or use --engine haproxy"
        )
    if len(fleet.names) == 1:
        progress.warn("one instance only: while it restarts, new requests have nowhere to go")
    for name in chosen:
        started = time.monotonic()
        say(f"{name}: draining")
        try:
            if not _roll(fleet, name, drain_timeout, wait_timeout, outcome, say):
                break
        except (Interrupted, KeyboardInterrupt) as exc:
            _put_back(fleet, name, progress)
            raise exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT) from None
        outcome.restarted.append(name)
        say(f"{name}: back in the gateway after {time.monotonic() - started:.1f}s")
    return outcome


def _roll(
    fleet: Fleet, name: str, drain_timeout: float, wait_timeout: float, outcome: Outcome, say: Callable[[str], None]
) -> bool:
    """Drain, restart, preload and undrain one instance; False when it did not come back."""
    assert fleet.engine is not None
    started = time.monotonic()
    left = fleet.engine.drain(fleet.drain_home, name, drain_timeout)
    if left:
        # Said, not hidden: these streams are cut by the restart.
        outcome.problems.append(f"{name}: {left} request(s) still in flight after {drain_timeout:g}s; restarted anyway")
    say(f"{name}: drained in {time.monotonic() - started:.1f}s; restarting")
    failed = fleet.restart([name], wait_timeout)
    if failed:
        outcome.problems += failed.values()
        say(f"{name}: did not come back; stopping the roll here (it stays drained)")
        return False
    outcome.problems += fleet.preload(name, max(wait_timeout, probe.PRELOAD_TIMEOUT))
    fleet.engine.undrain(fleet.drain_home, name, wait_timeout)
    return True


UNDRAIN_ON_INTERRUPT_S = 5.0


def _put_back(fleet: Fleet, name: str, progress: Progress) -> None:
    """A roll stopped by Ctrl-C or SIGTERM: the instance it was on goes back into the
    gateway (its health check keeps it out until it answers), or it is said which one is
    left drained and how to finish it."""
    assert fleet.engine is not None
    try:
        fleet.engine.undrain(fleet.drain_home, name, UNDRAIN_ON_INTERRUPT_S)
        progress.warn(f"interrupted: {name} is back in the gateway; the instances after it were not restarted")
    except (FleetError, OSError) as exc:
        progress.warn(
            f"interrupted: {name} is left drained ({exc}); `ollama-fleet restart --rolling {name}` "
            "restarts it and puts it back in the gateway"
        )
