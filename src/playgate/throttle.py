"""Login throttling: failed logins counted per user name and per client address, in a moving window.

Only failures count, so a user who types the password right is never slowed down, while guessing one
account's password, or many accounts' from one address, is stopped with 429 and a Retry-After. The counters
live in this process (embedded) or in Redis (distributed: every API process shares them), through the
`limits` library; a storage failure is translated into `Unavailable`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.asyncio import ConnectionPool

from playgate.config import Settings
from playgate.errors import PlayGateError, Unavailable

log = logging.getLogger("playgate.throttle")

KEY_PREFIX = "playgate:throttle"


class Throttled(PlayGateError):
    """Too many failed logins for this user name or from this address; `retry_after_s` says when to retry."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int, limit: str) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        self.limit = limit

    @property
    def headers(self) -> dict[str, str]:
        """When to try again."""
        return {"Retry-After": str(self.retry_after_s)}


def storage_url(settings: Settings) -> str:
    """Where the counters live: Redis when the deployment has it, else this process's memory."""
    if settings.redis_url:
        return f"async+{settings.redis_url}"
    return "async+memory://"


class LoginThrottle:
    """Checks a login against both limits before the password is verified, and counts failures after."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        options: dict[str, Any] = {}
        # Our own connection pool, so that close() can release it (the storage itself has no close).
        self._pool = ConnectionPool.from_url(settings.redis_url) if settings.redis_url else None
        if self._pool is not None:
            options = {"implementation": "redispy", "key_prefix": KEY_PREFIX, "connection_pool": self._pool}
        self._storage = storage_from_string(storage_url(settings), wrap_exceptions=True, **options)
        self._limiter = MovingWindowRateLimiter(self._storage)
        window_s = settings.login_window_s
        self._per_user = RateLimitItemPerSecond(settings.login_failures_per_user, window_s)
        self._per_address = RateLimitItemPerSecond(settings.login_failures_per_address, window_s)
        self._clock = clock

    def _limits(self, name: str, address: str) -> list[tuple[str, RateLimitItem, str]]:
        return [
            ("user", self._per_user, name.strip().casefold()),
            ("address", self._per_address, address),
        ]

    async def check(self, name: str, address: str) -> None:
        """Raise Throttled when this user name or this address has used up its failed logins."""
        for kind, item, key in self._limits(name, address):
            try:
                allowed = await self._limiter.test(item, "login", kind, key)
                if allowed:
                    continue
                stats = await self._limiter.get_window_stats(item, "login", kind, key)
            except StorageError as exc:
                raise Unavailable(f"The login rate limiter does not answer ({exc.storage_error}).") from None
            retry_after_s = max(1, math.ceil(stats.reset_time - self._clock()))
            log.warning("login throttled", extra={"limit": kind, "retry_after_s": retry_after_s})
            what = "this user name" if kind == "user" else "your address"
            raise Throttled(
                f"Too many failed logins for {what}; try again in {retry_after_s} s.",
                retry_after_s=retry_after_s,
                limit=kind,
            )

    async def close(self) -> None:
        """Release the Redis connections (nothing to do for the in-process counters)."""
        if self._pool is not None:
            await self._pool.aclose()

    async def failed(self, name: str, address: str) -> None:
        """Count one failed login against both limits."""
        for kind, item, key in self._limits(name, address):
            try:
                await self._limiter.hit(item, "login", kind, key)
            except StorageError as exc:
                raise Unavailable(f"The login rate limiter does not answer ({exc.storage_error}).") from None
