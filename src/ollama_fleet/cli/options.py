"""Every setting's flag, built once from FleetConfig's fields: the name gives `--flag`, the
description the help, the type whether it repeats. A command names the settings it takes;
its function receives the validated FleetConfig, never the raw flags."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_origin

import typer

from ollama_fleet.config import FleetConfig, flag_of, load_config

# How each setting's value looks on the command line (help text's placeholders).
METAVARS = {
    "gpus": "LIST",
    "gpus_per_instance": "N",
    "base_port": "PORT",
    "models_dir": "PATH",
    "keep_alive": "DURATION",
    "ollama_bin": "PATH",
    "user": "NAME",
    "state_dir": "PATH",
    "wait_timeout": "S",
    "preload": "MODEL",
    "env": "KEY=VALUE",
    "env_file": "PATH",
    "gateway": "",
    "engine": "ENGINE",
    "listen": "ADDR",
    "allow": "CIDR",
    "server_names": "HOST",
    "api_keys_file": "PATH",
    "balance": "METHOD",
    "read_timeout": "S",
    "max_body_size": "SIZE",
    "metrics_port": "PORT",
    "models": "MODEL=INSTANCES",
    "tls_cert": "PATH",
    "tls_key": "PATH",
    "name": "NAME",
    "boxes": "URL[,slots=N]",
    "box_srv": "NAME",
    "box_slots": "N",
    "resolver": "IP[:PORT]",
    "box_key_file": "PATH",
}
# The settings of the fleet's instances and of its gateway, as most commands take them.
INSTANCE_SETTINGS = (
    "gpus",
    "gpus_per_instance",
    "base_port",
    "models_dir",
    "keep_alive",
    "ollama_bin",
    "env",
    "env_file",
    "models",
)
# What a gateway serves, whichever command renders it (render-* has no --gateway/--engine:
# the command names the engine).
SERVED_SETTINGS = (
    "listen",
    "allow",
    "server_names",
    "api_keys_file",
    "balance",
    "read_timeout",
    "max_body_size",
    "tls_cert",
    "tls_key",
    "metrics_port",
    "name",
)
GATEWAY_SETTINGS = ("gateway", "engine", *SERVED_SETTINGS)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML config file (default: ./ollama-fleet.toml, else $OLLAMA_FLEET_CONFIG)",
        metavar="PATH",
        show_default=False,
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "--debug", "-v", help="show tracebacks of errors")]
StopTimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds between SIGTERM and SIGKILL", min=0)]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output (schema in the README)")]


def setting_option(name: str, help_text: str | None = None) -> Any:
    """The Annotated type of one setting's option. Values arrive as text and FleetConfig
    validates them, so a bad flag, variable or file value gets the same one-line message."""
    field = FleetConfig.model_fields[name]
    default = field.get_default()
    shown = "" if default is None or default in ((), {}) else f" (default: {_default_text(default)})"
    text = help_text or f"{field.description}{shown}"
    if field.annotation is bool:
        return Annotated[bool | None, typer.Option(f"--{name}/--no-{name}", help=text, show_default=False)]
    repeats = get_origin(field.annotation) in (tuple, dict) or name in ("allow", "boxes", "server_names")
    kind: Any = list[str] | None if repeats else str | None
    return Annotated[kind, typer.Option(flag_of(name), help=text, metavar=METAVARS[name], show_default=False)]


def _default_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def with_settings(
    *settings: str, help_overrides: dict[str, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command these settings as options (and --config, --verbose). The command's
    first parameter receives the loaded FleetConfig; its own options follow it. Every
    command takes --config, since every one reads a config (./ollama-fleet.toml included)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(func, eval_str=True).parameters.values())[1:]
        params = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=setting_option(name, (help_overrides or {}).get(name)),
            )
            for name in settings
        ]
        params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOpt))
        params.append(
            inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=VerboseOpt)
        )
        positional = [p for p in own if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in positional]

        def command(*args: Any, **kwargs: Any) -> Any:
            from ollama_fleet.cli import set_verbose

            set_verbose(kwargs.pop("verbose", False))
            flags = {name: kwargs.pop(name) for name in settings}
            config = load_config(flags, config_path=kwargs.pop("config", None))
            return func(config, *args, **kwargs)

        command.__name__ = func.__name__
        command.__doc__ = func.__doc__
        command.__signature__ = inspect.Signature([*positional, *params, *keyword])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in [*positional, *params, *keyword]}
        return command

    return decorate
