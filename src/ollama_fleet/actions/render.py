"""`render-nginx` / `render-haproxy`: the gateway for the plan, as a file the user runs with
their own nginx or HAProxy. A file written with -o runs as its header says: the directories
it names are made with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ollama_fleet.accounts import worker_user
from ollama_fleet.actions import Progress
from ollama_fleet.config import FleetConfig
from ollama_fleet.gateway import engine_named
from ollama_fleet.gateway.spec import exposure_warnings, spec_from
from ollama_fleet.state import write_atomic
from ollama_fleet.values import checked_path


@dataclass
class Rendered:
    text: str | None  # for stdout, API keys redacted; None when written to a file
    written: Path | None = None
    checked_with: str | None = None  # the check that passed ("nginx -t")


def render_gateway(
    cfg: FleetConfig,
    engine_name: str,
    *,
    output: Path | None,
    standalone: bool,
    prefix: str | None,
    check: bool,
    progress: Progress,
) -> Rendered:
    from ollama_fleet.actions.planning import make_plan

    root = (checked_path(prefix, "prefix") if prefix else cfg.state_path / "gateway").absolute()
    result = make_plan(cfg, progress)
    spec = spec_from(cfg, result)
    for message in exposure_warnings(spec, cfg):
        progress.warn(message)
    engine = engine_named(engine_name)
    standalone = standalone or engine.always_complete
    user = worker_user() if standalone else None
    target = output.absolute() if output is not None else None
    content = engine.render(spec, standalone=standalone, prefix=root, user=user, config=target)
    if check:
        engine.check(content, standalone=standalone, prefix=root)
    if standalone and (output is not None or prefix):
        # The file runs exactly as its header says: nothing it names must be made first.
        engine.prepare(root)
    if output is None:
        # API keys never reach stdout; -o FILE writes them (mode 0640).
        return Rendered(text=engine.render(spec.redacted(), standalone=standalone, prefix=root, user=user))
    write_atomic(output, content, spec.file_mode)
    return Rendered(text=None, written=output, checked_with=engine.check_command if check else None)
