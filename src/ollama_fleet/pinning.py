"""Is each instance on its own GPUs? Read from Ollama's own log, not assumed.

After GPU discovery Ollama logs one `msg="inference compute"` line per device it will use
(ollama/ollama `discover/types.go` LogDetails): `id=<index> filter_id=<the pin token>
library=CUDA ... pci_id=<bus id>`, or a single `id=cpu library=cpu` when it found none.
Ollama's Vulkan backend ignores CUDA_VISIBLE_DEVICES, so a leak shows up here as a Vulkan
device (ollama/ollama#16508). The checks are pure; reading the lines is the caller's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from pydantic import BaseModel

from ollama_fleet.plan import GpuRef, Instance

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_STARTED = 'msg="Listening on'  # logged by each start, before discovery (server/routes.go Serve)


class Device(BaseModel):
    """One device an instance said it will use."""

    id: str
    library: str  # CUDA, ROCm, Vulkan, cpu
    filter_id: str = ""  # the CUDA_VISIBLE_DEVICES token it was found through
    pci_id: str = ""
    description: str = ""

    @property
    def label(self) -> str:
        if self.library == "cpu":
            return "cpu"
        token = self.filter_id or self.id
        return f"{self.library} {token}" + (f" ({self.pci_id})" if self.pci_id else "")


def _fields(line: str) -> dict[str, str]:
    return {k: json.loads(v) if v.startswith('"') else v for k, v in _FIELD.findall(line)}


def starts(line: str) -> bool:
    """Does this log line open a new start of Ollama (its devices follow)?"""
    return _STARTED in line


def device(line: str) -> Device | None:
    """The device an "inference compute" line names, else None."""
    if 'msg="inference compute"' not in line:
        return None
    fields = _fields(line)
    return Device(
        id=fields.get("id", ""),
        library=fields.get("library", ""),
        filter_id=fields.get("filter_id", ""),
        pci_id=fields.get("pci_id", ""),
        description=fields.get("description", ""),
    )


def devices(lines: Iterable[str]) -> list[Device] | None:
    """The devices of the latest start in a log (lines after its last "Listening on"), or
    None when that start has logged none yet (still discovering, or an Ollama that does not
    log them)."""
    found: list[Device] | None = None
    for line in lines:
        if starts(line):
            found = None
        elif (dev := device(line)) is not None:
            found = [*(found or []), dev]
    return found


def same_pci(a: str | None, b: str | None) -> bool:
    """NVML writes `00000000:10:00.0`, CUDA `0000:10:00.0`: compare domain, bus, device and
    function as numbers."""

    def parts(text: str) -> tuple[int, ...] | None:
        match = re.fullmatch(r"([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F]+)", text.strip())
        return tuple(int(p, 16) for p in match.groups()) if match else None

    return bool(a and b) and parts(a or "") is not None and parts(a or "") == parts(b or "")


def problem(gpus: tuple[GpuRef, ...], found: list[Device]) -> str | None:
    """What is wrong with the devices an instance uses, given the GPUs it was pinned to, or
    None when they are exactly its own. Pinned by UUID (NVML known), each CUDA device must be
    one of its GPUs by UUID or PCI bus id; pinned by index (no NVML), count and library."""
    if any(d.library == "cpu" for d in found):
        return "runs on the CPU: Ollama found no usable GPU (is the NVIDIA driver loaded, and does the pin name a GPU?)"
    foreign = [d for d in found if d.library != "CUDA"]
    if foreign:
        return (
            f"sees {', '.join(d.label for d in foreign)} beyond its pin: a non-CUDA backend ignores "
            "CUDA_VISIBLE_DEVICES (set OLLAMA_VULKAN=0, as the fleet does)"
        )
    if all(g.uuid for g in gpus):

        def own(d: Device) -> bool:
            return any(d.filter_id == g.uuid or same_pci(d.pci_id, g.pci_bus_id) for g in gpus)

        strangers = [d for d in found if not own(d)]
        if strangers:
            return f"uses {', '.join(d.label for d in strangers)}, not its own GPU"
    if len(found) != len(gpus):
        return f"sees {len(found)} CUDA device(s), but was given {len(gpus)}"
    return None


def check(instances: Iterable[Instance], found: dict[str, list[Device] | None]) -> tuple[dict[str, str], list[str]]:
    """Each instance's devices against its pin: (name -> what is wrong, names unverified
    because their Ollama logged no device)."""
    wrong: dict[str, str] = {}
    unverified = []
    for inst in instances:
        if inst.name not in found:
            continue
        seen = found[inst.name]
        if seen is None:
            unverified.append(inst.name)
        elif (why := problem(inst.gpus, seen)) is not None:
            wrong[inst.name] = (
                f"{inst.name} {why} (pinned to CUDA_VISIBLE_DEVICES={inst.env.get('CUDA_VISIBLE_DEVICES')})"
            )
    return wrong, unverified
