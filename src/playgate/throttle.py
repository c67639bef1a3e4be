"""Login throttling: logins counted per (user name, client address) and per client address, in a fixed window.

Each attempt is counted before its password is checked, in one atomic step (the `limits` library's hit), so that
any number of concurrent guesses gets no more checks than the limit; an attempt whose password was right is then
given back, so only failures use up the limits and a user who types the password right is never slowed down. The
name is counted per address (OWASP's advice on credential stuffing): a guesser on one address cannot lock the user
out from another. The counters live in this process (embedded) or in Redis (distributed: every API process shares
them); a storage failure is translated into `Unavailable`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, cast

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.asyncio import RedisCluster

from playgate.config import Settings
from playgate.connections import cluster_tls, connection_pool, is_cluster_url
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
    """Which `limits` storage keeps the counters: Redis when the deployment has it, else this process's memory.

    Off a cluster, LoginThrottle hands `limits` PlayGate's own connection pool, which says where Redis is (a server,
    its socket file, TLS, the primary the Sentinels name: connections.connection_pool), so the URL only picks the
    storage. On a cluster `limits` makes its client from async+redis+cluster://, a scheme of its own (it knows no
    TLS cluster scheme: LoginThrottle passes the TLS options), the URL's query left out."""
    if not settings.redis_url:
        return "async+memory://"
    if is_cluster_url(settings.redis_url):
        return f"async+redis+cluster://{settings.redis_url.partition('://')[2].partition('?')[0]}"
    return "async+redis://"


class LoginThrottle:
    """Counts a login against both limits before the password is verified, and gives it back when it was right."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        options: dict[str, Any] = {}
        # Our own connection pool, so that close() can release it (the storage itself has no close), with the
        # health checks and retries of every PlayGate pool. On a Redis Cluster (async+redis+cluster://) `limits`
        # makes its own RedisCluster client, closed through its bridge.
        cluster = settings.redis_url is not None and is_cluster_url(settings.redis_url)
        self._pool = connection_pool(settings.redis_url) if settings.redis_url and not cluster else None
        if settings.redis_url is not None:
            options = {"implementation": "redispy", "key_prefix": KEY_PREFIX}
            if cluster:
                options.update(cluster_tls(settings.redis_url))
        if self._pool is not None:
            options["connection_pool"] = self._pool
        self._storage = cast(AsyncStorage, storage_from_string(storage_url(settings), wrap_exceptions=True, **options))
        self._limiter = FixedWindowRateLimiter(self._storage)
        window_s = settings.login_window_s
        self._per_user = RateLimitItemPerSecond(settings.login_failures_per_user, window_s)
        self._per_address = RateLimitItemPerSecond(settings.login_failures_per_address, window_s)
        self._clock = clock

    def _limits(self, name: str, address: str) -> list[tuple[str, RateLimitItem, tuple[str, ...]]]:
        return [
            ("user", self._per_user, ("login", "user", address, name.strip().casefold())),
            ("address", self._per_address, ("login", "address", address)),
        ]

    async def attempt(self, name: str, address: str) -> None:
        """Count one login attempt against both limits, atomically; Throttled when either is used up.

        Call before verifying the password: concurrent attempts are each counted before any is checked.
        """
        refused: tuple[str, RateLimitItem, tuple[str, ...]] | None = None
        try:
            for kind, item, key in self._limits(name, address):
                if not await self._limiter.hit(item, *key) and refused is None:
                    refused = (kind, item, key)
            if refused is None:
                return
            stats = await self._limiter.get_window_stats(refused[1], *refused[2])
        except StorageError as exc:
            raise Unavailable(f"The login rate limiter does not answer ({exc.storage_error}).") from None
        kind = refused[0]
        retry_after_s = max(1, math.ceil(stats.reset_time - self._clock()))
        log.warning("login throttled", extra={"limit": kind, "retry_after_s": retry_after_s})
        what = "this user name from your address" if kind == "user" else "your address"
        raise Throttled(
            f"Too many failed logins for {what}; try again in {retry_after_s} s.",
            retry_after_s=retry_after_s,
            limit=kind,
        )

    async def succeeded(self, name: str, address: str) -> None:
        """Give back the attempt of a login whose password was right: only failures use up the limits."""
        for _kind, item, key in self._limits(name, address):
            try:
                await self._storage.incr(item.key_for(*key), item.get_expiry(), amount=-1)
            except StorageError as exc:
                raise Unavailable(f"The login rate limiter does not answer ({exc.storage_error}).") from None

    async def close(self) -> None:
        """Release the Redis connections (nothing to do for the in-process counters)."""
        if self._pool is not None:
            await self._pool.aclose()
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if isinstance(client, RedisCluster):
            await client.aclose()
