"""The injected clock the tests drive: time moves only when a test says so."""

from __future__ import annotations


class Clock:
    """Epoch seconds, moved by the test (`clock.now += s` or `clock.advance(s)`)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
