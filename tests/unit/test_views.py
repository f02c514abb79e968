"""Views and what they read: Go's RFC 3339 expiry, Prometheus label escaping, the status
table at 80 columns. No process, no server."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ollama_fleet.cli.metrics import prometheus
from ollama_fleet.status import expires_in, parse_rfc3339


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-29T10:00:00.123456789+01:00",
        "2026-11-29T09:00:00.1234567Z",
        "2026-11-29T10:00:00+01:00",
        "2026-11-29T04:00:00.5-05:00",
    ],
)
def test_expiry_in_gos_rfc3339_nano_is_read_on_every_python(text: str) -> None:
    """Ollama writes expires_at with up to 9 fractional digits and its local offset, which
    Python 3.10's fromisoformat rejects (CI runs this under every Python it has)."""
    when = parse_rfc3339(text)
    assert when is not None
    assert when.astimezone(timezone.utc).replace(microsecond=0) == datetime(2026, 11, 29, 9, 0, tzinfo=timezone.utc)
    assert expires_in(text, now=datetime(2026, 11, 29, 8, 59, tzinfo=timezone.utc)) == pytest.approx(
        60 + when.microsecond / 1e6
    )
    assert expires_in("2316-01-01T00:00:00.1+01:00") is None  # kept forever
    assert parse_rfc3339("soon") is None


def test_label_values_are_escaped() -> None:
    from ollama_fleet.status import GatewayStatus, InstanceStatus, LoadedModel, NvmlStatus, StatusReport

    odd = 'we"ird\\name\nx'
    report = StatusReport(
        source="up",
        nvml=NvmlStatus(available=False),
        gpus=[],
        instances=[
            InstanceStatus(
                name="gpu0",
                address="127.0.0.1:1",
                gpus=["0"],
                healthy=True,
                models=[LoadedModel(name=odd, size_vram=5)],
            )
        ],
        gateway=GatewayStatus(engine=None),
    )
    [sample] = {f.name: f for f in text_string_to_metric_families(prometheus(report))}[
        "ollama_fleet_model_vram_bytes"
    ].samples
    assert sample.labels["model"] == odd and sample.value == 5


def test_the_status_table_fits_80_columns_with_the_haproxy_column() -> None:
    """A wide case: a MIG instance name, restarts, a slow probe, a busy drained instance."""
    from rich.console import Console

    from ollama_fleet.cli.status_views import status_view as _status_view
    from ollama_fleet.gateway import ServerStats
    from ollama_fleet.status import GatewayStatus, InstanceStatus, NvmlStatus, StatusReport

    wide = InstanceStatus(
        name="gpu10-mig1",
        address="127.0.0.1:11544",
        gpus=["10-mig1"],
        pid=4194304,
        uptime_s=2 * 86400 + 3 * 3600,
        restarts=12,
        healthy=True,
        latency_ms=1234.5,
        version="0.33.0-rc2",
        devices=["CUDA MIG-x"],
        gateway=ServerStats(state="DRAIN", queued=3, in_flight=4),
    )
    down = InstanceStatus(
        name="gpu0_1",
        address="127.0.0.1:11534",
        gpus=["0", "1"],
        gateway=ServerStats(state="DOWN 1/2", queued=0, in_flight=0),
        error="refused",
    )
    wrong = InstanceStatus(
        name="gpu2",
        address="127.0.0.1:11536",
        gpus=["2"],
        version="0.33.0-rc2",
        error="sees Vulkan 0 (0000:10:00.0) beyond its pin: a non-CUDA backend ignores it",
    )
    report = StatusReport(
        source="systemd",
        nvml=NvmlStatus(available=False),
        gpus=[],
        instances=[wide, down, wrong],
        gateway=GatewayStatus(engine="haproxy", listen="0.0.0.0:8080", up=True, queued=5),
    )
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(_status_view(report))
    text = console.export_text()
    assert "…" not in text, text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "gpu10-mig1" in text and "↻12" in text and "DRAIN 4 busy 3 queued" in text
    assert "WRONG GPU" in text and "gpu2: sees Vulkan 0 (0000:10:00.0) beyond its pin" in text.replace("\n", " ")
    assert "gpu0_1: refused" in text
