"""The one wait loop, with its clock and sleep replaced: no real time passes."""

from __future__ import annotations

from ollama_fleet.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_it_returns_the_first_truthy_answer() -> None:
    clock = Clock()
    answers = iter([None, 0, "ready"])
    assert wait_until(lambda: next(answers), 10, interval=1, clock=clock, sleep=clock.sleep) == "ready"
    assert clock.sleeps == [1, 1]


def test_it_gives_up_at_the_deadline_with_the_last_answer_and_never_oversleeps() -> None:
    clock = Clock()
    calls = []
    answer = wait_until(lambda: calls.append(clock.now) or [], 2.5, interval=1, clock=clock, sleep=clock.sleep)
    assert answer == [] and calls == [0, 1, 2, 2.5]  # checked once more at the deadline
    assert clock.now == 2.5


def _installed(clock: Clock, answers: dict[str, list], restarts: dict[str, list[int]], timeout: float = 60):
    """wait_installed over fakes: per instance, what each poll's probe and NRestarts say."""
    from ollama_fleet.fleet import wait_installed

    def versions(addresses: list[str]) -> dict[str, str | None]:
        return {a: answers[a].pop(0) if len(answers[a]) > 1 else answers[a][0] for a in addresses}

    def restarts_of(name: str) -> int:
        return restarts[name].pop(0) if len(restarts[name]) > 1 else restarts[name][0]

    return wait_installed(
        {"gpu0": "a0", "gpu1": "a1"},
        timeout,
        versions=versions,
        restarts=restarts_of,
        explain=lambda name: f" [journal of {name}]",
        clock=clock,
        sleep=clock.sleep,
    )


def test_installed_instances_that_answer_end_the_wait() -> None:
    clock = Clock()
    failed = _installed(clock, {"a0": [None, "0.33.0"], "a1": [None, None, "0.33.0"]}, {"gpu0": [0], "gpu1": [0]})
    assert failed == {} and clock.now < 1


def test_a_crash_loop_ends_the_wait_at_once_with_the_units_journal() -> None:
    """Two restarts of a unit without an answer: said at once, not after the 60 s wait."""
    clock = Clock()
    failed = _installed(clock, {"a0": ["0.33.0"], "a1": [None]}, {"gpu0": [5], "gpu1": [1, 1, 2, 3]})
    assert failed == {
        "gpu1": "gpu1 exited and was restarted 2 times without answering (a crash loop) [journal of gpu1]"
    }
    assert clock.now < 1  # three polls, 0.2 s apart


def test_an_instance_that_never_answers_fails_at_the_deadline() -> None:
    clock = Clock()
    failed = _installed(clock, {"a0": ["0.33.0"], "a1": [None]}, {"gpu0": [0], "gpu1": [0]}, timeout=5)
    assert failed == {"gpu1": "gpu1 did not answer GET /api/version within 5s [journal of gpu1]"}
    assert clock.now == 5
