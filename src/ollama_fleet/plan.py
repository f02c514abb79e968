"""The instance plan: which `ollama serve` runs on which GPUs, on which port, with which env.

`plan()` is pure. The only I/O around it, looking at the models dir, is `inspect_models_dir()`.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ollama_fleet.config import FleetConfig
from ollama_fleet.errors import BadInput
from ollama_fleet.gpus import Discovery, Gpu
from ollama_fleet.names import canonical
from ollama_fleet.values import Placement

OFFICIAL_MODELS_DIR = Path("/usr/share/ollama/.ollama/models")  # the official installer's `ollama` user
LOOPBACK = "127.0.0.1"


class GpuRef(BaseModel):
    """A GPU as an instance is pinned to it."""

    model_config = ConfigDict(frozen=True)
    index: int
    uuid: str | None
    mig: int | None = None
    pci_bus_id: str | None = None  # NVML's; how Ollama's log names the device too (pinning.py)

    @property
    def number(self) -> str:
        """`3`, or `3-mig1` for a MIG slice: how tables show the GPUs of an instance (the
        GPU's own `Gpu.label` is `gpu3`, as instance names are)."""
        return str(self.index) if self.mig is None else f"{self.index}-mig{self.mig}"


class Instance(BaseModel):
    """One `ollama serve`: its GPUs, address, the environment the fleet sets, its log file."""

    model_config = ConfigDict(frozen=True)
    name: str
    gpus: tuple[GpuRef, ...]
    host: str  # loopback today; a later multi-host inventory sets it per box
    port: int
    env: dict[str, str]
    log: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class ModelsDir(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: Path
    exists: bool
    readable: bool = False
    owner: str | None = None


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)
    instances: tuple[Instance, ...]
    unused_gpus: tuple[GpuRef, ...]
    models_dir: ModelsDir
    pinned_by: Literal["uuid", "index"]
    # model ("qwen3:latest") -> where it lives; a model not here may go to any instance
    models: dict[str, Placement] = {}

    def holders(self, model: str) -> tuple[str, ...]:
        """The instances a model should be on: its placement, else every instance."""
        placed = self.models.get(canonical(model))
        return placed.instances if placed else tuple(i.name for i in self.instances)


def inspect_models_dir(config: FleetConfig, user_home: Path | None = None) -> ModelsDir:
    """The configured models dir, else the official install's if it exists, else ~/.ollama/models
    of `user_home` (the service user's), or of whoever runs this."""
    if config.models_dir is not None:
        path = config.models_dir
    elif OFFICIAL_MODELS_DIR.is_dir():
        path = OFFICIAL_MODELS_DIR
    else:
        path = (user_home or Path.home()) / ".ollama" / "models"
    path = path.expanduser().absolute()
    try:
        uid = path.stat().st_uid
    except OSError:
        return ModelsDir(path=path, exists=False)
    try:
        owner: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        owner = str(uid)
    readable = path.is_dir() and os.access(path, os.R_OK | os.X_OK)
    return ModelsDir(path=path, exists=path.is_dir(), readable=readable, owner=owner)


# What an instance takes from the environment of whoever runs `up`: where programs are, who
# it is, its locale and time zone, and the proxies and CA files a pull may need. Nothing
# else: a stray OLLAMA_NUM_PARALLEL or HIP_VISIBLE_DEVICES in an operator's shell must not
# change the instances `up` starts but not the same fleet under systemd (whose units get
# only the env file). Anything else goes through [env] / --env, on purpose.
PASSED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


def caller_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the caller's environment an instance starts with (then the plan's env)."""
    return {k: v for k, v in environ.items() if k in PASSED_ENV or k.startswith("LC_")}


def ignored_env(environ: Mapping[str, str]) -> list[str]:
    """The caller's variables that look meant for Ollama but never reach an instance:
    OLLAMA_* (the fleet's own OLLAMA_FLEET_* aside) and *_VISIBLE_DEVICES."""
    return sorted(
        k
        for k in environ
        if (k.startswith("OLLAMA_") and not k.startswith("OLLAMA_FLEET_")) or k.endswith("_VISIBLE_DEVICES")
    )


def _ref(gpu: Gpu) -> GpuRef:
    return GpuRef(index=gpu.index, uuid=gpu.uuid, mig=gpu.mig, pci_bus_id=gpu.pci_bus_id)


def instance_name(gpus: list[Gpu]) -> str:
    """`gpu3`, `gpu0_1` for a group, `gpu0-mig1` for a MIG slice: valid systemd instance names."""
    if len(gpus) == 1:
        return gpus[0].label
    return "gpu" + "_".join(str(gpu.index) for gpu in gpus)


def plan(config: FleetConfig, discovery: Discovery, models_dir: ModelsDir) -> Plan:
    """Group the selected GPUs, name the groups, give each a port and its environment."""
    gpus = discovery.gpus
    size = config.gpus_per_instance
    if size > 1 and any(gpu.mig is not None for gpu in gpus):
        raise BadInput("gpus_per_instance: a MIG slice cannot be grouped; CUDA gives a process one slice")
    groups = [gpus[i : i + size] for i in range(0, len(gpus) - size + 1, size)]
    if not groups:
        raise BadInput(f"gpus_per_instance: {size} GPUs per instance, but only {len(gpus)} GPU(s) selected")
    last_port = config.base_port + len(groups) - 1
    if last_port > 65535:
        raise BadInput(f"base_port: {config.base_port} + {len(groups)} instances runs past port 65535 (to {last_port})")
    instances = []
    for k, group in enumerate(groups):
        port = config.base_port + k
        env = {
            # UUIDs, because CUDA's index order can differ from NVML's.
            "CUDA_VISIBLE_DEVICES": ",".join(
                gpu.uuid if discovery.pinned_by == "uuid" and gpu.uuid else str(gpu.index) for gpu in group
            ),
            "OLLAMA_HOST": f"{LOOPBACK}:{port}",
            "OLLAMA_MODELS": str(models_dir.path),
            "OLLAMA_KEEP_ALIVE": config.keep_alive,
            # Since v0.30 Ollama's Vulkan backend is on by default and ignores
            # CUDA_VISIBLE_DEVICES: without this an instance sees every GPU of the box and
            # loads models onto its neighbours' cards (ollama/ollama#16508, #16592).
            "OLLAMA_VULKAN": "0",
            # A `:cloud` model name is otherwise sent to ollama.com under the box's account:
            # a team's prompts leave the building. `--env OLLAMA_NO_CLOUD=0` opts in.
            "OLLAMA_NO_CLOUD": "1",
            **config.env,
        }
        if k > 0:
            # Ollama prunes unreferenced blobs and partial downloads at start. Only the
            # first instance (the writer: every pull goes to it) may, at its own start, when
            # it has no pull in flight; any other could delete the writer's pull.
            env["OLLAMA_NOPRUNE"] = "1"
        name = instance_name(group)
        instances.append(
            Instance(
                name=name,
                gpus=tuple(_ref(g) for g in group),
                host=LOOPBACK,
                port=port,
                env=env,
                log=config.state_path / "logs" / f"{name}.log",
            )
        )
    names = [i.name for i in instances]
    problems = [
        f"models.{model}: no instance {name!r} in the plan (instances: {', '.join(names)})"
        for model, placed in config.models.items()
        for name in placed.instances
        if name not in names
    ]
    if problems:
        raise BadInput(problems)
    used = len(groups) * size
    return Plan(
        models=config.models,
        instances=tuple(instances),
        unused_gpus=tuple(_ref(g) for g in gpus[used:]),
        models_dir=models_dir,
        pinned_by=discovery.pinned_by,
    )


def loads(result: Plan, preload: tuple[str, ...], keep_alive: str) -> list[tuple[str, str, str]]:
    """What `up` loads after start, as (instance, model, keep_alive): every placed model on its
    own instances with its own keep-alive, and each --preload model where it belongs."""
    models = list(dict.fromkeys([*result.models, *(canonical(m) for m in preload)]))
    jobs = []
    for model in models:
        placed = result.models.get(model)
        keep = placed.keep_alive if placed and placed.keep_alive else keep_alive
        jobs += [(name, model, keep) for name in result.holders(model)]
    return jobs


def plan_json(result: Plan) -> dict:
    """`plan --json`, schema 1 (documented in the README)."""
    return {"schema": 1, **result.model_dump(mode="json")}
