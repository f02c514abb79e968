"""The errors core code raises; the CLI (cli/__init__.py) turns them into one red line and an exit code."""

from __future__ import annotations

EXIT_FAILED = 1  # an operation failed: an unhealthy instance, a taken port, `nginx -t`
EXIT_BAD_INPUT = 2  # an invalid flag, environment variable or config value
EXIT_MISSING = 3  # the environment lacks something: NVML, the ollama binary, the models dir


class FleetError(Exception):
    """Base of every error a user is meant to read."""

    exit_code = EXIT_FAILED


class UserError(FleetError):
    """A message the user can act on, and its exit code (the README lists them)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BadInput(UserError):
    """Invalid input: one line per bad field, exit 2."""

    def __init__(self, lines: str | list[str]) -> None:
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines), exit_code=EXIT_BAD_INPUT)


class Missing(UserError):
    """Something the environment must provide is not there, exit 3."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_MISSING)


class Interrupted(FleetError):
    """SIGINT or SIGTERM stopped an attached command: exit 128 + the signal, nothing said."""

    def __init__(self, signum: int) -> None:
        super().__init__("")
        self.exit_code = 128 + signum
