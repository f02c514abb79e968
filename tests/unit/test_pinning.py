"""Pinning verified from Ollama's own "inference compute" lines (discover/types.go)."""

from __future__ import annotations

import pytest

from ollama_fleet.pinning import Device, devices, problem, same_pci
from ollama_fleet.plan import GpuRef

UUID0 = "GPU-00000000-1111-2222-3333-444444444444"
UUID1 = "GPU-00000001-1111-2222-3333-444444444444"
LINE = (
    'time=2026-11-29T10:00:01.123456789+01:00 level=INFO source=types.go:42 msg="inference compute" id={id} '
    'filter_id={filter} library={library} compute=8.9 name={library}{id} description="NVIDIA GeForce RTX 4090" '
    'libdirs=ollama,cuda_v13 driver=13.0 pci_id={pci} type=discrete total="23.5 GiB" available="23.1 GiB"'
)
CPU = (
    'time=2026-11-29T10:00:01Z level=INFO source=types.go:50 msg="inference compute" id=cpu library=cpu compute="" '
    'name=cpu description=cpu libdirs=ollama driver="" pci_id="" type="" total="62.7 GiB" available="60.1 GiB"'
)
STARTED = (
    'time=2026-11-29T10:00:00Z level=INFO source=routes.go:2008 msg="Listening on 127.0.0.1:11534 (version 0.33.0)"'
)
GPU0 = (GpuRef(index=0, uuid=UUID0, pci_bus_id="00000000:10:00.0"),)


def cuda(filter_id: str, pci: str, n: int = 0) -> str:
    return LINE.format(id=n, filter=filter_id, library="CUDA", pci=pci)


def test_the_latest_start_counts() -> None:
    log = [STARTED, CPU, STARTED, "[GIN] 200 GET /api/version", cuda(UUID0, "0000:10:00.0")]
    found = devices(log)
    assert found == [
        Device(id="0", library="CUDA", filter_id=UUID0, pci_id="0000:10:00.0", description="NVIDIA GeForce RTX 4090")
    ]
    assert devices([STARTED]) is None and devices([CPU, STARTED]) is None


@pytest.mark.parametrize(
    ("lines", "pin", "wrong"),
    [
        ([cuda(UUID0, "0000:10:00.0")], GPU0, None),
        ([cuda("0", "0000:10:00.0")], GPU0, None),  # known by PCI id when the token is an index
        ([CPU], GPU0, "runs on the CPU"),
        (
            [cuda(UUID0, "0000:10:00.0"), LINE.format(id=0, filter=1, library="Vulkan", pci="0000:11:00.0")],
            GPU0,
            "sees Vulkan 1 (0000:11:00.0) beyond its pin",
        ),
        ([cuda(UUID1, "0000:11:00.0")], GPU0, "uses CUDA GPU-00000001"),
        ([cuda(UUID0, "0000:10:00.0"), cuda(UUID1, "0000:11:00.0", 1)], (*GPU0, GpuRef(index=1, uuid=UUID1)), None),
        ([cuda(UUID0, "0000:10:00.0")], (*GPU0, GpuRef(index=1, uuid=UUID1)), "sees 1 CUDA device(s), but was given 2"),
        # Without NVML (pinned by index): count and library only.
        ([cuda("3", "0000:13:00.0")], (GpuRef(index=3, uuid=None),), None),
        ([cuda("3", "0000:13:00.0"), cuda("4", "0000:14:00.0", 1)], (GpuRef(index=3, uuid=None),), "but was given 1"),
    ],
)
def test_problem(lines: list[str], pin: tuple[GpuRef, ...], wrong: str | None) -> None:
    found = devices(lines)
    assert found is not None
    said = problem(pin, found)
    assert (said is None) if wrong is None else (said is not None and wrong in said), said


def test_pci_ids_compare_as_numbers() -> None:
    assert same_pci("00000000:10:00.0", "0000:10:00.0")
    assert same_pci("0000:0A:00.0", "0000:0a:00.0")
    assert not same_pci("0000:10:00.0", "0000:11:00.0")
    assert not same_pci("", "") and not same_pci(None, "0000:10:00.0")
