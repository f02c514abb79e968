"""Named keys at a real gateway: priority classes order HAProxy's queue; rate and
concurrency limits answer 429 with Retry-After, counted per key name (HAProxy and nginx)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import Gateway, start_instances, stop

ALICE = "sk-alice-0123456789"
NIGHTLY = "sk-nightly-98765432"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def generate(url: str, key: str, tokens: int, started: dict[str, float] | None = None, tag: str = "") -> int:
    """A streamed generation; records when its first line arrived under `tag`."""
    body = {"model": "llama3.2", "prompt": "x", "options": {"num_predict": tokens}}
    with httpx.stream("POST", url + "/api/generate", json=body, headers=auth(key), timeout=60) as r:
        for _ in r.iter_lines():
            if started is not None and tag not in started:
                started[tag] = time.monotonic()
        return r.status_code


def test_an_interactive_request_is_served_before_queued_batch_requests(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{ALICE} name=alice priority=interactive\n{NIGHTLY} name=nightly priority=batch\n")
    base, procs = start_instances(1, FAKE_OLLAMA_TPS="50")
    gateway = Gateway(base, 1, "--api-keys-file", str(keys), engine="haproxy")
    started: dict[str, float] = {}
    try:
        holder = threading.Thread(target=generate, args=(gateway.url, NIGHTLY, 50))  # the one slot, 1 s
        holder.start()
        time.sleep(0.3)
        queued = []
        for n in range(3):  # batch requests queue first ...
            queued.append(threading.Thread(target=generate, args=(gateway.url, NIGHTLY, 5, started, f"batch{n}")))
            queued[-1].start()
            time.sleep(0.05)
        # ... then one interactive request, last in time, first to be served.
        queued.append(threading.Thread(target=generate, args=(gateway.url, ALICE, 5, started, "alice")))
        queued[-1].start()
        for t in [holder, *queued]:
            t.join(timeout=30)
        assert min(started, key=started.__getitem__) == "alice"
        assert sorted(started, key=started.__getitem__)[1:] == ["batch0", "batch1", "batch2"]
    finally:
        gateway.close()
        stop(procs)


@pytest.mark.parametrize("engine", ["nginx", "haproxy"])
def test_rate_and_concurrency_limits_answer_429_with_retry_after_per_name(tmp_path: Path, engine: str) -> None:
    keys = tmp_path / "keys"
    keys.write_text(
        f"{ALICE} name=alice rate=3/m\n"
        # Two keys, one name: they share the name's limit, whatever connection they use.
        f"{NIGHTLY} name=team max_concurrent=2\nsk-team-b-123456789 name=team max_concurrent=2\n"
    )
    base, procs = start_instances(2, FAKE_OLLAMA_TPS="20")
    gateway = Gateway(base, 2, "--api-keys-file", str(keys), engine=engine)
    holders: list[threading.Thread] = []
    try:
        answers = [httpx.get(gateway.url + "/api/tags", headers=auth(ALICE)) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        # 3/m: one request fits again every 20 s.
        assert answers[3].headers["retry-after"] == "20" and "error" in answers[3].json()

        def hold(key: str) -> None:
            with contextlib.suppress(httpx.HTTPError):
                generate(gateway.url, key, 40)  # 2 s

        holders = [threading.Thread(target=hold, args=(k,)) for k in (NIGHTLY, "sk-team-b-123456789")]
        for t in holders:
            t.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            busy = sum(httpx.get(f"http://127.0.0.1:{base + k}/_fake/stats").json()["busy"] for k in range(2))
            if busy == 2:
                break
            time.sleep(0.05)
        third = httpx.post(
            gateway.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}, headers=auth(NIGHTLY)
        )
        assert third.status_code == 429 and third.headers["retry-after"] == "1"
        assert "error" in third.json()
        assert httpx.get(gateway.url + "/api/tags", headers=auth(ALICE)).status_code == 429  # still limited
    finally:
        for t in holders:
            t.join(timeout=10)
        gateway.close()
        stop(procs)


def test_status_shows_each_key_name_never_the_key(fleet, tmp_path: Path) -> None:
    import json

    from prometheus_client.parser import text_string_to_metric_families

    from tests.helpers import gateway_flags

    keys = tmp_path / "keys"
    keys.write_text(f"{ALICE} name=alice rate=2/m\n{NIGHTLY} name=nightly priority=batch\n")
    url, flags = gateway_flags("haproxy", "--api-keys-file", str(keys))
    up = fleet.run("up", *flags)
    assert up.returncode == 0, up.stderr
    assert [httpx.get(url + "/api/tags", headers=auth(ALICE)).status_code for _ in range(3)] == [200, 200, 429]
    assert generate(url, NIGHTLY, 5) == 200

    status = fleet.run("status", "--json")
    counts = json.loads(status.stdout)["gateway"]["keys"]
    assert counts["alice"] == {
        "requests": 3,
        "in_flight": 0,
        "queued": 0,
        "rejected": 1,
        "bytes_out": counts["alice"]["bytes_out"],
    }
    assert counts["nightly"]["requests"] == 1 and counts["nightly"]["bytes_out"] > 0
    table = fleet.run("status").stdout
    prometheus = fleet.run("status", "--format", "prometheus").stdout
    families = {f.name: f for f in text_string_to_metric_families(prometheus)}
    rejected = {s.labels["key"]: s.value for s in families["ollama_fleet_key_rejected"].samples}
    assert rejected == {"alice": 1.0, "nightly": 0.0}
    assert "alice" in table and "nightly" in table
    # The gateway's log, per key name: HAProxy writes it as each request ends.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        used = fleet.run("usage", "--json", "--since", "1h")
        logged = json.loads(used.stdout)["keys"]
        if logged.get("alice", {}).get("requests") == 3 and "nightly" in logged:
            break
        time.sleep(0.1)
    assert (logged["alice"]["requests"], logged["alice"]["rejected"], logged["alice"]["errors"]) == (3, 1, 0)
    assert logged["nightly"]["requests"] == 1 and logged["nightly"]["bytes_out"] > 0
    assert logged["nightly"]["ttfb_ms"]["p50"] is not None
    usage_table = fleet.run("usage").stdout
    assert "alice" in usage_table and "nightly" in usage_table
    assert json.loads(fleet.run("usage", "--json", "--since", "0s").stdout)["keys"] == {}
    assert fleet.run("usage", "--since", "yesterday").returncode == 2
    access_log = (fleet.state / "gateway" / "access.log").read_text()
    for shown in (status.stdout, table, prometheus, up.stdout, up.stderr, used.stdout, usage_table, access_log):
        assert ALICE not in shown and NIGHTLY not in shown


@pytest.mark.parametrize("engine", ["nginx", "haproxy"])
def test_a_reload_is_in_force_when_up_says_so(fleet, tmp_path: Path, engine: str) -> None:
    """`up` with one keys file, then with another, three times: each time `up` has said
    "reloaded", the new file's key passes at once and the old one's no longer does (#24 item 9)."""
    from tests.helpers import gateway_flags, require_tool

    require_tool(engine)
    files = {ALICE: tmp_path / "alice", NIGHTLY: tmp_path / "nightly"}
    for key, path in files.items():
        path.write_text(f"{key} name=someone\n")
    url, flags = gateway_flags(engine)
    assert fleet.run("up", *flags, "--api-keys-file", str(files[ALICE])).returncode == 0
    for new, old in ((NIGHTLY, ALICE), (ALICE, NIGHTLY), (NIGHTLY, ALICE)):
        swapped = fleet.run("up", *flags, "--api-keys-file", str(files[new]))
        assert swapped.returncode == 0 and f"gateway: {engine} reloaded" in swapped.stdout, swapped.stderr
        answers = [httpx.get(url + "/api/tags", headers=auth(key)).status_code for key in (new, old)]
        assert answers == [200, 401], answers


def test_usage_names_the_engine_that_keeps_a_request_log(fleet) -> None:
    """nginx writes no per-key request log: `usage` says so, and which engine does."""
    from tests.helpers import gateway_up

    gateway_up(fleet, "nginx")
    used = fleet.run("usage")
    assert used.returncode == 1 and "(nginx) does not keep; run it with --engine haproxy" in used.stderr, used.stderr
