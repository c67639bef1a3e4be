"""The catalogue service: users, plans and videos, their queries, and a short-lived cache for the hot path."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Row, Select, delete, func, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from playgate.catalog import bulk
from playgate.catalog.bulk import Kind, UpsertResult
from playgate.catalog.db import create_engine, is_sqlite
from playgate.catalog.keys import KeyStore
from playgate.catalog.models import (
    AuditEventRow,
    LedgerEventRow,
    PlanRow,
    ShadowDenialRow,
    TokenRevocationRow,
    UserRow,
    VideoRow,
    WebhookDeliveryRow,
    WebhookEventRow,
)
from playgate.domain import Decision, Plan, Policy, Quota, Rules, User, Video
from playgate.errors import Conflict, Invalid, NotFound, Unavailable
from playgate.policy import resolve, rules_from_json, rules_to_json
from playgate.security import hash_password, verify_password
from playgate.values import frozen

ADMIN_NAME = "admin"
DEMO_USERS = (("1", "user1", 3), ("2", "user2", 4), ("3", "user3", 3))
DEMO_VIDEOS = tuple((str(n), f"video{n}") for n in range(1, 7))
# Ids per IN (...) of a look-up by ids: well under SQLite's 32,766 bound parameters.
IDS_PER_QUERY = 5_000
# A cached user or video read after this fraction of PLAYGATE_CACHE_TTL is reloaded in the background.
REFRESH_AT = 0.5
# Entries per cache before it starts over, and reloads one refresh task makes before it hands over to the next.
MAX_CACHED = 100_000
MAX_REFRESH_ROUNDS = 1_000
# How long a note that a user's tokens died is kept (the writers prune older ones): far longer than a socket sweep
# looks back (api/socket.py).
REVOCATIONS_KEPT_S = 3600.0
# A hash nobody's password matches, checked when a name is unknown so that timing does not tell.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))

log = logging.getLogger("playgate.catalog")

# resolve() copies the rules (dataclasses.replace, 10 us) whenever they leave the policy to the deployment: the same
# few rules each time, for every user loaded. Rules are frozen, so their resolved copies are shared.
_resolved = functools.lru_cache(maxsize=1024)(resolve)

# What a User is made of: the user's columns and their plan's (NULL without a plan), by name.
_USER_COLUMNS = (
    UserRow.id,
    UserRow.name,
    UserRow.own_limit,
    UserRow.plan_id,
    UserRow.disabled,
    UserRow.is_admin,
    UserRow.household,
    UserRow.token_epoch,
    PlanRow.max_streams.label("plan_limit"),
    PlanRow.rules.label("plan_rules"),
    PlanRow.shadow.label("plan_shadow"),
)


def _in_chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """`ids` in slices of IDS_PER_QUERY, one IN (...) list each."""
    for start in range(0, len(ids), IDS_PER_QUERY):
        yield ids[start : start + IDS_PER_QUERY]


def _new_catalog_id() -> str:
    return secrets.token_hex(6)


@asynccontextmanager
async def translate_db_errors() -> AsyncIterator[None]:
    """Turn a lost or failing database connection into Unavailable (503), once, here."""
    try:
        yield
    except (OperationalError, OSError, ConnectionError) as exc:
        raise Unavailable(f"The database does not answer: {type(exc).__name__}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable("The database connection was lost.") from exc
        raise


class TTLCache:
    """An expiring map for catalogue lookups on the request path, refreshed ahead of expiry.

    An entry is served until `ttl_s` after it was loaded, never later, so a change still applies within the TTL.
    Once an entry is past REFRESH_AT of its life, the first read of it queues its key, and one background task
    reloads the queued keys (all of them in one `reload` call) and puts the new values. A key read in the second
    half of each life never expires, so no request waits on the database for it: a miss waits on the database
    thread while the event loop serves everyone else, 20 to 60 ms on one busy core (py-spy and timed awaits, C=10),
    and those misses were the benchmark's p99 tail. Misses and refreshes both go through `load`, so a load begun
    before a `clear` never puts its value after it.
    """

    def __init__(
        self,
        ttl_s: float,
        clock: Callable[[], float],
        reload: Callable[[list[str]], Awaitable[Mapping[str, Any]]],
        name: str,
    ) -> None:
        self._ttl_s = ttl_s
        self._refresh_after_s = ttl_s * REFRESH_AT
        self._clock = clock
        self._reload = reload
        self._name = name
        self._items: dict[str, tuple[float, Any]] = {}  # key -> (loaded at, value)
        self._queued: set[str] = set()  # keys read past REFRESH_AT, waiting for the refresh task
        self._refreshing: set[str] = set()  # keys queued or being reloaded: each is reloaded once per life
        self._refresher: asyncio.Task[None] | None = None
        self._generation = 0  # bumped by clear(): a value read before a clear is not put after it

    def get(self, key: str) -> Any:
        """The value if it is younger than the TTL, else None; queues its refresh when it is past REFRESH_AT."""
        hit = self._items.get(key)
        if hit is None:
            return None
        age = self._clock() - hit[0]
        if age >= self._ttl_s:
            return None
        if age >= self._refresh_after_s and key not in self._refreshing:
            self._queue(key)
        return hit[1]

    async def load(self, keys: list[str]) -> Mapping[str, Any]:
        """Read these keys from the database (`reload`), bypassing the cache, and keep what was found unless a
        clear came meanwhile; a key not found is not kept."""
        generation = self._generation
        values = await self._reload(keys)
        if self._ttl_s > 0 and generation == self._generation:
            if len(self._items) + len(values) > MAX_CACHED:
                self._items.clear()
            now = self._clock()
            for key, value in values.items():
                self._items[key] = (now, value)
                self._refreshing.discard(key)
        return values

    def clear(self) -> None:
        self._generation += 1
        self._items.clear()
        self._queued.clear()
        self._refreshing.clear()

    async def close(self) -> None:
        """Stop the refresh task, if one runs."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    def _queue(self, key: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # read outside an event loop (a script, a sync test): the entry just expires
        self._refreshing.add(key)
        self._queued.add(key)
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh(), name=f"playgate-cache-{self._name}")

    async def _refresh(self) -> None:
        # Keys queued while a reload runs go in the next one: under load one query carries many keys.
        for _ in range(MAX_REFRESH_ROUNDS):
            if not self._queued:
                return
            keys, self._queued = list(self._queued), set()
            try:
                await self.load(keys)  # a key gone meanwhile (deleted) expires, and the next read says NotFound
            except Exception:  # the database is away: the entries expire, and the next miss says so (503)
                log.warning("Could not refresh %d cached %s ahead of expiry", len(keys), self._name, exc_info=True)
                return  # the keys stay marked until they are loaded again, so an outage is not retried per read


@frozen
class ShadowDenial:
    """A request the shadow policy would have denied: which rule, and what the enforced policy decided."""

    user_id: str
    request_id: str
    video_id: str
    device_id: str
    rule: str
    enforced: str
    decided_at: float


def _quota(user: User) -> Quota:
    return Quota(limit=user.limit, disabled=user.disabled, rules=user.rules, shadow=user.shadow)


def _plan(row: PlanRow) -> Plan:
    shadow = rules_from_json(row.shadow) if row.shadow is not None else None
    return Plan(row.id, row.name, row.max_streams, rules_from_json(row.rules), shadow)


class Catalog:
    """Reads and writes users, plans and videos; raises NotFound, Conflict, Invalid or Unavailable."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        default_limit: int,
        cache_ttl_s: float,
        clock: Callable[[], float],
        hashes_at_once: int = 2,
        default_policy: Policy = Policy.deny,
        default_shadow: Rules | None = None,
    ) -> None:
        self._engine = engine
        # argon2 takes ~25 ms of a core on purpose: a burst of logins must queue here, not take every core
        # (and the event loop's threads) from the players' requests.
        self._hashing = asyncio.Semaphore(hashes_at_once)
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Writes read first (the row, the plan), then write. Under SQLite's WAL a deferred transaction whose
        # snapshot went stale meanwhile fails with BUSY at once, whatever the timeout: so writes take the write
        # lock at BEGIN, on an engine of their own (PostgreSQL ignores the flag).
        self._writer = create_engine(str(engine.url), immediate=True) if is_sqlite(str(engine.url)) else engine
        self._write_sessions = async_sessionmaker(self._writer, expire_on_commit=False)
        self._default_limit = default_limit
        self._default_policy = default_policy
        self._default_shadow = default_shadow
        self._clock = clock
        self._users = TTLCache(cache_ttl_s, clock, self._load_users, "users")
        self._videos = TTLCache(cache_ttl_s, clock, self._load_videos, "videos")
        self.keys = KeyStore(self._session, self._write_session, clock)

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        async with translate_db_errors(), self._sessions() as session:
            yield session

    @asynccontextmanager
    async def _write_session(self) -> AsyncIterator[AsyncSession]:
        async with translate_db_errors(), self._write_sessions() as session:
            yield session

    async def close(self) -> None:
        """Stop the caches' refresh tasks and release the write engine (the read engine belongs to the caller)."""
        await self._users.close()
        await self._videos.close()
        if self._writer is not self._engine:
            await self._writer.dispose()

    # ---- users -------------------------------------------------------------------------------------

    def _user_query(self, *more: Any) -> Select[Any]:
        """A user's columns and their plan's, as plain rows: no ORM objects to build (a third of the cost of
        reloading thousands of cached users, cProfile), and `more` columns after them."""
        return select(*_USER_COLUMNS, *more).outerjoin(PlanRow, UserRow.plan_id == PlanRow.id)

    def _to_user(self, row: Row[Any]) -> User:
        """The user with their effective limit and rules: own limit, else the plan's, else the deployment's."""
        on_plan = row.plan_limit is not None  # a plan's max_streams is never NULL: NULL here means no plan row
        rules = rules_from_json(row.plan_rules) if on_plan else Rules()
        shadow = rules_from_json(row.plan_shadow) if on_plan and row.plan_shadow is not None else None
        shadow = shadow or self._default_shadow
        if row.own_limit is not None:
            limit = row.own_limit
        elif on_plan:
            limit = row.plan_limit
        else:
            limit = self._default_limit
        return User(
            id=row.id,
            name=row.name,
            limit=limit,
            own_limit=row.own_limit,
            plan=row.plan_id,
            disabled=row.disabled,
            is_admin=row.is_admin,
            household=tuple(row.household or ()),
            rules=_resolved(rules, self._default_policy),
            shadow=_resolved(shadow, self._default_policy) if shadow is not None else None,
            token_epoch=row.token_epoch,
        )

    async def list_users(self) -> list[User]:
        """Every user, ordered by name."""
        async with self._session() as session:
            rows = (await session.execute(self._user_query().order_by(UserRow.name))).all()
        return [self._to_user(row) for row in rows]

    def cached_user(self, user_id: str) -> User | None:
        """The user with this id if cached (for cache_ttl_s), without a query; else None."""
        cached: User | None = self._users.get(user_id)
        return cached

    async def get_user(self, user_id: str, *, fresh: bool = False) -> User:
        """The user with this id (cached for cache_ttl_s unless `fresh`), else NotFound."""
        if not fresh:
            cached = self._users.get(user_id)
            if cached is not None:
                return cached  # type: ignore[no-any-return]
        user: User | None = (await self._users.load([user_id])).get(user_id)
        if user is None:
            raise NotFound(f"No user with id {user_id!r}.")
        return user

    async def find_user(self, name: str) -> User:
        """The user with this name, else NotFound."""
        async with self._session() as session:
            row = (await session.execute(self._user_query().where(UserRow.name == name))).first()
        if row is None:
            raise NotFound(f"No user named {name!r}.")
        return self._to_user(row)

    async def authenticate(self, name: str, password: str) -> User | None:
        """The user if `password` is theirs (disabled or not: the caller says why it refuses one), else None."""
        async with self._session() as session:
            query = self._user_query(UserRow.password_hash).where(UserRow.name == name)
            found = (await session.execute(query)).first()
        # Hashing is slow on purpose: keep it off the event loop.
        password_hash = found.password_hash if found else _DUMMY_HASH
        matches = await self._verify(password_hash or _DUMMY_HASH, password)
        if found is None or not matches:
            return None
        return self._to_user(found)

    async def users(self, user_ids: Iterable[str]) -> dict[str, User]:
        """The users among these ids that exist, from the cache or one query for the others."""
        result: dict[str, User] = {}
        missing = []
        for user_id in set(user_ids):
            cached = self._users.get(user_id)
            if cached is None:
                missing.append(user_id)
            else:
                result[user_id] = cached
        if missing:
            result.update(await self._users.load(missing))
        return result

    async def _load_users(self, user_ids: list[str]) -> dict[str, User]:
        """These users that exist, read from the database (no cache)."""
        found: dict[str, User] = {}
        async with self._session() as session:
            for ids in _in_chunks(user_ids):
                query = self._user_query().where(UserRow.id.in_(ids))
                for row in (await session.execute(query)).all():
                    found[row.id] = self._to_user(row)
        return found

    async def revoked_since(self, since: float) -> set[str]:
        """The users whose tokens died (epoch raised, disabled, deleted) at or after `since`, by the clock of the
        process that wrote it, read fresh (another process may have written it)."""
        query = select(TokenRevocationRow.user_id).where(TokenRevocationRow.at >= since).distinct()
        async with self._session() as session:
            return set((await session.scalars(query)).all())

    async def _end_tokens(self, session: AsyncSession, row: UserRow) -> None:
        """End every token issued to this user so far, in `session`'s transaction: raise its epoch, and note it."""
        row.token_epoch += 1
        await self._note_revoked(session, [row.id])

    async def _note_revoked(self, session: AsyncSession, user_ids: Sequence[str]) -> None:
        """Note, in `session`'s transaction, that these users' tokens die now (revoked_since); forget notes older
        than REVOCATIONS_KEPT_S."""
        if not user_ids:
            return
        now = self._clock()
        # Without flushing the session's pending changes: a user's row renamed to a taken name must fail at the
        # caller's _commit, which answers Conflict on the name, not here, where it would be a 500.
        with session.no_autoflush:
            await session.execute(insert(TokenRevocationRow), [{"user_id": u, "at": now} for u in user_ids])
            await session.execute(delete(TokenRevocationRow).where(TokenRevocationRow.at < now - REVOCATIONS_KEPT_S))

    async def token_epochs(self, user_ids: Iterable[str]) -> dict[str, int]:
        """The token epoch of each of these users who exists and is not disabled, read fresh: two columns, no
        cache. The sockets' revocation check asks this about every connected user each sweep; through `users` it
        loaded and parsed whole rows (5,000 connected users: about a third of a core, py-spy)."""
        wanted = list(set(user_ids))
        epochs: dict[str, int] = {}
        async with self._session() as session:
            for ids in _in_chunks(wanted):
                query = select(UserRow.id, UserRow.token_epoch).where(UserRow.id.in_(ids), UserRow.disabled.is_(False))
                epochs.update((user_id, epoch) for user_id, epoch in (await session.execute(query)).all())
        return epochs

    async def quotas(self, user_ids: Iterable[str]) -> dict[str, Quota]:
        """Each user's limit and state at decision time; unknown users are marked as such."""
        wanted = set(user_ids)
        found = await self.users(wanted)
        result = {user_id: _quota(u) for user_id, u in found.items()}
        for user_id in wanted - result.keys():
            result[user_id] = Quota(limit=0, exists=False)
        return result

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(hash_password, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        async with self._hashing:
            return await asyncio.to_thread(verify_password, password_hash, password)

    async def create_user(
        self,
        *,
        name: str,
        password: str,
        limit: int | None = None,
        plan: str | None = None,
        disabled: bool = False,
        is_admin: bool = False,
        user_id: str | None = None,
        household: tuple[str, ...] = (),
    ) -> User:
        """A new user (the server picks the id unless given); Conflict if the name is taken."""
        password_hash = await self._hash(password)
        async with self._write_session() as session:
            await self._check_plan(session, plan)
            row = UserRow(
                id=user_id or _new_catalog_id(),
                name=name,
                password_hash=password_hash,
                own_limit=limit,
                plan_id=plan,
                disabled=disabled,
                is_admin=is_admin,
                created_at=self._clock(),
                household=list(household),
            )
            session.add(row)
            await self._commit(session, f"A user named {name!r} exists already.", "name")
        return await self.get_user(row.id, fresh=True)

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> User:
        """Apply `changes` (name, password, limit, plan, disabled, household) to a user; NotFound, Conflict."""
        password = changes.get("password")
        password_hash = await self._hash(password) if password else None
        async with self._write_session() as session:
            row = await _get_row(session, UserRow, user_id, "user")
            if "plan" in changes:
                await self._check_plan(session, changes["plan"])
                row.plan_id = changes["plan"]
            if "limit" in changes:
                row.own_limit = changes["limit"]
            _assign(row, changes, "name")
            revoke = password_hash is not None
            if changes.get("disabled") is not None:
                revoke = revoke or row.disabled != changes["disabled"]
                row.disabled = changes["disabled"]
            if changes.get("household") is not None:
                row.household = list(changes["household"])
            if password_hash is not None:
                row.password_hash = password_hash
            if revoke:
                # Every token issued so far dies: after a password change, and across a disable (so that
                # re-enabling the user does not revive the tokens issued before).
                await self._end_tokens(session, row)
            await self._commit(session, f"A user named {changes.get('name')!r} exists already.", "name")
        self._users.clear()
        return await self.get_user(user_id, fresh=True)

    async def delete_user(self, user_id: str) -> None:
        """Remove a user; NotFound if there is none."""
        async with self._write_session() as session:
            await self._note_revoked(session, [user_id])
            await _delete_row(session, UserRow, user_id, "user")
        self._users.clear()

    async def erase_history(self, user_id: str) -> dict[str, int]:
        """Delete, in one transaction, what the catalogue keeps of a user's activity: audit events (with, embedded,
        those the ledger logged that the trail has not taken yet), shadow denials, and webhook events with their
        deliveries. How many rows of each kind went."""
        tables = {
            "auditEvents": (AuditEventRow, LedgerEventRow),
            "shadowDenials": (ShadowDenialRow,),
            "webhookDeliveries": (WebhookDeliveryRow,),
            "webhookEvents": (WebhookEventRow,),
        }
        erased: dict[str, int] = {}
        async with self._write_session() as session:
            for kind, rows in tables.items():
                erased[kind] = 0
                for row in rows:
                    result = await session.execute(delete(row).where(row.user_id == user_id))
                    erased[kind] += result.rowcount  # type: ignore[attr-defined]
            await session.commit()
        return erased

    async def _check_plan(self, session: AsyncSession, plan: str | None) -> None:
        if plan is not None and await session.get(PlanRow, plan) is None:
            raise Invalid(f"No plan with id {plan!r}.", field="plan")

    async def _commit(self, session: AsyncSession, conflict: str, field: str) -> None:
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            raise Conflict(conflict, field=field) from None

    # ---- plans -------------------------------------------------------------------------------------

    async def list_plans(self) -> list[Plan]:
        """Every plan, ordered by name."""
        async with self._session() as session:
            rows = (await session.scalars(select(PlanRow).order_by(PlanRow.name))).all()
        return [_plan(r) for r in rows]

    async def get_plan(self, plan_id: str) -> Plan:
        """The plan with this id, else NotFound."""
        async with self._session() as session:
            return _plan(await _get_row(session, PlanRow, plan_id, "plan"))

    async def create_plan(
        self, *, name: str, max_streams: int, rules: Rules | None = None, shadow: Rules | None = None
    ) -> Plan:
        """A new plan with its rules and shadow policy; Conflict if the name is taken."""
        async with self._write_session() as session:
            row = PlanRow(
                id=_new_catalog_id(),
                name=name,
                max_streams=max_streams,
                rules=rules_to_json(rules or Rules()),
                shadow=rules_to_json(shadow) if shadow is not None else None,
            )
            session.add(row)
            await self._commit(session, f"A plan named {name!r} exists already.", "name")
        return _plan(row)

    async def update_plan(self, plan_id: str, changes: Mapping[str, Any]) -> Plan:
        """Change a plan: name, max_streams, rules (camelCase fields; null lifts a cap) or shadow (None ends it).

        Its users are held to the change within cache_ttl_s: at their next request or heartbeat.
        """
        async with self._write_session() as session:
            row = await _get_row(session, PlanRow, plan_id, "plan")
            _assign(row, changes, "name", "max_streams")
            if changes.get("rules"):
                # Rule fields sent replace those stored; a field sent as null lifts that cap.
                merged = {**(row.rules or {}), **changes["rules"]}
                row.rules = rules_to_json(rules_from_json({k: v for k, v in merged.items() if v is not None}))
            if "shadow" in changes:
                row.shadow = rules_to_json(changes["shadow"]) if changes["shadow"] is not None else None
            await self._commit(session, f"A plan named {changes.get('name')!r} exists already.", "name")
        self._users.clear()
        return _plan(row)

    async def delete_plan(self, plan_id: str) -> None:
        """Remove a plan; Conflict while users are on it."""
        async with self._write_session() as session:
            users = await session.scalar(select(func.count()).where(UserRow.plan_id == plan_id))
            if users:
                raise Conflict(f"{users} user(s) are on plan {plan_id!r}; move them first.", field="plan")
            await _delete_row(session, PlanRow, plan_id, "plan")

    # ---- videos ------------------------------------------------------------------------------------

    async def list_videos(self) -> list[Video]:
        """Every video, ordered by id."""
        async with self._session() as session:
            rows = (await session.scalars(select(VideoRow).order_by(VideoRow.id))).all()
        return [_video(r) for r in rows]

    async def get_video(self, video_id: str) -> Video:
        """The video with this id (cached for cache_ttl_s), else NotFound."""
        cached = self._videos.get(video_id)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        video: Video | None = (await self._videos.load([video_id])).get(video_id)
        if video is None:
            raise NotFound(f"No video with id {video_id!r}.")
        return video

    async def _load_videos(self, video_ids: list[str]) -> dict[str, Video]:
        """These videos that exist, read from the database (no cache)."""
        found: dict[str, Video] = {}
        async with self._session() as session:
            for ids in _in_chunks(video_ids):
                query = select(VideoRow).where(VideoRow.id.in_(ids))
                found.update((row.id, _video(row)) for row in (await session.scalars(query)).all())
        return found

    async def create_video(
        self,
        *,
        title: str,
        url: str,
        video_id: str | None = None,
        source: str | None = None,
        kinds: tuple[str, ...] = (),
    ) -> Video:
        """A new video with its kind tags (the server picks the id unless given); `source` is a checked folder of
        its own media."""
        async with self._write_session() as session:
            row = VideoRow(id=video_id or _new_catalog_id(), title=title, url=url, source=source, kinds=list(kinds))
            session.add(row)
            await self._commit(session, f"A video with id {video_id!r} exists already.", "id")
        return _video(row)

    async def update_video(self, video_id: str, changes: Mapping[str, Any]) -> Video:
        """Change a video's title, URL, kind tags or media source (`source: None` goes back to the media PlayGate
        makes)."""
        async with self._write_session() as session:
            row = await _get_row(session, VideoRow, video_id, "video")
            _assign(row, changes, "title", "url")
            if "source" in changes:
                row.source = changes["source"]
            if changes.get("kinds") is not None:
                row.kinds = list(changes["kinds"])
            await session.commit()
        self._videos.clear()
        return _video(row)

    async def delete_video(self, video_id: str) -> None:
        """Remove a video; NotFound if there is none."""
        async with self._write_session() as session:
            await _delete_row(session, VideoRow, video_id, "video")
        self._videos.clear()

    # ---- create or update by id, one row or many ----------------------------------------------------

    async def upsert(self, kind: Kind, rows: Sequence[tuple[int, dict[str, Any]]]) -> UpsertResult:
        """Create or update many rows of one kind in one transaction (see catalog.bulk); refused rows are reported,
        not raised."""
        async with self._write_session() as session:
            result = await bulk.upsert(session, kind, rows, self._clock())
            await self._note_revoked(session, result.revoked)
            await self._commit(session, f"Rows of this import clash with each other or with other {kind.noun}s.", "id")
        self._users.clear()
        self._videos.clear()
        return result

    async def put(self, kind: Kind, row_id: str, values: Mapping[str, Any]) -> bool:
        """Create or update one row by id from its fields (wire names); True when created. A user's `password` is
        hashed here. Invalid or Conflict (a taken name) name the field at fault."""
        values = {k: v for k, v in values.items() if not (k == "password" and v is None)}
        if "password" in values:
            if await self._password_is(kind, row_id, values["password"]):
                del values["password"]  # the same again: nothing changes, and the tokens issued under it live on
            else:
                values["password"] = await self._hash(values["password"])
        result = await self.upsert(kind, [(1, {"id": row_id, **bulk.columns_of(kind, values)})])
        if result.refused:
            refusal = result.refused[0]
            error = Conflict if refusal.field == "name" else Invalid
            raise error(f"{refusal.field}: {refusal.reason}", field=refusal.field)
        return result.created == 1

    async def _password_is(self, kind: Kind, row_id: str, password: str) -> bool:
        """Whether the stored user `row_id` has this password (False for another kind, or no such user)."""
        if kind is not bulk.USERS:
            return False
        async with self._session() as session:
            stored = await session.scalar(select(UserRow.password_hash).where(UserRow.id == row_id))
        if not stored:
            return False
        return await self._verify(stored, password)

    # ---- shadow denials ----------------------------------------------------------------------------

    async def record_shadow_denials(self, decisions: Iterable[Decision]) -> int:
        """Keep the decisions whose shadow policy would have denied them (one INSERT of many rows); how many."""
        rows = [
            {
                "user_id": d.user_id,
                "request_id": d.request_id,
                "video_id": d.video_id,
                "device_id": d.device_id,
                "rule": d.shadow_reason,
                "enforced": d.status.value,
                "decided_at": d.decided_at,
            }
            for d in decisions
            if d.shadow_reason is not None
        ]
        if rows:
            async with self._write_session() as session:
                # Core's executemany: the ORM's bulk insert costs several times more per row, on every decision.
                await session.execute(insert(ShadowDenialRow.__table__), rows)  # type: ignore[arg-type]
                await session.commit()
        return len(rows)

    async def shadow_denials(self, user_id: str | None = None, *, limit: int = 100) -> list[ShadowDenial]:
        """The latest shadow denials, newest first: of one user, or of everyone."""
        query = select(ShadowDenialRow).order_by(ShadowDenialRow.decided_at.desc(), ShadowDenialRow.id.desc())
        if user_id is not None:
            query = query.where(ShadowDenialRow.user_id == user_id)
        async with self._session() as session:
            rows = (await session.scalars(query.limit(limit))).all()
        return [
            ShadowDenial(r.user_id, r.request_id, r.video_id, r.device_id, r.rule, r.enforced, r.decided_at)
            for r in rows
        ]

    # ---- start-up ----------------------------------------------------------------------------------

    async def is_empty(self) -> bool:
        """True when there are no users and no videos (a fresh database)."""
        async with self._session() as session:
            users = await session.scalar(select(func.count()).select_from(UserRow))
            videos = await session.scalar(select(func.count()).select_from(VideoRow))
        return not users and not videos

    async def load_demo(self) -> bool:
        """Add the original service's demo users and videos, unless already there; True if added."""
        added = False
        # A Conflict means another process starting at the same time added that row first: it is there.
        for user_id, name, limit in DEMO_USERS:
            try:
                await self.get_user(user_id, fresh=True)
            except NotFound:
                with contextlib.suppress(Conflict):
                    await self.create_user(name=name, password=name, limit=limit, user_id=user_id)
                    added = True
        for video_id, title in DEMO_VIDEOS:
            try:
                await self.get_video(video_id)
            except NotFound:
                with contextlib.suppress(Conflict):
                    await self.create_video(title=title, url=f"/media/{title}.mp4", video_id=video_id)
                    added = True
        return added

    async def ensure_admin(self, password: str) -> User:
        """Create the `admin` user with this password, or set it if the admin exists.

        Two processes starting at once on an empty database may both find no admin: the one whose insert loses
        (Conflict on the name) sets the password of the admin the other created, and goes on.
        """
        try:
            admin = await self.find_user(ADMIN_NAME)
        except NotFound:
            try:
                return await self.create_user(name=ADMIN_NAME, password=password, is_admin=True, limit=0)
            except Conflict:
                admin = await self.find_user(ADMIN_NAME)
        async with self._write_session() as session:
            row = await session.get(UserRow, admin.id)
            assert row is not None
            # Every process sets it at start: only a new password rehashes it and ends the admin's tokens.
            if not await self._verify(row.password_hash, password):
                row.password_hash = await self._hash(password)
                await self._end_tokens(session, row)
            row.is_admin = True
            await session.commit()
        return await self.get_user(admin.id, fresh=True)

    async def ping(self) -> None:
        """Raise Unavailable unless the database answers a trivial query."""
        async with self._session() as session:
            await session.execute(select(1))


def _video(row: VideoRow) -> Video:
    return Video(row.id, row.title, row.url, row.source, tuple(row.kinds or ()))


_Row = TypeVar("_Row", UserRow, PlanRow, VideoRow)


async def _get_row(session: AsyncSession, row_type: type[_Row], row_id: str, noun: str) -> _Row:
    """The `noun` with id `row_id` in `session`; NotFound if there is none."""
    row = await session.get(row_type, row_id)
    if row is None:
        raise NotFound(f"No {noun} with id {row_id!r}.")
    return row


def _assign(row: UserRow | PlanRow | VideoRow, changes: Mapping[str, Any], *fields: str) -> None:
    """Set each of `fields` (attribute names of `row`) that `changes` gives a value (None: leave it as it is)."""
    for name in fields:
        if changes.get(name) is not None:
            setattr(row, name, changes[name])


async def _delete_row(
    session: AsyncSession, row_type: type[UserRow | PlanRow | VideoRow], row_id: str, noun: str
) -> None:
    """Delete the `noun` with id `row_id` and commit; NotFound if there is none (nothing of the transaction is
    committed then)."""
    result = await session.execute(delete(row_type).where(row_type.id == row_id))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"No {noun} with id {row_id!r}.")
    await session.commit()
