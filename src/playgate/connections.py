"""The Redis plumbing that the ledger and the bus share: the client, its key names, errors, the decision codec.

Every key lives under PREFIX; a user's keys carry the `{user id}` hash tag, so that they share a hash slot. A URL
`redis+cluster://host:port[,host:port...]` names a Redis Cluster: the client is redis-py's RedisCluster, and the
KeyLayout puts the keys that several users share (the lease index, the decisions) in each user's slot. A URL
`redis+sentinel://host:port[,host:port...]/db/service` names the Sentinels that watch a primary and its replicas:
the client asks them for the primary, and again after a failover.
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from playgate.domain import Decision, Status, id_owner, parse_reason
from playgate.errors import ConfigError, Unavailable
from playgate.values import frozen

PREFIX = "playgate:"
LEASES_KEY = f"{PREFIX}leases"
# The ledger's change log: a stream the Lua scripts append each decision and stream end to, in the call that makes
# the change; its name is the lease index's with `events` for `leases` (so, on a cluster, one per bucket, in the
# bucket's slot). The audit trail's drainers read it as the consumer group EVENTS_GROUP.
EVENTS_KEY = f"{PREFIX}events"
EVENTS_GROUP = "audit"
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
# A pooled connection idle this long is PINGed before use, so that one left dead by a Redis restart is replaced
# instead of failing the request that draws it.
HEALTH_CHECK_INTERVAL_S = 5
# A command that meets a lost connection (a Redis restart, a dead pooled connection) is tried again on a new one,
# this many times with a short jittered backoff: requests succeed as soon as Redis answers. Timeouts are not
# retried, so a frozen Redis answers 503 after one socket timeout, not after several.
RETRIES = 3
# How long stop.lua keeps a call's reply: past the client's retries of a call whose reply was lost (RETRIES, each
# within the timeouts above), which then get the first run's reply instead of "nothing was playing".
STOP_REPLY_TTL_MS = 30_000
RETRY_BACKOFF_BASE_S = 0.02
RETRY_BACKOFF_CAP_S = 0.25
REQUESTS_KEY = f"{PREFIX}requests"
DEAD_LETTER_KEY = f"{PREFIX}requests:dead"
# On a cluster the request queue is this many streams by default (PLAYGATE_QUEUE_SHARDS), each with its own
# consumer group, so that no single key carries all traffic.
QUEUE_SHARDS = 8
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


def stop_reply_key(user_id: str, call_id: str) -> str:
    """Where stop.lua keeps the reply of one stop call a while (STOP_REPLY_TTL_MS)."""
    return f"{PREFIX}{{{user_id}}}:stopped:{call_id}"


def decision_key(request_id: str) -> str:
    """Where the decision of a request is kept."""
    return f"{PREFIX}decision:{request_id}"


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEME = "redis+sentinel"
# What a rediss+cluster:// URL's query may say of TLS, as a rediss:// URL's does to redis-py: the CA that signed the
# nodes' certificates, this client's own certificate and key, and whether the nodes' certificates are checked.
CLUSTER_TLS_ARGS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
REDIS_SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME, *CLUSTER_SCHEMES)

# The client of either deployment: one server (with replicas), or a Redis Cluster.
RedisClient = Redis | RedisCluster


def check_redis_url(url: str) -> None:
    """ConfigError naming PLAYGATE_REDIS_URL unless `url` is a redis://, rediss://, unix://, redis+cluster:// or
    redis+sentinel:// URL."""
    scheme = url.partition("://")[0].lower()
    if scheme not in REDIS_SCHEMES or "://" not in url:
        raise ConfigError(
            "PLAYGATE_REDIS_URL: not a Redis URL (use redis://host:port/db, redis+cluster://host:port,host:port or "
            f"redis+sentinel://host:port,host:port/db/service), got scheme {scheme!r}"
        )
    if is_cluster_url(url):
        cluster_nodes(url)
        cluster_tls(url)
    elif is_sentinel_url(url):
        sentinel_service(url)
    elif scheme != "unix":
        try:
            urlsplit(url).port  # noqa: B018  # parsing it is the check
        except ValueError:
            raise ConfigError(f"PLAYGATE_REDIS_URL: the port is not a number: {url.partition('@')[2] or url}") from None


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
    """A connection pool for `url` with pool_options() (and `options`), for clients built elsewhere (limits): of the
    primary the Sentinels name, for a redis+sentinel:// URL."""
    if is_sentinel_url(url):
        named = sentinel_service(url)
        sentinel = named.sentinel(**pool_options(), **options)
        return SentinelConnectionPool(named.service, sentinel, **sentinel.connection_kwargs)  # type: ignore[no-untyped-call]
    return ConnectionPool.from_url(url, **pool_options(), **options)


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (redis+cluster:// or rediss+cluster://)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def is_sentinel_url(url: str) -> bool:
    """Whether `url` names the Sentinels of a primary (redis+sentinel://)."""
    return url.partition("://")[0].lower() == SENTINEL_SCHEME


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The host:port pairs of a redis+cluster:// (or redis+sentinel://) URL (the client needs one live node; naming
    several survives one being down); ConfigError naming PLAYGATE_REDIS_URL when a pair is malformed."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    kind = "sentinel" if is_sentinel_url(url) else "cluster node"
    nodes = []
    for item in filter(None, netloc.split(",")):
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ConfigError(f"PLAYGATE_REDIS_URL: {kind} {item!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ConfigError(f"PLAYGATE_REDIS_URL: a {url.partition('://')[0]}:// URL names at least one host:port")
    return nodes


@frozen
class SentinelService:
    """What a redis+sentinel://[user:password@]host:port[,host:port...]/db/service URL names (python-socketio's
    form): the Sentinels, the service (the primary's name in their `sentinel monitor`), the database and the
    primary's credentials (the Sentinels themselves are asked without)."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None

    def sentinel(self, **options: Any) -> Sentinel:
        """A redis-py Sentinel over these Sentinels; `options` for the primary's connections."""
        timeouts = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S}
        return Sentinel(
            self.sentinels,
            sentinel_kwargs=timeouts,
            db=self.db,
            username=self.username,
            password=self.password,
            **options,
        )


def sentinel_service(url: str) -> SentinelService:
    """The parts of a redis+sentinel:// URL; ConfigError naming PLAYGATE_REDIS_URL when one is missing or bad."""
    parts = urlsplit(url)
    path = [segment for segment in parts.path.split("/") if segment]
    if len(path) != 2 or not path[0].isdigit() or parts.query:
        raise ConfigError(
            "PLAYGATE_REDIS_URL: a redis+sentinel:// URL reads redis+sentinel://host:port[,host:port...]/db/service "
            "(the service: the name the Sentinels monitor the primary by), with no query"
        )
    return SentinelService(
        sentinels=cluster_nodes(url),
        service=path[1],
        db=int(path[0]),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def cluster_tls(url: str) -> dict[str, Any]:
    """The TLS options of a cluster URL's clients: none for redis+cluster://; for rediss+cluster://, TLS and what its
    query says (CLUSTER_TLS_ARGS: `?ssl_ca_certs=/path/to/ca.pem` for nodes whose certificates a private CA
    signed). ConfigError naming PLAYGATE_REDIS_URL for any other query argument."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    tls = parts.scheme.lower().startswith("rediss")
    unknown = sorted(set(query) - set(CLUSTER_TLS_ARGS)) if tls else sorted(query)
    if unknown:
        allowed = f"only {', '.join(CLUSTER_TLS_ARGS)}, with rediss+cluster://" if tls else "none"
        raise ConfigError(f"PLAYGATE_REDIS_URL: a cluster URL takes {allowed} as arguments; got {', '.join(unknown)}")
    return {"ssl": True, **query} if tls else {}


def _client_options(client_name: str | None, decode: bool = True) -> dict[str, Any]:
    return {
        "client_name": client_name,
        "decode_responses": decode,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
    }


def connect(url: str, *, client_name: str | None = None, decode: bool = True) -> RedisClient:
    """A redis-py asyncio client for `url` with bounded timeouts (a dead server answers 503, it does not hang):
    RedisCluster for a redis+cluster:// URL, else Redis.

    `client_name` names its connections in CLIENT LIST (the queue names them after the worker's consumer);
    `decode` False leaves replies as bytes (python-socketio's manager expects them so).
    """
    if is_cluster_url(url):
        return connect_cluster(url, client_name=client_name, decode=decode)
    client: Redis = Redis.from_pool(connection_pool(url, client_name=client_name, decode_responses=decode))
    return client


FORGET_CHUNK = 1000


async def _unlink(client: RedisClient, keys: list[str]) -> int:
    """UNLINK the keys, one a command in a pipeline (a cluster node refuses keys of several slots in one)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(int(n) for n in await pipe.execute())


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
                    deleted += await _unlink(client, chunk)
                    chunk = []
            if chunk:
                deleted += await _unlink(client, chunk)
    finally:
        await client.aclose()
    return deleted


def connect_cluster(url: str, *, client_name: str | None = None, decode: bool = True) -> RedisCluster:
    """redis-py's RedisCluster over the nodes a redis+cluster:// URL names (credentials and TLS options from the
    URL)."""
    parts = urlsplit(url)
    options = _client_options(client_name, decode)
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)], **cluster_tls(url), **options
    )


async def primaries(url: str) -> list[Redis]:
    """A plain client of each primary of the cluster (or of the one server) that `url` names, with connect()'s
    timeouts and the URL's credentials: for what is asked of every primary (INFO, CONFIG GET, FLUSHALL). The
    caller closes them."""
    if is_sentinel_url(url):
        return [Redis.from_pool(connection_pool(url))]  # the primary the Sentinels name now
    if not is_cluster_url(url):
        return [Redis.from_url(url, **_client_options(None))]
    cluster = connect_cluster(url)
    try:
        await cluster.initialize()
        parts, tls = urlsplit(url), cluster_tls(url)
        return [
            Redis(
                host=node.host,
                port=int(node.port),
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                **tls,
                **_client_options(None),
            )
            for node in cluster.get_primaries()
        ]
    finally:
        await cluster.aclose()


# What PlayGate asks of a Redis's configuration, beside persistence: `hash-max-listpack-value` at least this, so
# that a user's streams hash (src/playgate/ledger/record.lua) stays a listpack when its records carry device ids as
# the server issues them (61 characters; a record is then about 100 bytes, over Redis's default of 64). A
# hashtable costs each stream about 130 bytes more (README, Sizing). deploy/ and the benchmarks' redis-servers
# set it; `playgate doctor` warns when it is lower.
HASH_LISTPACK_VALUE = 128
REDIS_SERVER_ARGS = ("--hash-max-listpack-value", str(HASH_LISTPACK_VALUE))


# A cluster spreads users over BUCKETS hash slots, 16 slots apart (slot 0, 16, 32, ...), so that contiguous slot
# ranges (as `redis-cli --cluster` assigns them) get even shares; a bucket holds its users' keys and their lease
# index. Few enough that a sweep reads every index in a few milliseconds; enough to spread over ~100 shards.
BUCKETS = 1024
SLOTS_PER_BUCKET = REDIS_CLUSTER_HASH_SLOTS // BUCKETS


@functools.cache
def bucket_tags() -> tuple[str, ...]:
    """For each bucket, a short hash tag that lands in its slot (bucket * SLOTS_PER_BUCKET)."""
    tags: dict[int, str] = {}
    n = 0
    while len(tags) < BUCKETS:
        tag = f"b{n}"
        slot = key_slot(tag.encode())
        if slot % SLOTS_PER_BUCKET == 0:
            tags.setdefault(slot // SLOTS_PER_BUCKET, tag)
        n += 1
    return tuple(tags[bucket] for bucket in range(BUCKETS))


@functools.cache
def _bucket_lease_keys() -> tuple[str, ...]:
    return tuple(f"{PREFIX}{{{tag}}}:leases" for tag in bucket_tags())


@functools.cache
def _bucket_event_keys() -> tuple[str, ...]:
    return tuple(f"{PREFIX}{{{tag}}}:events" for tag in bucket_tags())


def user_bucket(user_id: str) -> int:
    """The bucket of a user on a cluster: the hash slot of its id, 16 slots to a bucket."""
    return key_slot(user_id.encode()) // SLOTS_PER_BUCKET


@frozen
class QueueShard:
    """One stream of the request queue; its pending markers and dead letters share its slot (enqueue.lua and
    ack.lua each run in one slot)."""

    index: int
    requests_key: str
    dead_letter_key: str
    marker_prefix: str

    def pending_key(self, request_id: str) -> str:
        """The marker of a request of this shard still owed a decision."""
        return f"{self.marker_prefix}{request_id}"

    @property
    def owner_key(self) -> str:
        """The worker that alone reads this shard for now (its consumer name, under a lease): so that one user's
        requests are decided in the order they arrived."""
        return f"{self.requests_key}:owner"

    @property
    def workers_key(self) -> str:
        """The live workers (sorted set, consumer -> last seen, Redis's ms); kept beside the first shard."""
        return f"{self.requests_key}:workers"


@frozen
class KeyLayout:
    """Where the keys an admission touches live. One server: `playgate:{<user id>}:streams`, one lease index
    (`playgate:leases`), decisions under their request id. A cluster: every key an admission touches in the user's
    bucket (one hash slot, hash tag `{b…}`): `playgate:{b…}:<user id>:streams` (and `:devices`), the bucket's
    lease index `playgate:{b…}:leases`, and `playgate:{b…}:decision:<request id>` (a request id names its user:
    domain.owned_id), so that one user's admission is one atomic call on one shard, with no global key.
    """

    cluster: bool

    def slot(self, user_id: str) -> int:
        """The hash slot of the user's keys on a cluster."""
        return user_bucket(user_id) * SLOTS_PER_BUCKET

    def _tag(self, user_id: str) -> str:
        return f"{PREFIX}{{{bucket_tags()[user_bucket(user_id)]}}}"

    def streams_key(self, user_id: str) -> str:
        """The hash of the user's streams."""
        return f"{self._tag(user_id)}:{user_id}:streams" if self.cluster else streams_key(user_id)

    def leases_key(self, user_id: str) -> str:
        """The lease index that holds the user's streams."""
        return f"{self._tag(user_id)}:leases" if self.cluster else LEASES_KEY

    def events_key(self, user_id: str) -> str:
        """The change log the scripts changing the user's streams append to (beside the user's lease index)."""
        return f"{self._tag(user_id)}:events" if self.cluster else EVENTS_KEY

    def event_keys(self) -> list[str]:
        """Every change log (what the audit trail's drainers read)."""
        return list(_bucket_event_keys()) if self.cluster else [EVENTS_KEY]

    def stop_reply_key(self, user_id: str, call_id: str) -> str:
        """Where stop.lua keeps one call's reply a while, in the user's slot."""
        return f"{self._tag(user_id)}:{user_id}:stopped:{call_id}" if self.cluster else stop_reply_key(user_id, call_id)

    def devices_key(self, user_id: str) -> str:
        """The hash of the user's registered devices."""
        return f"{self._tag(user_id)}:{user_id}:devices" if self.cluster else devices_key(user_id)

    def admission_keys(self, user_id: str, request_id: str) -> tuple[str, str, str, str]:
        """The lease index, streams, decision and devices keys of one admission (admission.lua's four a request)."""
        if not self.cluster:
            return LEASES_KEY, streams_key(user_id), decision_key(request_id), devices_key(user_id)
        tag = self._tag(user_id)
        return f"{tag}:leases", f"{tag}:{user_id}:streams", f"{tag}:decision:{request_id}", f"{tag}:{user_id}:devices"

    def lease_keys(self) -> list[str]:
        """Every lease index (what the sweeper and the active count read)."""
        return list(_bucket_lease_keys()) if self.cluster else [LEASES_KEY]

    def decision_key(self, request_id: str, user_id: str) -> str:
        """Where the decision of a request of `user_id` is kept."""
        return f"{self._tag(user_id)}:decision:{request_id}" if self.cluster else decision_key(request_id)

    def queue_shards(self, count: int) -> list[QueueShard]:
        """The request queue's streams: one on a single server (its key names unchanged); `count` on a cluster, shard
        i in the first slot of its range of buckets (so the shards spread over the primaries as the users do)."""
        if not self.cluster:
            return [QueueShard(0, REQUESTS_KEY, DEAD_LETTER_KEY, f"{PREFIX}pending:")]
        tags = bucket_tags()
        count = max(1, min(count, BUCKETS))
        shards = []
        for index in range(count):
            tag = f"{PREFIX}{{{tags[index * BUCKETS // count]}}}"
            shards.append(QueueShard(index, f"{tag}:requests", f"{tag}:requests:dead", f"{tag}:pending:"))
        return shards

    def queue_shard_of_user(self, user_id: str, count: int) -> int:
        """The queue shard of a user's requests: its range of buckets (so one user's requests keep their order on
        one stream)."""
        count = max(1, min(count, BUCKETS))
        return user_bucket(user_id) * count // BUCKETS if self.cluster and count > 1 else 0

    def find_decision_key(self, request_id: str) -> str | None:
        """Where the decision of a request is kept, from its id alone; None when its id names no user (cluster)."""
        if not self.cluster:
            return decision_key(request_id)
        user_id = id_owner(request_id)
        return None if user_id is None else self.decision_key(request_id, user_id)


# On a cluster decisions fan out over sharded pub/sub (SPUBLISH, Redis 7): workers publish on the first of these
# channels, and the API processes listen to it (bus.redis.RedisFanout says why); workers of the version before took
# them all in turn, their hash tags spread over the buckets (so over the shards).
DECISION_CHANNELS = 8


def decision_channels() -> list[str]:
    """The sharded channels of decisions on a cluster; the first carries the socket messages."""
    tags = bucket_tags()
    return [f"{DECISIONS_CHANNEL}:{{{tags[i * BUCKETS // DECISION_CHANNELS]}}}" for i in range(DECISION_CHANNELS)]


async def ready(client: RedisClient) -> None:
    """A cluster client learns the slot map (its first command would); pub/sub needs it beforehand."""
    if isinstance(client, RedisCluster) and client._initialize:
        await client.initialize()


def layout_for(url: str) -> KeyLayout:
    """The key layout of the deployment a URL names."""
    return KeyLayout(cluster=is_cluster_url(url))


# Replies of a server that cannot serve now (loading, a replica, a cluster mid-failover or mid-migration): the
# caller may try again later; nothing was done.
NOT_NOW = ("LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "BUSY ", "CLUSTERDOWN", "MOVED", "ASK ", "UNBLOCKED")
# The same as redis-py raises them: it parses the replies above into these classes, and their text loses the
# prefix ("CLUSTERDOWN The cluster is down" is ClusterDownError("The cluster is down")); a cluster client that
# ran out of redirections (ClusterError "TTL exhausted") or finds a slot unserved mid-failover says so too. A
# script still missing after redis-py loaded it again is one too: a replica just promoted has none of the scripts
# (SCRIPT LOAD is not replicated), and the client loaded it on the nodes it knew; its next call loads it there.
REDIS_CONNECTION_FILE = os.path.join("redis", "asyncio", "connection.py")
NOT_NOW_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.ClusterError,
    redis_errors.AskError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    redis_errors.SlotNotCoveredError,
    redis_errors.NoScriptError,
)


@asynccontextmanager
async def translate_redis_errors() -> AsyncIterator[None]:
    """Turn a lost, loading or refusing Redis into Unavailable (503), once, here."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise Unavailable(f"Redis does not answer: {type(exc).__name__}: {exc}") from exc
    except NOT_NOW_ERRORS as exc:
        raise Unavailable(f"Redis cannot serve now: {type(exc).__name__}: {exc}") from exc
    except (AttributeError, RuntimeError) as exc:
        # redis-py 8.1's cluster client, during a failover, may close a node's connection while a command is being
        # written on it (the writer is None, or uvloop's transport is closed): a lost connection, not our bug.
        if not _raised_in_redis_connection(exc):
            raise
        raise Unavailable(f"Redis connection closed under a command: {type(exc).__name__}: {exc}") from exc
    except redis_errors.ResponseError as exc:
        message = str(exc)
        if message.startswith(NOT_NOW):
            raise Unavailable(f"Redis cannot serve now: {message}") from exc
        raise


# One call of a Lua script: its KEYS and ARGV.
ScriptCall = tuple[list[str], list[Any]]


async def call_together(redis: RedisClient, script: AsyncScript, calls: Sequence[ScriptCall]) -> list[Any]:
    """`script`'s replies to calls that arrived together (GroupCommit), in order: a call alone as it is, else one
    pipeline of EVALSHAs (each call atomic, in arrival order; without redis-py's SCRIPT EXISTS first). A script the
    server lost (a restart) is loaded and the pipeline sent again, so only for scripts that a second run of the same
    call leaves as the first did. On a single server: a cluster routes each call by its own slot."""
    if len(calls) == 1:
        keys, args = calls[0]
        return [await script(keys=keys, args=args)]
    try:
        return await _pipelined(redis, script, calls)
    except redis_errors.NoScriptError:
        await redis.script_load(script.script)
        return await _pipelined(redis, script, calls)


async def _pipelined(redis: RedisClient, script: AsyncScript, calls: Sequence[ScriptCall]) -> list[Any]:
    pipe = redis.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return list(await pipe.execute())


def _raised_in_redis_connection(exc: BaseException) -> bool:
    """Whether the innermost frames of `exc` are redis-py's connection code writing to its transport."""
    frames = traceback.extract_tb(exc.__traceback__)
    return any(frame.filename.endswith(REDIS_CONNECTION_FILE) for frame in frames[-4:])


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
    if d.started_at is not None:
        body["st"] = repr(d.started_at)
    if d.away:
        body["aw"] = True
    return body


def decision_from_json(d: dict[str, Any]) -> Decision:
    """A Decision from the JSON object admission.lua keeps (one kept before decisions named their stream's start
    and away flag, `st` and `aw`, reads as started at no known instant, at home)."""
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
        started_at=parse_time(d["st"]) if d.get("st") is not None else None,
        away=bool(d.get("aw", False)),
    )
