"""GPU discovery through the fake pynvml at the gpus.py seam, and `--gpus` selection."""

from __future__ import annotations

import pytest

from ollama_fleet import gpus
from ollama_fleet.errors import EXIT_BAD_INPUT, EXIT_MISSING, BadInput, Missing


@pytest.mark.parametrize("count", [0, 1, 8])
def test_discover_counts_devices(nvml, count: int) -> None:
    nvml(count)
    found = gpus.discover()
    assert [g.index for g in found] == list(range(count))
    assert all(g.uuid and g.uuid.startswith("GPU-") for g in found)


def test_discover_reads_every_fact(nvml) -> None:
    nvml(2)
    gpu = gpus.discover()[1]
    assert gpu.name == "NVIDIA GeForce RTX 4090"
    assert gpu.memory_total == 24 * 2**30
    assert gpu.memory_used == 2**30
    assert gpu.utilization == 10
    assert gpu.pci_bus_id == "00000000:11:00.0"  # bytes from old NVML bindings become text


def test_mig_gpu_is_replaced_by_its_slices(nvml) -> None:
    nvml(2, mig="1")
    found = gpus.discover()
    assert [g.label for g in found] == ["gpu0", "gpu1-mig0", "gpu1-mig1"]
    assert found[1].uuid.startswith("MIG-")
    assert found[1].utilization is None  # NVML answers NotSupported for slices


def test_select_by_index_and_uuid(nvml) -> None:
    nvml(8)
    found = gpus.discover()
    assert [g.index for g in gpus.select(found, ("3", "1"))] == [1, 3]
    assert [g.index for g in gpus.select(found, (found[5].uuid,))] == [5]


def test_selecting_a_missing_gpu_names_it(nvml) -> None:
    nvml(8)
    with pytest.raises(BadInput, match=r"gpus: no GPU 9 on this machine \(indices found: 0, 1, 2, 3, 4, 5, 6, 7\)"):
        gpus.resolve(("9",))


def test_without_nvml_indices_are_pinned_by_index(nvml) -> None:
    nvml("missing")
    found = gpus.resolve(("1", "0"))
    assert found.pinned_by == "index"
    assert [(g.index, g.uuid) for g in found.gpus] == [(0, None), (1, None)]
    assert "pinning by index" in (found.note or "")


def test_without_nvml_and_without_gpus_exit_3(nvml) -> None:
    nvml("missing")
    with pytest.raises(Missing, match="--gpus") as info:
        gpus.resolve("all")
    assert info.value.exit_code == EXIT_MISSING


def test_without_nvml_uuids_cannot_be_resolved(nvml) -> None:
    nvml("missing")
    with pytest.raises(Missing, match="UUIDs need NVML"):
        gpus.resolve(("GPU-1234",))


def test_bad_input_exit_code() -> None:
    assert BadInput("x").exit_code == EXIT_BAD_INPUT
