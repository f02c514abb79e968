"""`logs [INSTANCE...] [-f] [-n N]`: what the instances wrote, from the supervisor's log
files (a fleet of `up`) or from the journal (a fleet under systemd). With several instances
each line carries the instance's name."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ollama_fleet.errors import BadInput
from ollama_fleet.fleet import locate

Write = Callable[[str], None]


def show_logs(state_dir: Path, names: list[str], *, follow: bool, lines: int, write: Write) -> None:
    fleet = locate(state_dir)
    unknown = [n for n in names if n not in fleet.names]
    if unknown:
        raise BadInput(
            [f"instance: no instance {n!r} in this fleet (instances: {', '.join(fleet.names)})" for n in unknown]
        )
    chosen = names or fleet.names
    sources = fleet.log_sources(chosen)
    label = (lambda name: f"{name} | ") if len(chosen) > 1 else (lambda name: "")
    try:
        if all(isinstance(s, Path) for s in sources.values()):
            _files({n: s for n, s in sources.items() if isinstance(s, Path)}, follow, lines, write, label)
        else:
            _journal({n: s for n, s in sources.items() if isinstance(s, list)}, follow, lines, write, label)
    except KeyboardInterrupt:
        return  # Ctrl-C is how one leaves -f: not an error


def _files(files: dict[str, Path], follow: bool, lines: int, write: Write, label: Callable[[str], str]) -> None:
    """The last lines of each file, then (with follow) new lines as they come, across the
    supervisor's rotations (a new file under the same name)."""
    handles: dict[str, tuple[int, IO[str] | None]] = {}
    for name, path in files.items():
        try:
            with path.open(errors="replace") as log:
                for line in deque(log, maxlen=lines) if lines else []:
                    write(label(name) + line.rstrip("\n"))
        except FileNotFoundError:
            continue
    if not follow:
        return
    for name, path in files.items():
        handles[name] = _open_at_end(path)
    while True:
        for name, path in files.items():
            inode, fh = handles[name]
            if fh is not None:
                for line in fh:
                    write(label(name) + line.rstrip("\n"))
            if _inode(path) != inode:  # rotated: read the new file from its start
                if fh is not None:
                    fh.close()
                handles[name] = (_inode(path), path.open(errors="replace") if path.exists() else None)
        time.sleep(0.2)


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return -1


def _open_at_end(path: Path) -> tuple[int, IO[str] | None]:
    if not path.exists():
        return -1, None
    fh = path.open(errors="replace")
    fh.seek(0, os.SEEK_END)
    return _inode(path), fh


def _journal(
    commands: dict[str, list[str]], follow: bool, lines: int, write: Write, label: Callable[[str], str]
) -> None:
    """One journalctl for all units (-o json, to tell the units' lines apart)."""
    units = {argv[argv.index("-u") + 1]: name for name, argv in commands.items()}
    argv = ["journalctl", *(a for unit in units for a in ("-u", unit)), "-n", str(lines), "-o", "json", "--no-pager"]
    with subprocess.Popen([*argv, *(["-f"] if follow else [])], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            entry = json.loads(raw)
            message = entry.get("MESSAGE")
            if isinstance(message, list):  # journald stores non-UTF-8 messages as bytes
                message = bytes(message).decode(errors="replace")
            write(label(units.get(entry.get("_SYSTEMD_UNIT", ""), "?")) + str(message))
