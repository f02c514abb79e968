"""The pure plan: names, ports, pinning, environment, leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_fleet.config import load_config
from ollama_fleet.errors import BadInput
from ollama_fleet.gpus import Discovery, Gpu
from ollama_fleet.plan import ModelsDir, inspect_models_dir, plan

MODELS = ModelsDir(path=Path("/srv/models"), exists=True, readable=True, owner="ollama")


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-aaaa"


def discovery(count: int, pinned_by: str = "uuid") -> Discovery:
    return Discovery(
        gpus=[Gpu(index=i, uuid=uuid(i) if pinned_by == "uuid" else None) for i in range(count)],
        pinned_by=pinned_by,
    )


def config(tmp_path: Path, **flags):
    return load_config(flags, environ={"OLLAMA_FLEET_STATE_DIR": str(tmp_path)}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("count", "per", "names"),
    [
        (1, 1, ["gpu0"]),
        (2, 1, ["gpu0", "gpu1"]),
        (8, 1, [f"gpu{i}" for i in range(8)]),
        (2, 2, ["gpu0_1"]),
        (8, 2, ["gpu0_1", "gpu2_3", "gpu4_5", "gpu6_7"]),
    ],
)
def test_names_ports_and_pinning(tmp_path: Path, count: int, per: int, names: list[str]) -> None:
    result = plan(config(tmp_path, gpus_per_instance=str(per)), discovery(count), MODELS)
    assert [i.name for i in result.instances] == names
    assert [i.port for i in result.instances] == [11534 + k for k in range(len(names))]
    for k, inst in enumerate(result.instances):
        expected = ",".join(uuid(k * per + j) for j in range(per))
        assert inst.env["CUDA_VISIBLE_DEVICES"] == expected
        assert [g.index for g in inst.gpus] == list(range(k * per, k * per + per))
    assert result.unused_gpus == ()


def test_one_gpu_with_two_per_instance_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="gpus_per_instance: 2 GPUs per instance, but only 1"):
        plan(config(tmp_path, gpus_per_instance="2"), discovery(1), MODELS)


def test_leftover_gpus_are_reported(tmp_path: Path) -> None:
    result = plan(config(tmp_path, gpus_per_instance="3"), discovery(8), MODELS)
    assert [i.name for i in result.instances] == ["gpu0_1_2", "gpu3_4_5"]
    assert [g.index for g in result.unused_gpus] == [6, 7]


def test_environment_of_an_instance(tmp_path: Path) -> None:
    cfg = config(tmp_path, base_port="12000", keep_alive="15s", env=["OLLAMA_NUM_PARALLEL=4"])
    writer, inst = plan(cfg, discovery(2), MODELS).instances
    assert inst.env == {
        "CUDA_VISIBLE_DEVICES": uuid(1),
        "OLLAMA_HOST": "127.0.0.1:12001",
        "OLLAMA_MODELS": "/srv/models",
        "OLLAMA_KEEP_ALIVE": "15s",
        "OLLAMA_VULKAN": "0",  # Vulkan ignores CUDA_VISIBLE_DEVICES
        "OLLAMA_NO_CLOUD": "1",  # a :cloud model name would send prompts to ollama.com
        "OLLAMA_NOPRUNE": "1",  # never prunes a pull the writer has in flight
        "OLLAMA_NUM_PARALLEL": "4",
    }
    opted_in = plan(config(tmp_path, env=["OLLAMA_NO_CLOUD=0"]), discovery(1), MODELS).instances[0]
    assert opted_in.env["OLLAMA_NO_CLOUD"] == "0"  # the documented opt-in
    # The writer (every pull goes to it) prunes at its own start.
    assert "OLLAMA_NOPRUNE" not in writer.env and writer.env["OLLAMA_VULKAN"] == "0"
    assert inst.log == tmp_path / "logs" / "gpu1.log"
    assert (inst.host, inst.port) == ("127.0.0.1", 12001)


def test_pinned_by_index_without_nvml(tmp_path: Path) -> None:
    result = plan(config(tmp_path), discovery(2, pinned_by="index"), MODELS)
    assert [i.env["CUDA_VISIBLE_DEVICES"] for i in result.instances] == ["0", "1"]
    assert result.pinned_by == "index"


def test_mig_slices_get_their_own_instance(tmp_path: Path) -> None:
    found = Discovery(gpus=[Gpu(index=0, uuid="MIG-a", mig=0), Gpu(index=0, uuid="MIG-b", mig=1)], pinned_by="uuid")
    result = plan(config(tmp_path), found, MODELS)
    assert [(i.name, i.env["CUDA_VISIBLE_DEVICES"]) for i in result.instances] == [
        ("gpu0-mig0", "MIG-a"),
        ("gpu0-mig1", "MIG-b"),
    ]
    with pytest.raises(BadInput, match="MIG"):
        plan(config(tmp_path, gpus_per_instance="2"), found, MODELS)


def test_port_range_must_fit(tmp_path: Path) -> None:
    assert plan(config(tmp_path, base_port="65528"), discovery(8), MODELS).instances[-1].port == 65535
    with pytest.raises(BadInput, match="base_port: 65529 \\+ 8 instances runs past port 65535"):
        plan(config(tmp_path, base_port="65529"), discovery(8), MODELS)


def test_models_dir_resolution(tmp_path: Path) -> None:
    given = tmp_path / "m"
    given.mkdir()
    found = inspect_models_dir(config(tmp_path, models_dir=str(given)))
    assert (found.path, found.exists, found.readable) == (given, True, True)
    assert found.owner
    missing = inspect_models_dir(config(tmp_path, models_dir=str(tmp_path / "nope")))
    assert (missing.exists, missing.owner) == (False, None)


def test_models_dir_default_is_home_without_official_install(tmp_path: Path) -> None:
    found = inspect_models_dir(config(tmp_path), user_home=tmp_path)
    if Path("/usr/share/ollama/.ollama/models").is_dir():
        assert found.path == Path("/usr/share/ollama/.ollama/models")
    else:
        assert found.path == tmp_path / ".ollama" / "models"
