"""PURE: what converging to a new plan does to each instance (start, keep, restart, stop),
with the reason, for `up` to say before it acts."""

from __future__ import annotations

from dataclasses import dataclass

from ollama_fleet.plan import Instance
from ollama_fleet.state import Actual, Desired


@dataclass
class Change:
    name: str
    action: str  # "start", "keep", "restart", "stop"
    why: str = ""


def changes(old: Desired | None, actual: Actual | None, new: Desired) -> list[Change]:
    """What converging to `new` does to each instance, for `up` to say before it acts."""
    live = {
        name: st
        for name, st in (actual.instances.items() if actual else [])
        if st.record is not None and st.record.process() is not None
    }
    previous = {inst.name: inst for inst in (old.instances if old else ())}
    result = []
    for inst in new.instances:
        state = live.get(inst.name)
        if state is None:
            result.append(Change(inst.name, "start"))
        elif state.spec == new.fingerprint(inst):
            result.append(Change(inst.name, "keep"))
        else:
            result.append(Change(inst.name, "restart", _diff(previous.get(inst.name), inst, old, new)))
    wanted = {inst.name for inst in new.instances}
    result += [Change(name, "stop", "no longer in the plan") for name in live if name not in wanted]
    return result


def _diff(before: Instance | None, after: Instance, old: Desired | None, new: Desired) -> str:
    if before is None or old is None:
        return "plan changed"
    keys = sorted(k for k in set(before.env) | set(after.env) if before.env.get(k) != after.env.get(k))
    parts = [f"{k} {before.env.get(k, '(unset)')} → {after.env.get(k, '(unset)')}" for k in keys]
    if old.ollama_bin != new.ollama_bin:
        parts.append(f"ollama binary {old.ollama_bin} → {new.ollama_bin}")
    if old.user != new.user:
        parts.append(f"user {old.user} → {new.user}")
    return "plan changed: " + ", ".join(parts) if parts else "plan changed"
