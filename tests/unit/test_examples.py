"""The shipped examples load and plan what their comments promise."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ollama_fleet.config import load_config
from ollama_fleet.gpus import resolve
from ollama_fleet.plan import ModelsDir, plan
from tests.helpers import ROOT

EXAMPLES = ROOT / "examples"


def test_8x_rtx4090_example(nvml, tmp_path: Path) -> None:
    nvml(8)
    config = load_config(config_path=EXAMPLES / "8x-rtx4090.toml", environ={"OLLAMA_FLEET_STATE_DIR": str(tmp_path)})
    assert config.keep_alive == "15s"
    assert config.allow == (ipaddress.ip_network("192.168.1.0/24"),)
    result = plan(config, resolve(config.gpus), ModelsDir(path=config.models_dir, exists=True))
    assert [i.port for i in result.instances] == list(range(11534, 11542))
    assert {i.env["OLLAMA_MODELS"] for i in result.instances} == {"/usr/share/ollama/.ollama/models"}
