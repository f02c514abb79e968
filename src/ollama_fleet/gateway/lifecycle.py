"""A private gateway's life under `up`: checked before anything starts, started or reloaded
(never restarted), re-rendered with instances drained. The only writer of gateway.json."""

from __future__ import annotations

from pathlib import Path

from ollama_fleet.errors import UserError
from ollama_fleet.gateway import Engine
from ollama_fleet.gateway.spec import GatewaySpec
from ollama_fleet.processes import port_holder, stop_processes
from ollama_fleet.state import GATEWAY, PRIVATE, GatewayState, ProcessRecord, read_gateway, write_changed, write_model


def preflight(spec: GatewaySpec, state_dir: Path, engine: Engine) -> None:
    """Refuse before anything starts: a spec this engine cannot render (exit 2: a placement
    on nginx, a TLS key HAProxy cannot read), or a stranger on a port it needs (exit 1)."""
    engine.render(spec, standalone=True, prefix=state_dir / "gateway", user=None)

    ours = read_gateway(state_dir)
    if ours is not None and ours.process is not None and ours.process.process() is not None:
        return  # our own gateway holds them; `up` reloads it
    for field, (host, port) in engine.ports(spec).items():
        holder = port_holder(port, host)
        if holder is not None:
            flag = "--" + field.replace("_", "-")
            raise UserError(
                f"{field}: port {port} for the gateway is taken by {holder}; pass another {flag} or --no-gateway"
            )


def _write_config(engine: Engine, spec: GatewaySpec, prefix: Path, config: Path, user: tuple[str, str] | None) -> bool:
    """Render and check the standalone config, write it atomically; True when it changed."""
    content = engine.render(spec, standalone=True, prefix=prefix, user=user, config=config)
    engine.check(content, standalone=True, prefix=prefix)
    return write_changed(config, content, PRIVATE)


def _record(state_dir: Path, state: GatewayState, spec: GatewaySpec) -> GatewayState:
    """gateway.json, with the spec it was rendered from (API keys included)."""
    state = state.model_copy(update={"spec": spec.model_dump(mode="json")})
    write_model(state_dir / GATEWAY, state)
    return state


def converge(
    engine: Engine, spec: GatewaySpec, state_dir: Path, user: tuple[str, str] | None
) -> tuple[str, GatewayState]:
    """Start the gateway, or reload it when its config changed (never restart it).

    Returns what was done ("started", "reloaded", "unchanged") and the new state.
    """
    prefix = state_dir / "gateway"
    config = prefix / f"{engine.name}.conf"
    previous = read_gateway(state_dir)
    live = previous.process if previous and previous.process and previous.process.process() else None
    changed = _write_config(engine, spec, prefix, config, user)
    if live is not None and previous is not None and previous.engine != engine.name:
        stop_processes([live], 10)  # the other engine holds the port: it goes first
        live = None
    if live is not None:
        action = "reloaded" if changed else "unchanged"
        if changed:
            engine.reload(prefix, config)
        record = live
    else:
        record = ProcessRecord.of(engine.start(prefix, config))
        action = "started"
    state = GatewayState(
        engine=engine.name,
        process=record,
        prefix=prefix,
        config=config,
        url=spec.probe_url,
        listen=str(spec.listen),
        worker=user,
    )
    return action, _record(state_dir, state, spec)


def redrain(engine: Engine, state_dir: Path, state: GatewayState, drained: tuple[str, ...]) -> GatewayState:
    """Re-render the running gateway's config with `drained` instances, check it, reload."""
    assert state.spec is not None and state.prefix is not None and state.config is not None
    spec = GatewaySpec.model_validate(state.spec).model_copy(update={"drained": drained})
    _write_config(engine, spec, state.prefix, state.config, state.worker)
    engine.reload(state.prefix, state.config)
    return _record(state_dir, state, spec)
