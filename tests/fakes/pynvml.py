"""A fake `pynvml` (nvidia-ml-py) for tests: the seam DESIGN.md §8 names.

Configured by the environment, so it works in-process (tests put it in `sys.modules`) and in
subprocesses (tests put this folder first on PYTHONPATH):

- FAKE_NVML_GPUS: number of devices (default 0); "missing" makes nvmlInit fail like a host
  without the driver.
- FAKE_NVML_MIG: comma-separated indices of GPUs in MIG mode, each with two slices.
- FAKE_NVML_NAME: device name (default "NVIDIA GeForce RTX 4090").
"""

from __future__ import annotations

import os
from types import SimpleNamespace

NVML_DEVICE_MIG_ENABLE = 1
NVML_DEVICE_MIG_DISABLE = 0
NVML_TEMPERATURE_GPU = 0
GIB = 2**30


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    def __str__(self) -> str:
        return "NVML Shared Library Not Found"


class NVMLError_NotSupported(NVMLError):
    def __str__(self) -> str:
        return "Not Supported"


class NVMLError_NotFound(NVMLError):
    def __str__(self) -> str:
        return "Not Found"


def _count() -> int:
    value = os.environ.get("FAKE_NVML_GPUS", "0")
    if value == "missing":
        raise NVMLError_LibraryNotFound()
    return int(value)


def _mig_gpus() -> set[int]:
    return {int(i) for i in os.environ.get("FAKE_NVML_MIG", "").split(",") if i}


def uuid_of(index: int, mig: int | None = None) -> str:
    if mig is None:
        return f"GPU-{index:08x}-1111-2222-3333-444444444444"
    return f"MIG-{index:08x}-{mig:04x}-2222-3333-555555555555"


def nvmlInit() -> None:
    _count()


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return _count()


def nvmlDeviceGetHandleByIndex(index: int) -> SimpleNamespace:
    if not 0 <= index < _count():
        raise NVMLError_NotFound()
    return SimpleNamespace(index=index, mig=None)


def nvmlDeviceGetUUID(handle: SimpleNamespace) -> str:
    return uuid_of(handle.index, handle.mig)


def nvmlDeviceGetName(handle: SimpleNamespace) -> str:
    name = os.environ.get("FAKE_NVML_NAME", "NVIDIA GeForce RTX 4090")
    return name if handle.mig is None else f"MIG 3g.40gb Device {handle.mig}"


def nvmlDeviceGetMemoryInfo(handle: SimpleNamespace) -> SimpleNamespace:
    total = 24 * GIB if handle.mig is None else 12 * GIB
    return SimpleNamespace(total=total, used=(1 + handle.index) * GIB // 2, free=total)


def nvmlDeviceGetUtilizationRates(handle: SimpleNamespace) -> SimpleNamespace:
    if handle.mig is not None:
        raise NVMLError_NotSupported()
    return SimpleNamespace(gpu=10 * handle.index % 100, memory=0)


def nvmlDeviceGetPciInfo(handle: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(busId=f"00000000:{0x10 + handle.index:02X}:00.0".encode())


def nvmlDeviceGetTemperature(handle: SimpleNamespace, sensor: int) -> int:
    return 40 + handle.index


def nvmlDeviceGetPowerUsage(handle: SimpleNamespace) -> int:
    return 100_000 + 1000 * handle.index  # milliwatts


def nvmlDeviceGetMigMode(handle: SimpleNamespace) -> tuple[int, int]:
    if handle.index not in _mig_gpus():
        raise NVMLError_NotSupported()
    return (NVML_DEVICE_MIG_ENABLE, NVML_DEVICE_MIG_ENABLE)


def nvmlDeviceGetMaxMigDeviceCount(handle: SimpleNamespace) -> int:
    return 7


def nvmlDeviceGetMigDeviceHandleByIndex(handle: SimpleNamespace, n: int) -> SimpleNamespace:
    if n >= 2:
        raise NVMLError_NotFound()
    return SimpleNamespace(index=handle.index, mig=n)
