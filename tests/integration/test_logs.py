"""`logs`: the supervisor's log files of a fleet `up` started (a fleet under systemd reads
the journal: tests/integration/test_systemd_boot.py)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import httpx


def test_logs_show_and_follow_each_instance(fleet) -> None:
    assert fleet.run("up").returncode == 0
    both = fleet.run("logs", "-n", "20")
    assert both.returncode == 0, both.stderr
    lines = both.stdout.splitlines()
    assert any(line.startswith("gpu0 | ") and "inference compute" in line for line in lines), both.stdout
    assert any(line.startswith("gpu1 | ") and "inference compute" in line for line in lines), both.stdout
    one = fleet.run("logs", "gpu1", "-n", "3")
    assert len(one.stdout.splitlines()) == 3 and not one.stdout.startswith("gpu1 | ")
    assert fleet.run("logs", "gpu7").returncode == 2

    follow = subprocess.Popen(
        fleet.argv("logs", "-f", "-n", "0", "gpu0"), env=fleet.env, stdout=subprocess.PIPE, text=True
    )
    guard = threading.Timer(15, follow.send_signal, [signal.SIGINT])  # a line that never comes ends it
    guard.start()
    try:
        time.sleep(1)  # let it open the file at its end
        httpx.get(fleet.url(0, "/api/tags"), timeout=5)  # the fake logs a [GIN] line for it
        assert follow.stdout is not None
        line = follow.stdout.readline()
        assert "[GIN]" in line and "/api/tags" in line, line
    finally:
        guard.cancel()
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=10) == 0  # Ctrl-C ends a follow: not an error
