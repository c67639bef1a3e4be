"""The Redis plumbing that the ledger and the bus share: the client, its key names, errors, the decision codec.

Every key lives under PREFIX; a user's keys carry the `{user id}` hash tag, so that they share a hash slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from playgate.domain import Decision, Status, parse_reason
from playgate.errors import ConfigError, Unavailable

PREFIX = "playgate:"
LEASES_KEY = f"{PREFIX}leases"
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
# A pooled connection idle this long is PINGed before use, so that one left dead by a Redis restart is replaced
# instead of failing the request that draws it.
HEALTH_CHECK_INTERVAL_S = 5
# A command that meets a lost connection (a Redis restart, a dead pooled connection) is tried again on a new one,
# this many times with a short jittered backoff: requests succeed as soon as Redis answers. Timeouts are not
# retried, so a frozen Redis answers 503 after one socket timeout, not after several.
RETRIES = 3
RETRY_BACKOFF_BASE_S = 0.02
RETRY_BACKOFF_CAP_S = 0.25
REQUESTS_KEY = f"{PREFIX}requests"
DEAD_LETTER_KEY = f"{PREFIX}requests:dead"
GROUP = "workers"
DECISIONS_CHANNEL = f"{PREFIX}decisions"


def streams_key(user_id: str) -> str:
    """The hash of one user's streams; the hash tag keeps all of a user's keys on one slot."""
    return f"{PREFIX}{{{user_id}}}:streams"


def devices_key(user_id: str) -> str:
    """The hash of one user's registered devices (device id -> last seen)."""
    return f"{PREFIX}{{{user_id}}}:devices"


def idempotency_key(user_id: str, key: str) -> str:
    """Where an Idempotency-Key of a user is bound to its request."""
    return f"{PREFIX}{{{user_id}}}:key:{key}"


def decision_key(request_id: str) -> str:
    """Where the decision of a request is kept."""
    return f"{PREFIX}decision:{request_id}"


def pending_key(request_id: str) -> str:
    """The marker of a request still owed a decision."""
    return f"{PREFIX}pending:{request_id}"


REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> None:
    """ConfigError naming PLAYGATE_REDIS_URL unless `url` is a redis://, rediss:// or unix:// URL."""
    scheme = url.partition("://")[0].lower()
    if scheme not in REDIS_SCHEMES or "://" not in url:
        raise ConfigError(f"PLAYGATE_REDIS_URL: not a Redis URL (use redis://host:port/db), got scheme {scheme!r}")


def pool_options() -> dict[str, Any]:
    """The options of every Redis connection pool PlayGate opens (ledger, queue, fan-out, Socket.IO manager, login
    throttle): bounded timeouts, a health check of idle connections, and retries on a lost connection."""
    return {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry": Retry(
            ExponentialWithJitterBackoff(base=RETRY_BACKOFF_BASE_S, cap=RETRY_BACKOFF_CAP_S),
            RETRIES,
            supported_errors=(redis_errors.ConnectionError,),
        ),
    }


def connection_pool(url: str, **options: Any) -> ConnectionPool:
    """A connection pool for `url` with pool_options() (and `options`), for clients built elsewhere (limits)."""
    return ConnectionPool.from_url(url, **pool_options(), **options)


def connect(url: str, *, client_name: str | None = None) -> Redis:
    """A redis-py asyncio client for `url` with bounded timeouts (a dead server answers 503, it does not hang)
    that recovers by itself after a Redis restart (pool_options).

    `client_name` names its connections in CLIENT LIST (the queue names them after the worker's consumer).
    """
    client: Redis = Redis.from_url(url, client_name=client_name, decode_responses=True, **pool_options())
    return client


FORGET_CHUNK = 1000


async def forget_all(url: str) -> int:
    """Delete every PlayGate key (those under PREFIX) on the Redis at `url`; how many were deleted."""
    client = connect(url)
    deleted = 0
    try:
        async with translate_redis_errors():
            chunk: list[str] = []
            async for key in client.scan_iter(match=f"{PREFIX}*", count=FORGET_CHUNK):
                chunk.append(key)
                if len(chunk) >= FORGET_CHUNK:
                    deleted += await client.unlink(*chunk)
                    chunk = []
            if chunk:
                deleted += await client.unlink(*chunk)
    finally:
        await client.aclose()
    return deleted


@asynccontextmanager
async def translate_redis_errors() -> AsyncIterator[None]:
    """Turn a lost, loading or refusing Redis into Unavailable (503), once, here."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise Unavailable(f"Redis does not answer: {type(exc).__name__}: {exc}") from exc
    except redis_errors.ResponseError as exc:
        message = str(exc)
        if message.startswith(("LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "BUSY ")):
            raise Unavailable(f"Redis cannot serve now: {message}") from exc
        raise


def parse_time(value: Any) -> float:
    """A time the scripts keep as a string (or number) of epoch seconds."""
    return float(value)


def decision_to_json(d: Decision) -> dict[str, Any]:
    """A Decision as the JSON object admission.lua keeps (times as exact strings)."""
    body: dict[str, Any] = {
        "r": d.request_id,
        "u": d.user_id,
        "v": d.video_id,
        "d": d.device_id,
        "s": d.status.value,
        "a": d.active,
        "l": d.limit,
        "t": repr(d.decided_at),
    }
    if d.stream_id is not None:
        body["sid"] = d.stream_id
    if d.reason is not None:
        body["why"] = d.why
    if d.expires_at is not None:
        body["x"] = repr(d.expires_at)
    if d.shadow_reason is not None:
        body["sh"] = d.shadow_reason
    return body


def decision_from_json(d: dict[str, Any]) -> Decision:
    """A Decision from the JSON object admission.lua keeps."""
    reason, tag = parse_reason(d["why"]) if d.get("why") else (None, None)
    return Decision(
        request_id=d["r"],
        user_id=d["u"],
        video_id=d["v"],
        device_id=d["d"],
        status=Status(d["s"]),
        active=int(d["a"]),
        limit=int(d["l"]),
        decided_at=parse_time(d["t"]),
        stream_id=d.get("sid"),
        reason=reason,
        expires_at=parse_time(d["x"]) if d.get("x") is not None else None,
        reason_tag=tag,
        shadow_reason=d.get("sh"),
    )
