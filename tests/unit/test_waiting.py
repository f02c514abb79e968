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
