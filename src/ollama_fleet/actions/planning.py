"""What several verbs derive from the config before they act: the plan (saying what the
user should know about it) and the gateway to run. `up`, `render-*`, `install-systemd` and
`plan` use them; no verb imports another verb."""

from __future__ import annotations

from pathlib import Path

from ollama_fleet.actions import Progress
from ollama_fleet.config import FleetConfig
from ollama_fleet.errors import Missing
from ollama_fleet.gateway import Engine, engine_named
from ollama_fleet.gateway.spec import GatewaySpec, exposure_warnings, spec_from
from ollama_fleet.gpus import resolve
from ollama_fleet.plan import Plan, inspect_models_dir, plan
from ollama_fleet.processes import find_tool, foreign_ollama
from ollama_fleet.state import DESIRED, read_actual


def make_plan(cfg: FleetConfig, progress: Progress, home_of_user: str | None = None) -> Plan:
    """The plan, saying what the user should know about it (pinning by index, unused GPUs,
    an `ollama serve` the fleet did not start). `home_of_user`: whose ~/.ollama/models is
    the default models dir (install-systemd's service user), else the caller's."""
    found = resolve(cfg.gpus)
    if found.note:
        progress.warn(found.note)
    user_home = Path(home_of_user) if home_of_user else None
    result = plan(cfg, found, inspect_models_dir(cfg, user_home))
    actual = read_actual(cfg.state_path) if (cfg.state_path / DESIRED).exists() else None
    warn_others(progress, foreign_ollama({st.pid for st in actual.instances.values() if st.pid} if actual else set()))
    for gpu in result.unused_gpus:
        progress.warn(f"GPU {gpu.index} is not used: it does not fill a group of {cfg.gpus_per_instance}")
    return result


def warn_others(progress: Progress, others: list[str]) -> None:
    for other in others:
        progress.warn(
            f"an `ollama serve` the fleet did not start runs: {other}; it may hold GPU memory "
            "(a stock ollama.service? systemctl disable --now ollama)"
        )


def gateway_for(cfg: FleetConfig, result: Plan, progress: Progress) -> tuple[Engine | None, GatewaySpec | None]:
    """The engine and spec to run, or (None, None) to run without a gateway. When the
    gateway or its engine was asked for (by a flag, a variable or the file), a missing engine
    is an error; else a warning, and the fleet runs without one."""
    if not cfg.gateway:
        return None, None
    explicit = "gateway" in cfg.model_fields_set or "engine" in cfg.model_fields_set
    # Without an engine asked for, the default one missing is a warning: run without it.
    spec = spec_from(cfg, result)
    name = cfg.engine
    if find_tool(name) is None:
        if explicit or name != FleetConfig.model_fields["engine"].default:
            raise Missing(f"engine: {name} is not installed (apt-get install {name}), and the gateway asks for it")
        progress.warn(
            f"{name} is not installed: running without a gateway (apt-get install {name}; --no-gateway silences this)"
        )
        return None, None
    for message in exposure_warnings(spec, cfg):
        progress.warn(message)
    return engine_named(name), spec
