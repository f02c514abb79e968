"""The units rendered from a plan (pure); systemd-analyze judges them in the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("models", "protected"), [("/srv/models", True), ("/home/ai/models", False), ("/root/m", False)]
)
def test_protect_home_only_when_the_models_dir_is_outside_home(models: str, protected: bool) -> None:
    from ollama_fleet.systemd import Service, render_units

    service = Service(
        ollama_bin="/usr/bin/ollama",
        user="ollama",
        group="ollama",
        models_dir=Path(models),
        home=Path("/usr/share/ollama"),
    )
    unit = render_units((), service)[0].content
    assert ("ProtectHome=read-only" in unit) is protected
    assert f"ReadWritePaths=-{models}\n" in unit
