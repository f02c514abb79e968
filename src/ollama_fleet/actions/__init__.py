"""One module per verb (up, down, restart, install): a function that takes the config and a
`Progress`, does the work and returns a typed report. Nothing here prints or exits; the CLI
turns reports into tables and exit codes."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """How a verb tells the person running it what happens while it works."""

    def say(self, line: str) -> None:
        """A line worth printing now ("gpu0: restarting (plan changed: ...)")."""

    def warn(self, line: str) -> None:
        """Something the user should know, that does not stop the verb."""

    def status(self, line: str) -> None:
        """The one live line of a wait ("waiting for instances: 3/8 answer")."""
