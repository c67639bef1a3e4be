"""The application service: what the routes and socket handlers call; it owns no transport of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from playgate.admission import over_limit
from playgate.bus.protocol import Fanout, RequestQueue, observe_queue
from playgate.catalog.service import Catalog
from playgate.config import AuthMode, Settings
from playgate.domain import Decision, EndedStream, PlayRequest, Reason, Stream, User, new_id, own_device
from playgate.errors import Forbidden, Invalid, NotFound, Unauthorized
from playgate.ledger.protocol import Ledger
from playgate.metrics import Metrics
from playgate.security import TokenIssuer
from playgate.throttle import LoginThrottle, Throttled

log = logging.getLogger("playgate.service")

MAX_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user, and whether they may act as an admin."""

    user: User | None
    admin: bool

    @property
    def user_id(self) -> str:
        """The caller's user id; Unauthorized when the caller named no user."""
        if self.user is None:
            raise Unauthorized("Name the user: ?user=<userId>.")
        return self.user.id

    def may_see(self, user_id: str) -> bool:
        """True for the user themself and for admins."""
        return self.admin or (self.user is not None and self.user.id == user_id)


@dataclass(frozen=True, slots=True)
class Readiness:
    """Each backend's state ("ok" or why not); ready when every one answers."""

    checks: dict[str, str]

    @property
    def ok(self) -> bool:
        """True when every backend answered."""
        return all(state == "ok" for state in self.checks.values())


@dataclass(frozen=True, slots=True)
class Login:
    """A logged-in user's access token and how long it is valid."""

    access_token: str
    expires_in_s: int
    user: User


@dataclass(frozen=True, slots=True)
class PlayTicket:
    """A play request as the API answers it: its id, and its decision when already known."""

    request: PlayRequest
    decision: Decision | None


class PlayGate:
    """Authentication, play requests, streams and announcements, over catalogue, ledger and bus."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        ledger: Ledger,
        queue: RequestQueue,
        fanout: Fanout,
        tokens: TokenIssuer,
        throttle: LoginThrottle,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._ledger = ledger
        self._queue = queue
        self._fanout = fanout
        self._tokens = tokens
        self._throttle = throttle
        self._metrics = metrics
        self._clock = clock

    # ---- who is calling ----------------------------------------------------------------------------

    async def login(self, name: str, password: str, address: str) -> Login:
        """A token for valid credentials; Unauthorized otherwise (same answer for any wrong part), and Throttled
        (429) once this name from this address, or this address, has used up its failed logins. The attempt is
        counted before the password is checked, so concurrent guesses get no more checks than the limit."""
        try:
            await self._throttle.attempt(name, address)
        except Throttled as exc:
            self._metrics.logins_throttled.labels(exc.limit).inc()
            raise
        user = await self._catalog.authenticate(name, password)
        if user is None:
            raise Unauthorized("Wrong username or password.")
        await self._throttle.succeeded(name, address)
        token = self._tokens.issue(user.id, admin=user.is_admin, now=self._clock())
        return Login(token, self._tokens.ttl_s, user)

    async def principal(self, token: str | None, claimed_user: str | None = None) -> Principal:
        """The caller of a request: from the token, or (auth disabled) from `?user=`, believed."""
        if self._settings.auth is AuthMode.disabled and not token:
            user = await self._existing_user(claimed_user) if claimed_user else None
            return Principal(user=user, admin=True)
        if not token:
            raise Unauthorized("Send Authorization: Bearer <accessToken> (get one from POST /auth/token).")
        claims = self._tokens.check(token)
        try:
            user = await self._catalog.get_user(claims.user_id)
        except NotFound:
            raise Unauthorized("The token's user no longer exists.") from None
        if user.disabled:
            raise Unauthorized("This user is disabled.")
        return Principal(user=user, admin=claims.admin and user.is_admin)

    async def _existing_user(self, user_id: str) -> User:
        return await self._catalog.get_user(user_id)

    def socket_opened(self) -> None:
        """Count a connected socket (the `playgate_sockets_connected` gauge)."""
        self._metrics.sockets.inc()

    def socket_closed(self) -> None:
        """Count a socket gone."""
        self._metrics.sockets.dec()

    def acting_user(self, principal: Principal, user_id: str | None) -> str:
        """The user a seed route acts for: `?user=` must be the caller (or the caller an admin)."""
        if user_id is None:
            return principal.user_id
        if not principal.may_see(user_id):
            raise Forbidden("You may only act for yourself.")
        return user_id

    # ---- plays -------------------------------------------------------------------------------------

    async def request_play(
        self,
        user_id: str,
        video_id: str,
        *,
        device_id: str | None = None,
        idempotency_key: str | None = None,
        replace_stream_id: str | None = None,
        wait_s: float = 0.0,
    ) -> PlayTicket:
        """Queue a play request (404 for an unknown user or video, before anything is queued)."""
        user = await self._catalog.get_user(user_id)
        await self._catalog.get_video(video_id)

        def request(request_id: str) -> PlayRequest:
            return PlayRequest(
                request_id=request_id,
                user_id=user.id,
                video_id=video_id,
                device_id=device_id or own_device(request_id),
                accepted_at=self._clock(),
                replace_stream_id=replace_stream_id,
                replace_device_stream=self._settings.one_stream_per_device and device_id is not None,
            )

        request_id = new_id()
        if idempotency_key is not None:
            claim = await self._ledger.claim_key(user.id, idempotency_key, request_id, video_id)
            if not claim.created:
                if claim.video_id != video_id:
                    raise Invalid(
                        "This Idempotency-Key was used for another video; use a new key.",
                        field="Idempotency-Key",
                    )
                return await self._replay(request(claim.request_id), wait_s)
        return await self._submit(request(request_id), wait_s)

    async def _replay(self, retry: PlayRequest, wait_s: float) -> PlayTicket:
        """A retry with a known key: the first request's decision, or its wait; re-queued if it was lost."""
        decision = await self._ledger.decision(retry.request_id)
        pending = await self._queue.pending(retry.request_id)
        request = pending or retry
        if decision is not None:
            return PlayTicket(request, decision)
        if pending is None:
            # Bound to the key but neither queued nor decided: the process stopped in between. Deciding it
            # now is safe, since a request id is decided once.
            return await self._submit(request, wait_s)
        return PlayTicket(request, await self._wait(request.request_id, wait_s))

    async def _submit(self, request: PlayRequest, wait_s: float) -> PlayTicket:
        waiter = self._fanout.watch(request.request_id) if wait_s > 0 else None
        try:
            await self._queue.put(request)
            self._metrics.requests_accepted.inc()
            decision = await self._await(waiter, wait_s) if waiter is not None else None
        finally:
            if waiter is not None:
                self._fanout.unwatch(request.request_id, waiter)
        return PlayTicket(request, decision)

    async def _wait(self, request_id: str, wait_s: float) -> Decision | None:
        if wait_s <= 0:
            return None
        waiter = self._fanout.watch(request_id)
        try:
            # Watch first, then look: a decision published in between is not missed.
            decision = await self._ledger.decision(request_id)
            return decision or await self._await(waiter, wait_s)
        finally:
            self._fanout.unwatch(request_id, waiter)

    @staticmethod
    async def _await(waiter: asyncio.Future[Decision], wait_s: float) -> Decision | None:
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), min(wait_s, MAX_WAIT_S))
        except TimeoutError:
            return None

    async def play_status(self, principal: Principal, request_id: str) -> PlayRequest | Decision:
        """A request's decision, or the request while pending; 404 for others' and unknown requests."""
        # Pending first: a request leaves the queue only after its decision is committed, so looking the other
        # way round could miss it in between.
        found: PlayRequest | Decision | None = await self._queue.pending(request_id)
        found = found or await self._ledger.decision(request_id)
        if found is None or not principal.may_see(found.user_id):
            raise NotFound(f"No play request {request_id!r}.")
        return found

    # ---- streams -----------------------------------------------------------------------------------

    async def streams(self, user_id: str) -> list[Stream]:
        """The user's active streams, oldest first."""
        return await self._ledger.streams(user_id)

    async def user_streams(self, user_id: str) -> list[Stream]:
        """Another user's active streams, oldest first; 404 for an unknown user."""
        await self._catalog.get_user(user_id)
        return await self._ledger.streams(user_id)

    async def heartbeat(self, principal: Principal, stream_id: str) -> Stream:
        """Renew one of the caller's streams (anyone's for an admin); 404 when it is no longer active."""
        owner = principal.user.id if principal.user is not None else None
        if principal.admin:
            stream = await self._ledger.stream(stream_id)
            owner = stream.user_id if stream is not None else owner
        if owner is None:
            raise NotFound(f"Stream {stream_id!r} is not active.")
        return await self.renew(stream_id, owner)

    async def renew(self, stream_id: str, user_id: str, *, slack: float = 0.0) -> Stream:
        """Renew a stream of `user_id` (any heartbeat: HTTP, socket, media request); NotFound once it has ended.

        A user disabled since, or now over a lowered limit, is held to it here: all the streams of a disabled
        user end (`user_disabled`); a stream beyond the new limit ends (`evicted`), the rest keep playing.
        With `slack` (a fraction of the lease), a lease renewed less than that long ago is only checked, not
        written again: a player fetching many ranges a second costs one read each, and a write now and then.
        """
        streams = await self._ledger.streams(user_id)
        stream = next((s for s in streams if s.id == stream_id), None)
        if stream is None:
            raise NotFound(f"Stream {stream_id!r} is not active.")
        quota = (await self._catalog.quotas([user_id]))[user_id]
        if quota.disabled or not quota.exists:
            await self._end_all(user_id)
            raise NotFound(f"Stream {stream_id!r} has ended: the user is disabled.")
        if len(streams) > quota.limit and stream.id in over_limit(streams, quota.limit, self._settings.policy):
            await self._announce(await self._ledger.stop([stream.id], user_id), Reason.evicted)
            raise NotFound(f"Stream {stream_id!r} has ended: the user's limit is now {quota.limit}.")
        lease_s = self._settings.stream_ttl_s
        if stream.expires_at - self._clock() > lease_s * (1.0 - slack):
            return stream
        renewed = await self._ledger.heartbeat(stream_id, user_id)
        if renewed is None:
            raise NotFound(f"Stream {stream_id!r} is not active.")
        return renewed

    async def stop_stream(self, principal: Principal, stream_id: str) -> Stream:
        """Stop one stream: the caller's own, or anyone's for an admin (announced `stopped_by_admin`)."""
        if principal.user is not None:
            # The common case, a player stopping its own stream: one ledger write, no lookup first.
            stopped = await self._ledger.stop([stream_id], principal.user.id)
            if stopped:
                return stopped[0]
        stream = await self._ledger.stream(stream_id) if principal.admin else None
        if stream is None:
            raise NotFound(f"Stream {stream_id!r} is not active.")
        stopped = await self._ledger.stop([stream_id], stream.user_id)
        if not stopped:
            raise NotFound(f"Stream {stream_id!r} is not active.")
        await self._announce(stopped, Reason.stopped_by_admin)
        return stopped[0]

    async def stop_streams(self, user_id: str, video_id: str | None = None) -> list[Stream]:
        """Stop all of a user's streams (of one video, if given)."""
        return await self._ledger.stop(None, user_id, video_id)

    async def _announce(self, streams: Sequence[Stream], reason: Reason) -> None:
        ended = [EndedStream(s, reason) for s in streams]
        if ended:
            await self._fanout.announce(ended)
            for _ in ended:
                self._metrics.streams_ended.labels(reason.value).inc()

    async def _end_all(self, user_id: str) -> None:
        """End all of a disabled or deleted user's streams at once, and tell their players why."""
        await self._announce(await self._ledger.stop(None, user_id), Reason.user_disabled)

    # ---- users (admin) -----------------------------------------------------------------------------

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> User:
        """Change a user; disabling one ends their streams at once (announced `user_disabled`)."""
        user = await self._catalog.update_user(user_id, dict(changes))
        if user.disabled:
            await self._end_all(user.id)
        return user

    async def delete_user(self, user_id: str) -> None:
        """Delete a user; their streams end with them (announced `user_disabled`)."""
        await self._catalog.delete_user(user_id)
        await self._end_all(user_id)

    # ---- health ------------------------------------------------------------------------------------

    async def ready(self) -> Readiness:
        """Each backend's state, "ok" or why not; the `playgate_ready` gauge follows (API and worker probes)."""
        checks: dict[str, str] = {}
        for name, ping in (
            ("catalog", self._catalog.ping),
            ("ledger", self._ledger.ping),
            ("queue", self._queue.ping),
        ):
            try:
                await asyncio.wait_for(ping(), 2.0)
                checks[name] = "ok"
            except Exception as exc:  # any failure means "not ready"; say which and why
                checks[name] = f"{type(exc).__name__}: {exc}"
        readiness = Readiness(checks)
        self._metrics.ready.set(1 if readiness.ok else 0)
        return readiness

    async def metrics_page(self) -> tuple[bytes, str]:
        """This process's metrics in Prometheus text format, the queue gauges refreshed first; and its type."""
        await observe_queue(self._queue, self._metrics)
        return self._metrics.render(), self._metrics.content_type
