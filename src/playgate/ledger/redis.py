"""The Redis ledger: each user's streams in one hash under a `{user id}` hash tag, decided by Lua scripts.

Keys (all under PREFIX; their names are kept in playgate.connections, shared with the bus):
- `playgate:{<user id>}:streams` hash, stream id -> JSON [video id, device id, started_at, expires_at, device name,
  kinds, away];
- `playgate:{<user id>}:devices` hash, device id -> last seen (epoch seconds), under a plan's device cap;
- `playgate:{<user id>}:key:<idempotency key>` JSON {request id, video id}, kept decision_ttl_s;
- `playgate:decision:<request id>` the decision, JSON, kept decision_ttl_s;
- `playgate:leases` sorted set of every stream id by expires_at, for the sweeper and the active count.

A stream id carries its user (`<user id as hex>-<random>`), so that a stream is found from its id alone. A batch
of admissions is decided by admission.lua (the rule of playgate.admission.decide, mirrored step for step, on the
instant the injected clock gives), ADMIT_CHUNK requests a call, the calls in one pipeline, in order. The lease
index is one key for all users, and a call names the keys of several users, so this ledger runs on one Redis
server (with replicas), not on a Redis Cluster.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import orjson
from redis import exceptions as redis_errors

from playgate.admission import by_age, device_window_s
from playgate.connections import (
    LEASES_KEY,
    connect,
    decision_from_json,
    decision_key,
    decision_to_json,
    devices_key,
    idempotency_key,
    parse_time,
    streams_key,
    translate_redis_errors,
)
from playgate.domain import Admission, Decision, Device, EndedStream, Outcome, Policy, Reason, Rules, Stream
from playgate.ledger.protocol import KeyClaim

SWEEP_CHUNK = 500
# Requests one admission.lua call decides: enough to spread the call's cost, few enough that Redis is never
# held long (about a millisecond).
ADMIT_CHUNK = 64
SWEEP_MAX_CHUNKS = 20
# Most active streams (of all users) looked through when a video is deleted: a bound, not an expected size.
STOP_VIDEO_MAX_STREAMS = 1_000_000


def new_stream_id(user_id: str) -> str:
    """A fresh stream id that names its user: `<user id, UTF-8 as hex>-<96 random bits as hex>`."""
    return f"{user_id.encode().hex()}-{secrets.token_hex(12)}"


def stream_owner(stream_id: str) -> str | None:
    """The user id carried in a stream id of this ledger, or None for an id it did not make."""
    head, dash, _ = stream_id.partition("-")
    if not dash or not head:
        return None
    try:
        return bytes.fromhex(head).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _script(name: str) -> str:
    return (resources.files("playgate.ledger") / name).read_text(encoding="utf-8")


def _stream_from(stream_id: str, user_id: str, fields: Sequence[Any]) -> Stream:
    """A Stream from the JSON list [video id, device id, started_at, expires_at, device name?, kinds?, away?] the
    scripts keep (streams kept before device names have four fields, before policies five)."""
    kinds = fields[5] if len(fields) > 5 else None  # cjson writes an empty list as {}
    return Stream(
        id=stream_id,
        user_id=user_id,
        video_id=str(fields[0]),
        device_id=str(fields[1]),
        started_at=parse_time(fields[2]),
        expires_at=parse_time(fields[3]),
        device_name=str(fields[4]) if len(fields) > 4 else "",
        kinds=tuple(kinds) if kinds else (),
        away=len(fields) > 6 and bool(fields[6]),
    )


def _outcome_from(raw: str, user_id: str) -> Outcome:
    reply = orjson.loads(raw)
    # cjson writes an empty list as {}; a row is [stream id, video id, device id, started_at, expires_at, reason,
    # device name]
    ended = tuple(
        EndedStream(_stream_from(row[0], user_id, [*row[1:5], *row[6:]]), Reason(row[5]))
        for row in reply.get("ended") or []
    )
    conflicts = tuple(_stream_from(row[0], user_id, [*row[1:5], *row[6:]]) for row in reply.get("conflicts") or [])
    return Outcome(decision_from_json(reply["decision"]), ended, conflicts)


def _rules_arg(rules: Rules, *, total: bool = False) -> dict[str, Any]:
    """Rules as admission.lua reads them: {p, k, t, d, w, a, m}, caps that are not set left out."""
    body: dict[str, Any] = {"p": (rules.on_limit or Policy.deny).value}
    if rules.kind_limits:
        body["k"] = [list(pair) for pair in rules.kind_limits]
    if rules.max_per_title is not None:
        body["t"] = rules.max_per_title
    if rules.max_devices is not None:
        body["d"] = rules.max_devices
        body["w"] = rules.device_window_s
    if rules.max_away_streams is not None:
        body["a"] = rules.max_away_streams
    if total and rules.max_streams is not None:
        body["m"] = rules.max_streams
    return body


class RedisLedger:
    """Ledger on Redis: atomic per user because every change of a user's streams is one Lua script."""

    def __init__(
        self,
        url: str,
        *,
        lease_s: float,
        decision_ttl_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._redis = connect(url)
        self._lease_s = lease_s
        self._decision_ttl_ms = max(1, round(decision_ttl_s * 1000))
        self._clock = clock
        self._admit = self._redis.register_script(_script("admission.lua"))
        self._renew = self._redis.register_script(_script("heartbeat.lua"))
        self._stop = self._redis.register_script(_script("stop.lua"))
        self._expire = self._redis.register_script(_script("expire.lua"))

    @staticmethod
    def _request_arg(admission: Admission) -> bytes:
        """One request as admission.lua reads it: a JSON array."""
        request, quota = admission.request, admission.quota
        return orjson.dumps(
            [
                new_stream_id(request.user_id),
                request.request_id,
                request.user_id,
                request.video_id,
                request.device_id,
                request.replace_stream_id or "",
                quota.limit,
                "1" if quota.disabled else "0",
                "1" if quota.exists else "0",
                "1" if request.replace_device_stream else "0",
                request.device_name,
                request.kinds,
                1 if request.away else 0,
                device_window_s(quota) or 0,
                _rules_arg(quota.rules),
                _rules_arg(quota.shadow, total=True) if quota.shadow is not None else False,
            ]
        )

    async def decide(self, admissions: Sequence[Admission]) -> list[Outcome]:
        """Decide the batch in order: one admission.lua call per ADMIT_CHUNK requests, all in one pipeline."""
        if not admissions:
            return []
        now = self._clock()
        async with translate_redis_errors():
            try:
                replies = await self._admit_all(admissions, now)
            except redis_errors.NoScriptError:
                # The server lost its scripts (a restart, SCRIPT FLUSH): load and run the batch again. A request
                # the first run decided gets that decision back, since the script keeps each one.
                await self._redis.script_load(self._admit.script)
                replies = await self._admit_all(admissions, now)
        return [_outcome_from(raw, a.request.user_id) for raw, a in zip(replies, admissions, strict=True)]

    async def _admit_all(self, admissions: Sequence[Admission], now: float) -> list[Any]:
        """The replies of admission.lua, one per admission: chunks of ADMIT_CHUNK requests, one EVALSHA each, in
        one pipeline (one round trip, without the SCRIPT EXISTS that redis-py sends before pipelined scripts)."""
        settings = (repr(now), repr(float(self._lease_s)), self._decision_ttl_ms)
        pipe = self._redis.pipeline(transaction=False)
        for start in range(0, len(admissions), ADMIT_CHUNK):
            chunk = admissions[start : start + ADMIT_CHUNK]
            keys: list[str] = [LEASES_KEY]
            for admission in chunk:
                user_id = admission.request.user_id
                keys += (streams_key(user_id), decision_key(admission.request.request_id), devices_key(user_id))
            pipe.evalsha(self._admit.sha, len(keys), *keys, *settings, *map(self._request_arg, chunk))
        replies: list[Any] = []
        for chunk_replies in await pipe.execute():
            replies += chunk_replies
        return replies

    async def decision(self, request_id: str) -> Decision | None:
        """The kept decision of a request, if any."""
        async with translate_redis_errors():
            raw = await self._redis.get(decision_key(request_id))
        return decision_from_json(orjson.loads(raw)) if raw else None

    async def keep(self, decisions: Sequence[Decision]) -> None:
        """SET NX each decision, kept decision_ttl_s: a request decided already keeps its decision."""
        if not decisions:
            return
        async with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            for d in decisions:
                answer = orjson.dumps(decision_to_json(d))
                pipe.set(decision_key(d.request_id), answer, nx=True, px=self._decision_ttl_ms)
            await pipe.execute()

    async def streams(self, user_id: str) -> list[Stream]:
        """The user's streams whose lease has not run out, oldest first."""
        async with translate_redis_errors():
            raw = await self._redis.hgetall(streams_key(user_id))
        now = self._clock()
        found = [_stream_from(str(sid), user_id, orjson.loads(value)) for sid, value in raw.items()]
        return by_age(s for s in found if s.live(now))

    async def stream(self, stream_id: str) -> Stream | None:
        """One active stream, found through the user its id names."""
        user_id = stream_owner(stream_id)
        if user_id is None:
            return None
        async with translate_redis_errors():
            raw = await self._redis.hget(streams_key(user_id), stream_id)
        if raw is None:
            return None
        stream = _stream_from(stream_id, user_id, orjson.loads(raw))
        return stream if stream.live(self._clock()) else None

    async def heartbeat(self, stream_id: str, user_id: str | None = None) -> Stream | None:
        """Push the lease of an active stream to now + lease_s (only the user's own, when user_id is given)."""
        owner = stream_owner(stream_id)
        if owner is None or (user_id is not None and owner != user_id):
            return None
        async with translate_redis_errors():
            raw = await self._renew(
                keys=[streams_key(owner), LEASES_KEY], args=[stream_id, repr(self._clock()), repr(self._lease_s)]
            )
        return _stream_from(stream_id, owner, orjson.loads(raw)) if raw else None

    async def stop(self, stream_ids: Sequence[str] | None, user_id: str, video_id: str | None = None) -> list[Stream]:
        """End the user's chosen streams; return those that were still active, oldest first."""
        if stream_ids is not None and not stream_ids:
            return []
        args: list[Any] = [repr(self._clock()), video_id or "", "all" if stream_ids is None else "ids"]
        args.extend(stream_ids or ())
        async with translate_redis_errors():
            raw = await self._stop(keys=[streams_key(user_id), LEASES_KEY], args=args)
        rows = orjson.loads(raw) or []
        stopped = [_stream_from(row[0], user_id, row[1:]) for row in rows]
        return by_age(stopped)

    async def stop_video(self, video_id: str) -> list[Stream]:
        """End every user's streams of the video: the users are found through the lease index (every stream id
        names its user), SWEEP_CHUNK ids a read; each user's streams of the video end in one stop.lua call."""
        owners: set[str] = set()
        async with translate_redis_errors():
            for start in range(0, STOP_VIDEO_MAX_STREAMS, SWEEP_CHUNK):
                ids = await self._redis.zrange(LEASES_KEY, start, start + SWEEP_CHUNK - 1)
                owners.update(owner for sid in ids if (owner := stream_owner(str(sid))) is not None)
                if len(ids) < SWEEP_CHUNK:
                    break
        stopped: list[Stream] = []
        for owner in sorted(owners):
            stopped += await self.stop(None, owner, video_id)
        return stopped

    async def sweep(self) -> list[EndedStream]:
        """End every stream whose lease ran out; several sweepers at once end (and report) each one once.

        Decisions and idempotency keys need no sweeping: Redis drops them after decision_ttl_s.
        """
        ended: list[EndedStream] = []
        now = self._clock()
        async with translate_redis_errors():
            for _ in range(SWEEP_MAX_CHUNKS):
                due = await self._redis.zrangebyscore(LEASES_KEY, "-inf", repr(now), start=0, num=SWEEP_CHUNK)
                candidates = [str(member) for member in due]
                if not candidates:
                    break
                pipe = self._redis.pipeline(transaction=False)
                owners = []
                for stream_id in candidates:
                    owner = stream_owner(stream_id)
                    if owner is None:
                        pipe.zrem(LEASES_KEY, stream_id)
                    else:
                        await self._expire(
                            keys=[streams_key(owner), LEASES_KEY], args=[stream_id, repr(now)], client=pipe
                        )
                    owners.append(owner)
                replies = await pipe.execute()
                for stream_id, owner, raw in zip(candidates, owners, replies, strict=True):
                    if owner is not None and isinstance(raw, str):
                        ended.append(EndedStream(_stream_from(stream_id, owner, orjson.loads(raw)), Reason.expired))
                if len(candidates) < SWEEP_CHUNK:
                    break
        return ended

    async def claim_key(self, user_id: str, key: str, request_id: str, video_id: str) -> KeyClaim:
        """Bind the key to request_id unless it is bound already (SET NX GET: one atomic command)."""
        value = orjson.dumps({"r": request_id, "v": video_id}).decode()
        async with translate_redis_errors():
            previous = await self._redis.set(
                idempotency_key(user_id, key), value, nx=True, get=True, px=self._decision_ttl_ms
            )
        if not isinstance(previous, str | bytes):
            return KeyClaim(request_id, video_id, created=True)
        bound = orjson.loads(previous)
        return KeyClaim(bound["r"], bound["v"], created=False)

    async def devices(self, user_id: str) -> list[Device]:
        """The user's registered devices, least recently seen first."""
        async with translate_redis_errors():
            raw = await self._redis.hgetall(devices_key(user_id))
        found = [Device(str(device_id), user_id, parse_time(seen)) for device_id, seen in raw.items()]
        return sorted(found, key=lambda d: (d.last_seen_at, d.id))

    async def forget_device(self, user_id: str, device_id: str) -> bool:
        """Remove a registered device (its streams play on); False if it was not registered."""
        async with translate_redis_errors():
            return bool(await self._redis.hdel(devices_key(user_id), device_id))

    async def count_active(self) -> int:
        """Streams whose lease has not run out, from the lease index."""
        async with translate_redis_errors():
            return int(await self._redis.zcount(LEASES_KEY, f"({self._clock()!r}", "+inf"))

    async def ping(self) -> None:
        """Raise Unavailable unless Redis answers."""
        async with translate_redis_errors():
            await self._redis.ping()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
