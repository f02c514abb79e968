"""GPU discovery through NVML (nvidia-ml-py, imported as `pynvml`) and `--gpus` selection.

This module is the NVML seam: tests put a fake `pynvml` module in its place.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ollama_fleet.errors import BadInput, Missing


class Gpu(BaseModel):
    """One schedulable device: a whole GPU, or one MIG slice of it (`mig` set)."""

    model_config = ConfigDict(frozen=True)

    index: int
    uuid: str | None  # None only when NVML is missing and the user pinned by index
    name: str = "unknown"
    mig: int | None = None
    memory_total: int | None = None  # bytes
    memory_used: int | None = None
    utilization: int | None = None  # percent, None where NVML has none (MIG slices)
    temperature: int | None = None  # degrees Celsius, of the whole GPU
    power: float | None = None  # watts drawn by the whole GPU
    pci_bus_id: str | None = None

    @property
    def label(self) -> str:
        return f"gpu{self.index}" if self.mig is None else f"gpu{self.index}-mig{self.mig}"


class NvmlUnavailable(Exception):
    """NVML cannot be used here (no driver, no library, a container without it)."""


class Discovery(BaseModel):
    """The selected GPUs and how instances will be pinned to them."""

    gpus: list[Gpu]
    pinned_by: Literal["uuid", "index"]
    note: str | None = None  # what the user should know (pinning by index without NVML)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency, but a broken install happens
        raise NvmlUnavailable(f"cannot import pynvml ({exc})") from None
    return pynvml


def _optional(call: Any, *args: Any) -> Any:
    """NVML answers NotSupported for some queries on some devices (utilisation of a MIG slice)."""
    nvml = _nvml()
    try:
        return call(*args)
    except nvml.NVMLError:
        return None


def discover() -> list[Gpu]:
    """Every GPU NVML sees, with MIG-enabled GPUs replaced by their slices, sorted by index."""
    nvml = _nvml()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML did not initialise: {exc}") from None
    try:
        found: list[Gpu] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            pci = _optional(nvml.nvmlDeviceGetPciInfo, handle)
            common = {"index": index, "pci_bus_id": _text(pci.busId) if pci is not None else None}
            slices = _mig_slices(nvml, handle)
            if slices:
                for n, mig in enumerate(slices):
                    found.append(Gpu(**common, **_facts(nvml, mig), mig=n))
            else:
                util = _optional(nvml.nvmlDeviceGetUtilizationRates, handle)
                milliwatts = _optional(nvml.nvmlDeviceGetPowerUsage, handle)
                found.append(
                    Gpu(
                        **common,
                        **_facts(nvml, handle),
                        utilization=util.gpu if util else None,
                        temperature=_optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
                        power=milliwatts / 1000 if milliwatts is not None else None,
                    )
                )
        return found
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML query failed: {exc}") from None
    finally:
        _optional(nvml.nvmlShutdown)


def _facts(nvml: Any, handle: Any) -> dict[str, Any]:
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return {
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "memory_total": int(memory.total),
        "memory_used": int(memory.used),
    }


def _mig_slices(nvml: Any, handle: Any) -> list[Any]:
    mode = _optional(nvml.nvmlDeviceGetMigMode, handle)
    if not mode or mode[0] != nvml.NVML_DEVICE_MIG_ENABLE:
        return []
    slices = []
    for n in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        mig = _optional(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, n)
        if mig is not None:  # empty slots answer NotFound
            slices.append(mig)
    return slices


def select(gpus: list[Gpu], selection: str | tuple[str, ...]) -> list[Gpu]:
    """Apply `--gpus`: an index selects the GPU (all its MIG slices), a UUID exactly one device."""
    if selection == "all":
        return list(gpus)
    chosen: list[Gpu] = []
    for item in selection:
        if item.isdigit():
            matches = [gpu for gpu in gpus if gpu.index == int(item)]
        else:
            matches = [gpu for gpu in gpus if gpu.uuid == item]
        if not matches:
            known = ", ".join(str(i) for i in sorted({gpu.index for gpu in gpus})) or "none"
            raise BadInput(f"gpus: no GPU {item} on this machine (indices found: {known})")
        chosen.extend(gpu for gpu in matches if gpu not in chosen)
    return sorted(chosen, key=lambda gpu: (gpu.index, gpu.mig or 0))


def resolve(selection: str | tuple[str, ...]) -> Discovery:
    """Discover and select; without NVML, indices given by the user are pinned by index."""
    try:
        return Discovery(gpus=select(discover(), selection), pinned_by="uuid")
    except NvmlUnavailable as exc:
        reason = str(exc)
    if selection == "all":
        raise Missing(f"gpus: cannot list GPUs ({reason}); pass --gpus 0,1,... to pin instances by index")
    if not all(item.isdigit() for item in selection):
        raise Missing(f"gpus: GPU UUIDs need NVML to be resolved ({reason}); pass indices instead")
    gpus = [Gpu(index=int(item), uuid=None) for item in selection]
    return Discovery(
        gpus=sorted(gpus, key=lambda gpu: gpu.index),
        pinned_by="index",
        note=f"NVML unavailable ({reason}): pinning by index; CUDA may number GPUs differently from nvidia-smi",
    )
