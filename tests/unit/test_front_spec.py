"""The front's spec and config, pure: boxes from flags, TOML and /fleet/info answers; what
reaches the rendered haproxy.cfg. (Judged by the real `haproxy -c` in the integration tests.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_fleet.config import load_config
from ollama_fleet.errors import BadInput
from ollama_fleet.gateway import front

INFO = {"schema": 1, "name": "box-a", "version": "0.4.0", "slots": 8, "instances": [], "models": {"Qwen3": 4}}


def config(tmp_path: Path, **flags: object):
    return load_config(flags, environ={"XDG_STATE_HOME": str(tmp_path)}, cwd=tmp_path)


def test_boxes_from_flags_toml_and_a_variable(tmp_path: Path) -> None:
    (tmp_path / "ollama-fleet.toml").write_text(
        'boxes = ["http://10.0.0.2:8080", {url = "http://10.0.0.4:11434", slots = 4}]\n'
    )
    boxes = config(tmp_path).boxes
    assert [(b.url, b.slots) for b in boxes] == [("http://10.0.0.2:8080", None), ("http://10.0.0.4:11434", 4)]
    flags = config(tmp_path, boxes=["https://gpu-3.lan,slots=2"]).boxes
    assert [(b.url, b.slots) for b in flags] == [("https://gpu-3.lan:443", 2)]
    env = load_config({}, environ={"OLLAMA_FLEET_BOXES": "http://a:1,slots=2 http://b:2"}, cwd=tmp_path).boxes
    assert [(b.host, b.slots) for b in env] == [("a", 2), ("b", None)]


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"boxes": ["http://10.0.0.2:8080;evil"]}, "boxes[0]"),
        ({"boxes": ["http://10.0.0.2:8080,weight=3"]}, "boxes[0]"),
        ({"boxes": ["10.0.0.2:8080"]}, "boxes[0]"),
        ({"box_srv": "ollama.example.com", "box_slots": "2"}, "box_srv"),
        ({"box_srv": "_o._tcp.example.com"}, "box_slots"),
        ({"resolver": "dns.example.com"}, "resolver"),
        ({"name": "box a"}, "name"),
    ],
)
def test_bad_box_settings_name_their_field(tmp_path: Path, flags: dict, field: str) -> None:
    with pytest.raises(BadInput) as caught:
        config(tmp_path, **flags)
    assert str(caught.value).startswith(f"{field}: ")


def test_a_box_description_is_validated_before_it_reaches_the_config(tmp_path: Path) -> None:
    box = config(tmp_path, boxes=["http://10.0.0.2:8080"]).boxes[0]
    described = front.described(box, INFO)
    assert (described.name, described.slots, described.models) == ("box-a", 8, {"qwen3:latest": 4})
    for bad in (
        {**INFO, "name": 'x" maxconn 9999'},
        {**INFO, "models": {'qwen3" } || { path /': 1}},
        {**INFO, "slots": 0},
        {"hello": "world"},
    ):
        with pytest.raises(BadInput, match=r"^boxes: http://10.0.0.2:8080 answers /fleet/info"):
            front.described(box, bad)
    with pytest.raises(BadInput, match="schema 2"):
        front.described(box, {**INFO, "schema": 2})


def test_the_config_gives_each_box_its_slots_and_each_model_its_boxes(tmp_path: Path) -> None:
    cfg = config(tmp_path, boxes=["http://10.0.0.2:8080", "http://10.0.0.3:8080", "http://10.0.0.9:11434,slots=2"])
    boxes = front.unique_names(
        [
            front.described(cfg.boxes[0], INFO),
            front.described(cfg.boxes[1], {**INFO, "slots": 4, "models": {}}),
            front.plain(cfg.boxes[2]),
        ]
    )
    assert [b.name for b in boxes] == ["box-a", "box-a-2", "10.0.0.9:11434"]
    spec = front.spec_from(cfg, boxes, drained=("box-a-2", "gone"))
    assert spec.drained == ("box-a-2",)
    text = front.render(spec, prefix=Path("/run/f"))
    assert "    server box-a 10.0.0.2:8080 maxconn 8\n" in text
    assert "    server box-a-2 10.0.0.3:8080 maxconn 4 weight 0\n" in text
    assert "server 10.0.0.9:11434 10.0.0.9:11434 maxconn 2 no-check track front_plain/10.0.0.9:11434" in text
    model_backend = text.split("backend front_model1\n")[1].split("\nbackend ")[0]
    assert "server box-a 10.0.0.2:8080 maxconn 4 track front_boxes/box-a" in model_backend
    assert "box-a-2" not in model_backend


def test_a_front_needs_boxes(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"^boxes: a front needs boxes"):
        front.spec_from(config(tmp_path), [])


def test_pull_reads_a_gateway_json_of_an_older_version(tmp_path: Path) -> None:
    """Before keys had names, gateway.json held them as plain strings: `pull` on this box
    presents the first one, as it presents a named key's (#24 item 8)."""
    import json

    from ollama_fleet.actions.front import pull_targets

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    spec = {
        "instances": [{"name": "gpu0", "address": "127.0.0.1:11534"}],
        "listen": {"host": "127.0.0.1", "port": 8080},
        "allow": [],
        "api_keys": ["sk-old-0123456789abcdef"],  # as an older version wrote it
        "balance": "least_conn",
        "read_timeout": 600,
        "max_body_size": "100m",
        "tls": None,
    }
    gateway = {"engine": "nginx", "url": "http://127.0.0.1:8080", "spec": spec}
    (state / "gateway.json").write_text(json.dumps(gateway))
    targets = pull_targets(load_config({"state_dir": str(state)}, environ={}, cwd=tmp_path))
    assert targets.urls == {"this box": "http://127.0.0.1:8080"} and targets.key == "sk-old-0123456789abcdef"
