"""The Redis ledger: each user's streams in one hash under a `{user id}` hash tag, decided by Lua scripts.

Keys (all under PREFIX; their names are kept in playgate.connections, shared with the bus):
- `playgate:{<user id>}:streams` hash, a small record a stream (record.lua says its format: a stream's
  expires_at is its score in the lease index alone);
- `playgate:{<user id>}:devices` hash, device id -> last seen (epoch seconds), under a plan's device cap;
- `playgate:{<user id>}:key:<idempotency key>` JSON {request id, video id}, kept decision_ttl_s;
- `playgate:decision:<request id>` the decision, JSON, kept decision_ttl_s;
- `playgate:leases` sorted set of every stream id by expires_at, for the sweeper and the active count;
- `playgate:events` the change log: a stream each script that decides or ends streams appends its change to, in
  the same call (admission.lua says its entries), drained into the audit trail by the consumer group `audit`
  (read_changes, ack_changes).
On a Redis Cluster (a redis+cluster:// URL) the last three live in each user's hash slot (connections.KeyLayout):
`playgate:{<user id>}:decision:<request id>`, and one lease index and one change log per bucket.

A stream id carries its user (`<user id as hex>-<random>`), so that a stream is found from its id alone. A batch
of admissions is decided by admission.lua (the rule of playgate.admission.decide, mirrored step for step, on the
instant the injected clock gives), ADMIT_CHUNK requests a call. On one server the calls go in one pipeline, in
order. On a cluster the batch is split by the node that holds each user's slot: each node gets its calls in order
(a user's requests keep theirs), the nodes at once; a call whose slots moved (MOVED, ASK, TRYAGAIN during a
migration or a failover) ran nothing, and its requests are decided again one slot a call through redis-py's
cluster routing, which follows the redirections.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.commands.core import AsyncScript

from playgate.admission import SUPERSEDED_AFTER_S, by_age, device_window_s
from playgate.batch import GroupCommit
from playgate.connections import (
    DECISIONS_CHANNEL,
    EVENTS_GROUP,
    LEASES_KEY,
    SLOTS_PER_BUCKET,
    STOP_REPLY_TTL_MS,
    KeyLayout,
    RedisClient,
    ScriptCall,
    call_together,
    connect,
    decision_from_json,
    decision_to_json,
    idempotency_key,
    layout_for,
    parse_time,
    translate_redis_errors,
)
from playgate.domain import (
    Admission,
    Decision,
    Device,
    EndedStream,
    LoggedChange,
    Outcome,
    Policy,
    Reason,
    Rules,
    Stream,
    id_owner,
    new_id,
    owned_id,
)
from playgate.ledger.protocol import KeyClaim

SWEEP_CHUNK = 500
# Requests one admission.lua call decides: enough to spread the call's cost, few enough that Redis is never
# held long (about a millisecond).
ADMIT_CHUNK = 64
SWEEP_MAX_CHUNKS = 20
# Most active streams (of all users) looked through when a video is deleted: a bound, not an expected size.
STOP_VIDEO_MAX_STREAMS = 1_000_000
# How long a call for a slot that is moving (or whose primary is failing over) is tried again, and how often.
SLOT_SETTLE_S = 5.0
SLOT_SETTLE_PAUSE_S = 0.02
# admission.lua on a cluster: one call may hold keys of several slots, all on the node it is sent to (Redis 7).
CROSS_SLOT_SHEBANG = "#!lua flags=allow-cross-slot-keys\n"
# Entries of the change logs one drain.lua call takes, at most (on a cluster: per node).
DRAIN_CHUNK = 500

log = logging.getLogger("playgate.ledger")


# A stream id names its user (domain.owned_id), so that a stream is found from its id alone.
new_stream_id = owned_id
stream_owner = id_owner


def _script(name: str) -> str:
    return (resources.files("playgate.ledger") / name).read_text(encoding="utf-8")


def _record_script(name: str, shebang: str = "") -> str:
    """A script that reads or writes the users' streams hashes, with the stream record's codec (record.lua) in
    front of it (after its shebang, which Redis wants on the first line)."""
    return shebang + _script("record.lua") + _script(name)


def _stream_from(stream_id: str, user_id: str, fields: Sequence[Any]) -> Stream:
    """A Stream from the wire list [video id, device id, started_at, expires_at, device name, kinds, away] the
    scripts answer with (record.lua), every field there whatever the record's format."""
    video_id, device_id, started_at, expires_at, device_name, kinds, away = fields
    return Stream(
        id=stream_id,
        user_id=user_id,
        video_id=str(video_id),
        device_id=str(device_id),
        started_at=parse_time(started_at),
        expires_at=parse_time(expires_at),
        device_name=str(device_name),
        kinds=tuple(kinds) if kinds else (),  # cjson writes an empty list as {}
        away=bool(away),
    )


def moved_or_down(exc: Exception) -> bool:
    """Whether a cluster call failed because its slot is moving or its node is away (the call ran nothing: it
    may be sent again, routed anew), not for a reason of its own."""
    kinds = (
        redis_errors.AskError,  # and MovedError
        redis_errors.TryAgainError,  # also admission.lua's answer when a key of the call moved away
        redis_errors.ClusterError,  # the cluster is down, or redis-py followed redirections until its TTL
        redis_errors.ReadOnlyError,  # a call sent to a primary that has just become a replica
        redis_errors.ConnectionError,
        redis_errors.TimeoutError,
    )
    return isinstance(exc, kinds) or str(exc).startswith(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY"))


def _by_slot(chunk: Sequence[Admission], keys: KeyLayout) -> list[list[Admission]]:
    """The admissions grouped by their user's hash slot, each group in the batch's order."""
    groups: dict[int, list[Admission]] = {}
    for admission in chunk:
        groups.setdefault(keys.slot(admission.request.user_id), []).append(admission)
    return list(groups.values())


def _row_stream(row: Sequence[Any], user_id: str) -> Stream:
    """The stream of one of admission.lua's rows [stream id, video id, device id, started_at, expires_at, reason,
    device name, kind tags, away]."""
    return _stream_from(row[0], user_id, [*row[1:5], *row[6:]])


def _ended_from(rows: Sequence[Sequence[Any]], user_id: str) -> tuple[EndedStream, ...]:
    """Ended streams from admission.lua's rows."""
    return tuple(EndedStream(_row_stream(row, user_id), Reason(row[5])) for row in rows)


def _change_from(entry: str, fields: Sequence[Any]) -> LoggedChange:
    """A change log entry (admission.lua says its fields) as a LoggedChange."""
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    rows = orjson.loads(values["e"]) if "e" in values else []
    if "d" in values:
        decision = decision_from_json(orjson.loads(values["d"]))
        policy = Policy(values["p"]) if "p" in values else None
        return LoggedChange(entry, decision.decided_at, decision, _ended_from(rows or [], decision.user_id), policy)
    return LoggedChange(entry, parse_time(values["t"]), None, _ended_from(rows or [], str(values["u"])))


def _outcome_from(raw: str, user_id: str) -> Outcome:
    reply = orjson.loads(raw)
    # cjson writes an empty list as {}
    ended = _ended_from(reply.get("ended") or [], user_id)
    conflicts = tuple(_row_stream(row, user_id) for row in reply.get("conflicts") or [])
    return Outcome(decision_from_json(reply["decision"]), ended, conflicts, again=bool(reply.get("again")))


@functools.lru_cache(maxsize=1024)
def _rules_fragment(rules: Rules | None, total: bool) -> orjson.Fragment:
    """_rules_arg as JSON, made once per rule set (a plan's rules are the same for each of its users' requests);
    false for no rules."""
    return orjson.Fragment(orjson.dumps(_rules_arg(rules, total=total) if rules is not None else False))


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
        end_rooms: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        """`end_rooms`: the Socket.IO rooms a user's stream ends are announced to; given, and on a single server,
        a stop asked to announce publishes `stream_ended` itself, in its own call (stop.lua), on the decisions
        channel (on a cluster the channel's slot is not the user's: the caller publishes)."""
        self._redis: RedisClient = connect(url)
        self._keys = layout_for(url)
        self._end_rooms = end_rooms if not self._keys.cluster else None
        self.announces_stops = self._end_rooms is not None
        self._lease_s = lease_s
        self._decision_ttl_ms = max(1, round(decision_ttl_s * 1000))
        self._clock = clock
        admission = _record_script("admission.lua", CROSS_SLOT_SHEBANG if self._keys.cluster else "")
        self._admit = self._redis.register_script(admission)
        self._renew = self._redis.register_script(_record_script("heartbeat.lua"))
        self._stop = self._redis.register_script(_record_script("stop.lua"))
        self._expire = self._redis.register_script(_record_script("expire.lua"))
        self._read = self._redis.register_script(_record_script("read.lua"))
        self._leases = self._redis.register_script(_script("leases.lua"))
        self._restore = self._redis.register_script(_record_script("restore.lua"))
        self._keep = self._redis.register_script(_script("keep.lua"))
        drain = _script("drain.lua")
        self._drain = self._redis.register_script(CROSS_SLOT_SHEBANG + drain if self._keys.cluster else drain)
        oldest = _script("oldest.lua")
        self._oldest = self._redis.register_script(CROSS_SLOT_SHEBANG + oldest if self._keys.cluster else oldest)
        # On a single server, stops that arrive together (the players told of one batch of decisions stop at once)
        # go in one pipeline, a stop.lua call each; on a cluster each goes on its own, routed by its user's slot.
        self._stops: GroupCommit[ScriptCall, Any] | None = (
            None if self._keys.cluster else GroupCommit(self._stop_together)
        )

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
                request.replace_stream_ids,
                quota.limit,
                "1" if quota.disabled else "0",
                "1" if quota.exists else "0",
                "1" if request.replace_device_stream else "0",
                request.device_name,
                request.kinds,
                1 if request.away else 0,
                device_window_s(quota) or 0,
                _rules_fragment(quota.rules, False),
                _rules_fragment(quota.shadow, True),
                1 if request.replace_others else 0,
                request.accepted_at + SUPERSEDED_AFTER_S,
            ]
        )

    async def decide(self, admissions: Sequence[Admission]) -> list[Outcome]:
        """Decide the batch in order: one admission.lua call per ADMIT_CHUNK requests, all in one pipeline (on a
        cluster, one sequence of calls per node, the nodes at once)."""
        if not admissions:
            return []
        now = self._clock()
        admit_all = self._admit_by_node if isinstance(self._redis, RedisCluster) else self._admit_all
        async with translate_redis_errors():
            try:
                replies = await admit_all(admissions, now)
            except redis_errors.NoScriptError:
                # The server lost its scripts (a restart, SCRIPT FLUSH, a replica promoted): load and run the batch
                # again. A request the first run decided gets that decision back, since the script keeps each one.
                await self._load_admission()
                replies = await admit_all(admissions, now)
        return [_outcome_from(raw, a.request.user_id) for raw, a in zip(replies, admissions, strict=True)]

    async def _load_admission(self) -> None:
        # A cluster client sends SCRIPT LOAD to every node (redis-py's routing of that command).
        await self._redis.script_load(self._admit.script)

    def _settings(self, now: float) -> tuple[str, str, int]:
        return (repr(now), repr(float(self._lease_s)), self._decision_ttl_ms)

    def _call_args(self, chunk: Sequence[Admission]) -> list[Any]:
        """KEYS and ARGV of one admission.lua call: three keys per request, the settings, then the requests."""
        keys: list[str] = []
        for admission in chunk:
            keys += self._keys.admission_keys(admission.request.user_id, admission.request.request_id)
        return [len(keys), *keys]

    async def _admit_all(self, admissions: Sequence[Admission], now: float) -> list[Any]:
        """The replies of admission.lua, one per admission: chunks of ADMIT_CHUNK requests, one EVALSHA each, in
        one pipeline (one round trip, without the SCRIPT EXISTS that redis-py sends before pipelined scripts)."""
        settings = self._settings(now)
        pipe = self._redis.pipeline(transaction=False)
        for start in range(0, len(admissions), ADMIT_CHUNK):
            chunk = admissions[start : start + ADMIT_CHUNK]
            pipe.evalsha(self._admit.sha, *self._call_args(chunk), *settings, *map(self._request_arg, chunk))
        replies: list[Any] = []
        for chunk_replies in await pipe.execute():
            replies += chunk_replies
        return replies

    async def _admit_by_node(self, admissions: Sequence[Admission], now: float) -> list[Any]:
        """Cluster: the batch split by the node of each user's slot, each node's calls in order, the nodes at once."""
        assert isinstance(self._redis, RedisCluster)
        cluster = self._redis
        if cluster._initialize:  # the client learns the slot map on its first command
            await cluster.initialize()
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for index, admission in enumerate(admissions):
            node = cluster.nodes_manager.get_node_from_slot(self._keys.slot(admission.request.user_id))
            by_node.setdefault(node.name, (node, []))[1].append(index)
        replies: list[Any] = [None] * len(admissions)

        async def on_node(node: ClusterNode, indexes: list[int]) -> None:
            for start in range(0, len(indexes), ADMIT_CHUNK):
                chunk = indexes[start : start + ADMIT_CHUNK]
                for index, reply in zip(
                    chunk, await self._admit_on(node, [admissions[i] for i in chunk], now), strict=True
                ):
                    replies[index] = reply

        await asyncio.gather(*(on_node(node, indexes) for node, indexes in by_node.values()))
        return replies

    async def _admit_routed(self, chunk: Sequence[Admission], now: float) -> list[Any]:
        """One admission.lua call for requests of one slot, routed by redis-py (which follows MOVED and ASK).

        While the slot is half moved, a call naming keys on both sides is refused with TRYAGAIN (every admission
        names a new decision key, so each one is, until the last key has moved); a failover leaves the slot
        unserved for a moment. Both end within seconds: the call is tried again until SLOT_SETTLE_S has passed.
        """
        cluster = self._redis
        assert isinstance(cluster, RedisCluster)
        args = [*self._call_args(chunk), *self._settings(now), *map(self._request_arg, chunk)]
        deadline = time.monotonic() + SLOT_SETTLE_S
        while True:
            try:
                replies: list[Any] = await cluster.execute_command("EVALSHA", self._admit.sha, *args)
                return replies
            except redis_errors.RedisError as exc:
                if not moved_or_down(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(SLOT_SETTLE_PAUSE_S)

    async def _admit_on(self, node: ClusterNode, chunk: Sequence[Admission], now: float) -> list[Any]:
        """One admission.lua call on `node`; if its slots moved, the requests again one slot a call, routed."""
        cluster = self._redis
        assert isinstance(cluster, RedisCluster)
        args = [0, *self._settings(now), *map(self._request_arg, chunk), *self._call_args(chunk)[1:]]
        try:
            replies: list[Any] = await cluster.execute_command("EVALSHA", self._admit.sha, *args, target_nodes=node)
            return replies
        except redis_errors.RedisError as exc:
            if not moved_or_down(exc):
                raise
            log.info("admission call on %s redirected (%s): deciding its requests one slot a call", node.name, exc)
        replies = []
        for slot_chunk in _by_slot(chunk, self._keys):
            replies += await self._admit_routed(slot_chunk, now)
        order = {id(a): i for i, a in enumerate(chunk)}
        regrouped = [a for slot_chunk in _by_slot(chunk, self._keys) for a in slot_chunk]
        result: list[Any] = [None] * len(chunk)
        for admission, reply in zip(regrouped, replies, strict=True):
            result[order[id(admission)]] = reply
        return result

    async def decision(self, request_id: str) -> Decision | None:
        """The kept decision of a request, if any."""
        key = self._keys.find_decision_key(request_id)
        if key is None:
            return None
        async with translate_redis_errors():
            raw = await self._redis.get(key)
        return decision_from_json(orjson.loads(raw)) if raw else None

    async def keep(self, decisions: Sequence[Decision]) -> None:
        """keep.lua for each decision (SET NX, kept decision_ttl_s, and logged): a request decided already keeps its
        decision. One call each: each user's keys lie in their own slot on a cluster (these are rare)."""
        async with translate_redis_errors():
            for d in decisions:
                await self._keep(
                    keys=[self._keys.decision_key(d.request_id, d.user_id), self._keys.events_key(d.user_id)],
                    args=[orjson.dumps(decision_to_json(d)).decode(), self._decision_ttl_ms],
                )

    async def _read_streams(self, user_id: str, *stream_id: str) -> list[Stream]:
        """read.lua: the user's streams (or the one of that id), their leases run out or not."""
        async with translate_redis_errors():
            raw = await self._read(
                keys=[self._keys.streams_key(user_id), self._keys.leases_key(user_id)], args=[user_id, *stream_id]
            )
        pairs = zip(raw[::2], raw[1::2], strict=True)
        return [_stream_from(str(sid), user_id, orjson.loads(value)) for sid, value in pairs]

    async def streams(self, user_id: str) -> list[Stream]:
        """The user's streams whose lease has not run out, oldest first."""
        found = await self._read_streams(user_id)
        now = self._clock()
        return by_age(s for s in found if s.live(now))

    async def stream(self, stream_id: str) -> Stream | None:
        """One active stream, found through the user its id names."""
        user_id = stream_owner(stream_id)
        if user_id is None:
            return None
        found = await self._read_streams(user_id, stream_id)
        now = self._clock()
        return next((s for s in found if s.live(now)), None)

    async def heartbeat(self, stream_id: str, user_id: str | None = None) -> Stream | None:
        """Push the lease of an active stream to now + lease_s (only the user's own, when user_id is given)."""
        owner = stream_owner(stream_id)
        if owner is None or (user_id is not None and owner != user_id):
            return None
        async with translate_redis_errors():
            raw = await self._renew(
                keys=[self._keys.streams_key(owner), self._keys.leases_key(owner)],
                args=[stream_id, repr(self._clock()), repr(self._lease_s), owner],
            )
        return _stream_from(stream_id, owner, orjson.loads(raw)) if raw else None

    async def stop(
        self,
        stream_ids: Sequence[str] | None,
        user_id: str,
        video_id: str | None = None,
        *,
        reason: Reason | None = None,
        announce: bool = False,
        unless_renewed_after: float | None = None,
    ) -> list[Stream]:
        """End the user's chosen streams (not one whose lease runs past `unless_renewed_after`), logging their ends
        with `reason` (None: not logged); return those that were still active, oldest first. `announce` (with a
        reason, when announces_stops): publish their `stream_ended` in the same call."""
        if stream_ids is not None and not stream_ids:
            return []
        mode = "all" if stream_ids is None else "ids"
        to = ""
        if announce and reason is not None and self._end_rooms is not None:
            to = orjson.dumps({"c": DECISIONS_CHANNEL, "r": list(self._end_rooms(user_id))}).decode()
        args: list[Any] = [
            repr(self._clock()),
            video_id or "",
            mode,
            user_id,
            reason.value if reason else "",
            to,
            STOP_REPLY_TTL_MS,
            repr(unless_renewed_after) if unless_renewed_after is not None else "",
            *(stream_ids or ()),
        ]
        keys = [
            self._keys.streams_key(user_id),
            self._keys.leases_key(user_id),
            self._keys.events_key(user_id),
            self._keys.stop_reply_key(user_id, new_id()),  # one per call: its retries find the first run's reply
        ]
        if self._stops is not None:
            raw = await self._stops((keys, args))
        else:
            async with translate_redis_errors():
                raw = await self._stop(keys=keys, args=args)
        rows = orjson.loads(raw) or []
        stopped = [_stream_from(row[0], user_id, row[1:]) for row in rows]
        return by_age(stopped)

    async def _stop_together(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """stop.lua's replies to stops that arrived together (a call run again, its script loaded after NOSCRIPT or
        its reply lost, gets its first run's reply: stop.lua keeps it)."""
        async with translate_redis_errors():
            return await call_together(self._redis, self._stop, calls)

    async def stop_video(self, video_id: str, *, reason: Reason | None = None) -> list[Stream]:
        """End every user's streams of the video: the users are found through the lease index (every stream id
        names its user; on a cluster, every bucket's), SWEEP_CHUNK ids a read; each user's streams of the video end
        in one stop.lua call."""
        owners: set[str] = set()
        async with translate_redis_errors():
            for key in self._keys.lease_keys():
                for start in range(0, STOP_VIDEO_MAX_STREAMS, SWEEP_CHUNK):
                    ids = await self._redis.zrange(key, start, start + SWEEP_CHUNK - 1)
                    owners.update(owner for sid in ids if (owner := stream_owner(str(sid))) is not None)
                    if len(ids) < SWEEP_CHUNK:
                        break
        stopped: list[Stream] = []
        for owner in sorted(owners):
            stopped += await self.stop(None, owner, video_id, reason=reason)
        return stopped

    async def restore(self, streams: Sequence[Stream]) -> int:
        """restore.lua for each stream (one call each: each user's keys lie in their own slot on a cluster)."""
        written = 0
        now = repr(self._clock())
        async with translate_redis_errors():
            for s in streams:
                fields = [
                    s.video_id,
                    s.device_id,
                    repr(s.started_at),
                    repr(s.expires_at),
                    s.device_name,
                    list(s.kinds),
                    1 if s.away else 0,
                ]
                written += int(
                    await self._restore(
                        keys=[self._keys.streams_key(s.user_id), self._keys.leases_key(s.user_id)],
                        args=[s.id, now, orjson.dumps(fields).decode(), s.user_id],
                    )
                )
        return written

    async def sweep(self) -> list[EndedStream]:
        """End every stream whose lease ran out; several sweepers at once end (and report) each one once.

        Each lease index is read for due members (on a cluster: one index per slot, every node's read at once),
        and each due stream is ended by expire.lua in its user's slot. Decisions and idempotency keys need no
        sweeping: Redis drops them after decision_ttl_s.
        """
        ended: list[EndedStream] = []
        now = self._clock()
        async with translate_redis_errors():
            for _ in range(SWEEP_MAX_CHUNKS):
                candidates = await self._due(now)
                if not candidates:
                    break
                ended += await self._expire_all(candidates, now)
                if len(candidates) < SWEEP_CHUNK:
                    break
        return ended

    async def _due(self, now: float) -> list[tuple[str, str]]:
        """Up to SWEEP_CHUNK (lease index, stream id) pairs whose lease ran out."""
        if isinstance(self._redis, RedisCluster):
            found: list[tuple[str, str]] = []
            for keys, reply in await self._on_each_node("due", repr(now), SWEEP_CHUNK):
                found += ((keys[int(i) - 1], str(member)) for i, member in zip(reply[::2], reply[1::2], strict=True))
            return found[:SWEEP_CHUNK]
        due = await self._redis.zrangebyscore(LEASES_KEY, "-inf", repr(now), start=0, num=SWEEP_CHUNK)
        return [(LEASES_KEY, str(member)) for member in due]

    async def _on_each_node(self, *args: Any) -> list[tuple[list[str], Any]]:
        """Cluster: leases.lua on every primary over the lease indexes of the slots it serves, all at once (an index
        whose slot is moving is passed over this time)."""
        return await self._on_each_node_of(self._leases, self._keys.lease_keys(), *args)

    async def _on_each_node_of(
        self, script: AsyncScript, bucket_keys: Sequence[str], *args: Any
    ) -> list[tuple[list[str], Any]]:
        """Cluster: `script` on every primary, with `args` then the keys of `bucket_keys` (one per bucket, in bucket
        order) of the slots it serves, all at once; each node's keys and reply."""
        cluster = self._redis
        assert isinstance(cluster, RedisCluster)
        if cluster._initialize:  # the client learns the slot map on its first command
            await cluster.initialize()
        by_node: dict[str, tuple[ClusterNode, list[str]]] = {}
        for bucket, key in enumerate(bucket_keys):
            node = cluster.nodes_manager.get_node_from_slot(bucket * SLOTS_PER_BUCKET)
            by_node.setdefault(node.name, (node, []))[1].append(key)

        async def on_node(node: ClusterNode, keys: list[str]) -> tuple[list[str], Any]:
            command = ("EVALSHA", script.sha, 0, *args, *keys)
            try:
                return keys, await cluster.execute_command(*command, target_nodes=node)
            except redis_errors.NoScriptError:
                await cluster.execute_command("SCRIPT", "LOAD", script.script, target_nodes=node)
                return keys, await cluster.execute_command(*command, target_nodes=node)

        return list(await asyncio.gather(*(on_node(node, keys) for node, keys in by_node.values())))

    async def _expire_all(self, candidates: Sequence[tuple[str, str]], now: float) -> list[EndedStream]:
        """expire.lua on each candidate (in one pipeline on one server, routed one call each on a cluster); the
        streams it ended."""
        owners = [stream_owner(stream_id) for _, stream_id in candidates]
        if isinstance(self._redis, RedisCluster):
            replies = [
                await self._expire_one(leases_key, stream_id, owner, now, self._redis)
                for (leases_key, stream_id), owner in zip(candidates, owners, strict=True)
            ]
        else:
            pipe = self._redis.pipeline(transaction=False)
            for (leases_key, stream_id), owner in zip(candidates, owners, strict=True):
                # redis-py runs a Script in a pipeline too, loading it when missing.
                await self._expire_one(leases_key, stream_id, owner, now, pipe)
            replies = await pipe.execute()
        ended = []
        for (_, stream_id), owner, raw in zip(candidates, owners, replies, strict=True):
            if owner is not None and isinstance(raw, str):
                ended.append(EndedStream(_stream_from(stream_id, owner, orjson.loads(raw)), Reason.expired))
        return ended

    async def _expire_one(
        self, leases_key: str, stream_id: str, owner: str | None, now: float, client: RedisClient
    ) -> Any:
        if owner is None:
            return await client.zrem(leases_key, stream_id)
        return await self._expire(
            keys=[self._keys.streams_key(owner), leases_key, self._keys.events_key(owner)],
            args=[stream_id, repr(now), owner],
            client=client,
        )

    async def read_changes(self, consumer: str, count: int, claim_idle_s: float) -> list[LoggedChange]:
        """Entries of the change logs for `consumer` of the group `audit` (drain.lua): first those a reader (this
        one too) left unacknowledged longer than claim_idle_s, then new ones; at most min(count, DRAIN_CHUNK), on a
        cluster that many per primary (the primaries at once). Each stays pending until ack_changes."""
        args = (EVENTS_GROUP, consumer, min(count, DRAIN_CHUNK), max(1, round(claim_idle_s * 1000)))
        async with translate_redis_errors():
            if isinstance(self._redis, RedisCluster):
                replies = await self._on_each_node_of(self._drain, self._keys.event_keys(), *args)
            else:
                keys = self._keys.event_keys()
                replies = [(keys, await self._drain(keys=[], args=[*args, *keys]))]  # the logs in ARGV
        changes: list[LoggedChange] = []
        for keys, reply in replies:
            for position, entry, fields in reply:
                changes.append(_change_from(f"{keys[int(position) - 1]} {entry}", fields))
        return changes

    async def ack_changes(self, changes: Sequence[LoggedChange]) -> None:
        """Acknowledge and delete the entries of changes the audit trail recorded (XACK then XDEL, per log)."""
        by_key: dict[str, list[str]] = {}
        for change in changes:
            key, _, entry = change.entry.rpartition(" ")
            by_key.setdefault(key, []).append(entry)
        if not by_key:
            return
        async with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            for key, entries in by_key.items():
                pipe.xack(key, EVENTS_GROUP, *entries)
                pipe.xdel(key, *entries)
            await pipe.execute()

    async def trim_changes(self, keep: int) -> int:
        """Bound each change log to its newest `keep` entries (XTRIM MAXLEN, exact), read or not; how many older
        ones were removed. An entry removed while read but not acknowledged is not delivered again (drain.lua)."""
        async with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            for key in self._keys.event_keys():
                pipe.xtrim(key, maxlen=keep, approximate=False)
            return sum(int(removed) for removed in await pipe.execute())

    async def unrecorded_since(self) -> float | None:
        """When the oldest entry still in a change log was added, by Redis's clock (the millisecond part of its id);
        None when the logs are empty. Entries leave a log once recorded (ack_changes) or trimmed, so this is the
        oldest change not yet in the audit trail, whether a reader holds it or none has read it yet."""
        async with translate_redis_errors():
            if isinstance(self._redis, RedisCluster):  # oldest.lua on each primary over its buckets' logs
                replies = [reply for _, reply in await self._on_each_node_of(self._oldest, self._keys.event_keys())]
            else:
                replies = [await self._oldest(keys=[], args=self._keys.event_keys())]  # the log in ARGV
        found = [int(ms) for ms in replies if ms is not None]
        return min(found) / 1000 if found else None

    async def claim_key(self, user_id: str, key: str, request_id: str, fingerprint: str) -> KeyClaim:
        """Bind the key to request_id unless it is bound already (SET NX GET: one atomic command)."""
        # `v`: the fingerprint (the video alone in a key bound before a key covered the whole request).
        value = orjson.dumps({"r": request_id, "v": fingerprint}).decode()
        async with translate_redis_errors():
            previous = await self._redis.set(
                idempotency_key(user_id, key), value, nx=True, get=True, px=self._decision_ttl_ms
            )
        if not isinstance(previous, str | bytes):
            return KeyClaim(request_id, fingerprint, created=True)
        bound = orjson.loads(previous)
        return KeyClaim(bound["r"], bound["v"], created=False)

    async def devices(self, user_id: str) -> list[Device]:
        """The user's registered devices, least recently seen first."""
        async with translate_redis_errors():
            raw = await self._redis.hgetall(self._keys.devices_key(user_id))
        found = [Device(str(device_id), user_id, parse_time(seen)) for device_id, seen in raw.items()]
        return sorted(found, key=lambda d: (d.last_seen_at, d.id))

    async def forget_device(self, user_id: str, device_id: str) -> bool:
        """Remove a registered device (its streams play on); False if it was not registered."""
        async with translate_redis_errors():
            return bool(await self._redis.hdel(self._keys.devices_key(user_id), device_id))

    async def count_active(self) -> int:
        """Streams whose lease has not run out, from the lease index."""
        now = repr(self._clock())
        async with translate_redis_errors():
            if isinstance(self._redis, RedisCluster):
                return sum(int(count) for _, count in await self._on_each_node("count", now, 0))
            return int(await self._redis.zcount(LEASES_KEY, f"({now}", "+inf"))

    async def ping(self) -> None:
        """Raise Unavailable unless Redis answers."""
        async with translate_redis_errors():
            await self._redis.ping()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
