"""Per-user rate limits of one process: each user's play requests and socket events drawn from a token bucket.

A bucket holds `burst` tokens and refills at `rate_per_s`; a request takes one, and a user with none left gets
TooManyRequests with the seconds until the next token. The buckets live in this process only (no round trip on
the players' hot path): with N API processes behind a balancer a user may get up to N times the rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from playgate.errors import TooManyRequests

# Past this many users the buckets that have refilled completely (idle users) are forgotten, which bounds memory.
MAX_TRACKED_USERS = 100_000


class UserRate:
    """A token bucket per user; `rate_per_s` 0 means no limit. The clock is passed in."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # user id -> (tokens, at)

    def charge(self, user_id: str) -> None:
        """Take one token of `user_id`'s bucket; TooManyRequests (with Retry-After) when it is empty."""
        if self.rate_per_s <= 0:
            return
        now = self._clock()
        tokens, at = self._buckets.get(user_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate_per_s)
        if tokens < 1.0:
            self._buckets[user_id] = (tokens, now)
            retry_after_s = max(1, math.ceil((1.0 - tokens) / self.rate_per_s))
            raise TooManyRequests(
                f"Too many requests for this user (at most {self.rate_per_s:g} a second); "
                f"try again in {retry_after_s} s.",
                retry_after_s=retry_after_s,
            )
        if len(self._buckets) >= MAX_TRACKED_USERS:
            self._forget_full(now)
        self._buckets[user_id] = (tokens - 1.0, now)

    def _forget_full(self, now: float) -> None:
        refill_s = self.burst / self.rate_per_s
        self._buckets = {u: b for u, b in self._buckets.items() if now - b[1] < refill_s}
