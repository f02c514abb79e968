"""The keys file: named keys with priority and limits, one line (or table) each; bad input
names its line and never echoes a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_fleet.errors import BadInput
from ollama_fleet.keys import Rate, queue_context, read_keys


def keys_file(tmp_path: Path, text: str, name: str = "keys") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_plain_keys_keep_working_and_get_names(tmp_path: Path) -> None:
    keys = read_keys(keys_file(tmp_path, "# team\nsk-fleet-0123456789\n\nsk-other-9876543210  # ci\n"))
    assert [(k.key, k.name, k.priority) for k in keys] == [
        ("sk-fleet-0123456789", "key1", "normal"),
        ("sk-other-9876543210", "key2", "normal"),
    ]


def test_fields_on_a_line(tmp_path: Path) -> None:
    (alice, nightly) = read_keys(
        keys_file(
            tmp_path,
            "sk-alice-0123456789 name=alice priority=interactive max_concurrent=8 rate=120/m\n"
            "sk-nightly-98765432 name=nightly priority=batch rate=2/s\n",
        )
    )
    assert (alice.name, alice.priority, alice.max_concurrent, alice.rate) == (
        "alice",
        "interactive",
        8,
        Rate(requests=120, period=60),
    )
    assert (nightly.priority_class, alice.priority_class) == (1, -1)
    assert str(nightly.rate) == "2/s" and nightly.rate is not None and nightly.rate.retry_after == 1


def test_a_toml_keys_file(tmp_path: Path) -> None:
    (alice,) = read_keys(
        keys_file(tmp_path, '[alice]\nkey = "sk-alice-0123456789"\npriority = "batch"\nrate = "10/h"\n', "keys.toml")
    )
    assert (alice.name, alice.priority, alice.rate) == ("alice", "batch", Rate(requests=10, period=3600))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sk-alice-0123456789 priority=urgent\n", "line 1 of {path}: priority: "),
        ("sk-alice-0123456789 rate=5/d\n", "line 1 of {path}: rate is N/s, N/m or N/h"),
        ("sk-alice-0123456789 max_concurrent=0\n", "line 1 of {path}: max_concurrent: "),
        ("\nsk-alice-0123456789 colour=red\n", "line 2 of {path}: unknown field 'colour'"),
        ("sk-alice-01234 56789\n", "line 1 of {path}: after the key come field=value pairs"),
        ('sk-alice-0123456789";evil\n', "line 1 of {path}: the key is not 16-200 of"),
        ("sk-alice-0123456789 name=x;y\n", "line 1 of {path}: name: "),
        (
            "sk-a-0123456789abc name=team rate=1/s\nsk-b-0123456789abc name=team\n",
            "line 2 of {path}: name 'team' is given again with other priority or limits",
        ),
        ("# nothing\n", "{path} holds no key"),
    ],
)
def test_bad_lines_name_the_line_and_never_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = keys_file(tmp_path, text)
    with pytest.raises(BadInput) as caught:
        read_keys(path)
    said = str(caught.value)
    assert said.startswith("api_keys_file: " + message.format(path=path)), said
    assert "0123456789" not in said and "56789" not in said


def test_keys_sharing_a_name_share_its_rules(tmp_path: Path) -> None:
    keys = read_keys(
        keys_file(tmp_path, "sk-a-0123456789abc name=team rate=1/s\nsk-b-0123456789abc name=team rate=1/s\n")
    )
    assert [k.name for k in keys] == ["team", "team"]


def test_priority_classes_keep_the_queue_timeout_under_the_wrap(tmp_path: Path) -> None:
    plain = read_keys(keys_file(tmp_path, "sk-a-0123456789abc rate=3/m\nsk-b-0123456789abc rate=1/s\n"))
    assert queue_context(plain, 600) == {"tenants": plain, "rate_periods": [1, 60], "queue_timeout": 600}
    ordered = read_keys(keys_file(tmp_path, "sk-a-0123456789abc priority=batch\n"))
    assert queue_context(ordered, 600)["queue_timeout"] == 520
    assert queue_context(ordered, 300)["queue_timeout"] == 300


def test_usage_summarises_the_log_per_key_name_within_the_window() -> None:
    from ollama_fleet.actions.usage import since_seconds, summarise

    now = 1_000_000.0
    lines = [
        "[NOTICE]   (1) : New worker (2) forked",  # HAProxy's own notices are skipped
        '{"t":999990,"key":"alice","status":200,"bytes":500,"queue_ms":10,"ttfb_ms":40,"total_ms":900,"server":"gpu0"}',
        '{"t":999995,"key":"alice","status":429,"bytes":90,"queue_ms":-1,"ttfb_ms":-1,"total_ms":0,"server":"<NOSRV>"}',
        '{"t":999996,"key":"-","status":502,"bytes":0,"queue_ms":0,"ttfb_ms":-1,"total_ms":3,"server":"gpu1"}',
        '{"t":990000,"key":"alice","status":200,"bytes":500,"queue_ms":1,"ttfb_ms":1,"total_ms":1,"server":"gpu0"}',
    ]
    found = summarise(lines, since=60, now=now)
    assert set(found) == {"alice", "-"}
    alice = found["alice"].json_data()
    assert (alice["requests"], alice["rejected"], alice["errors"], alice["bytes_out"]) == (2, 1, 0, 590)
    assert alice["queue_ms"] == {"p50": 10.0, "p99": 10.0} and alice["ttfb_ms"]["p50"] == 40.0
    assert found["-"].json_data()["errors"] == 1
    assert (since_seconds("24h"), since_seconds("7d"), since_seconds("90s")) == (86400, 604800, 90)
    with pytest.raises(BadInput, match=r"^since: "):
        since_seconds("1 day")


def test_a_gateway_state_written_before_named_keys_still_reads() -> None:
    from ollama_fleet.gateway.spec import GatewaySpec

    old = {
        "instances": [{"name": "gpu0", "address": "127.0.0.1:11534", "slots": 1}],
        "listen": {"host": "127.0.0.1", "port": 8080},
        "allow": [],
        "api_keys": ["sk-fleet-0123456789"],
        "balance": "least_conn",
        "read_timeout": 600,
        "max_body_size": "100m",
        "tls": None,
    }
    (key,) = GatewaySpec.model_validate(old).api_keys
    assert (key.key, key.name, key.priority) == ("sk-fleet-0123456789", "key1", "normal")
