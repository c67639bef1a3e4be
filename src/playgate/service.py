"""The application service: what the routes and socket handlers call; it owns no transport of its own."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from playgate import imports, tracing
from playgate.admission import over_rules
from playgate.audit import AuditTrail, ChangeFeed, StoredEvent
from playgate.batch import GroupCommit
from playgate.bus.protocol import EmittingFanout, Fanout, PlayQueue, observe_queue
from playgate.catalog.bulk import USERS, UpsertResult
from playgate.catalog.keys import is_api_key
from playgate.catalog.service import Catalog, ShadowDenial
from playgate.config import AuthMode, Settings, Tracing, UnknownVideos
from playgate.devices import DeviceIdMode, DeviceIds
from playgate.domain import (
    Decision,
    Device,
    EndedStream,
    KeyScope,
    PlayRequest,
    Reason,
    Stream,
    User,
    owned_id,
)
from playgate.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge, Unauthorized, Unavailable
from playgate.imports import Format, KindName
from playgate.kept import KeptOutages
from playgate.ledger.protocol import Ledger
from playgate.metrics import Metrics
from playgate.outage import DeferredStop, Mode, Outage, Reconciliation, admitted_in_outage
from playgate.policy import is_away, parse_networks
from playgate.ratelimit import UserRate
from playgate.security import PlatformClaims, PlatformTokens, PlaybackClaims, TokenIssuer
from playgate.throttle import LoginThrottle, Throttled
from playgate.values import frozen

log = logging.getLogger("playgate.service")

MAX_WAIT_S = 10.0
# Stream ends an outage kept from the sockets are announced this long after the store answers again: the fan-out's
# listeners (Redis pub/sub) subscribe again within half a second of it, and pub/sub keeps nothing for a listener
# that is not subscribed.
LATE_ANNOUNCE_DELAY_S = 1.0
# Users an import disabled whose streams are ended together (their stops go in shared transactions, GroupCommit).
ENDS_AT_ONCE = 1000
# An erasure waits this long at most for the audit trail to take what the change log holds from before it,
# asking this often.
ERASE_WAIT_S = 10.0
ERASE_POLL_S = 0.1


def request_fingerprint(
    video_id: str, device_id: str | None, device_name: str, replace_stream_ids: Sequence[str], replace_others: bool
) -> str:
    """What a play request asks, as an Idempotency-Key is bound to it: the same key with another body is refused, as
    the IETF draft on the header has it, instead of answered with the first request's decision. The device's secret
    is not part of it (a credential, not what is asked); a 64-character digest, which the ledgers store as is."""
    asked = [video_id, device_id, device_name, sorted(set(replace_stream_ids)), replace_others]
    return hashlib.sha256(repr(asked).encode()).hexdigest()


@frozen
class Principal:
    """Who is calling: a user, and whether they may act as an admin; or a platform's backend with an API key of
    some scope (`user` None)."""

    user: User | None
    admin: bool
    scope: KeyScope | None = None

    @property
    def user_id(self) -> str:
        """The caller's user id; Unauthorized when the caller named no user."""
        if self.user is None:
            raise Unauthorized("Name the user: ?user=<userId>.")
        return self.user.id

    def may_see(self, user_id: str) -> bool:
        """True for the user themself, admins, and `plays` and `read` keys."""
        return self.admin or self.scope is not None or (self.user is not None and self.user.id == user_id)

    def may_act_for(self, user_id: str) -> bool:
        """True for the user themself, admins, and `plays` keys (a backend mediating its players)."""
        return self.admin or self.scope is KeyScope.plays or (self.user is not None and self.user.id == user_id)

    @property
    def reads_all(self) -> bool:
        """True for admins and `read` keys: they may read users, plans, videos and keys."""
        return self.admin or self.scope is KeyScope.read

    @property
    def stops_any(self) -> bool:
        """True for admins and `plays` keys: they may renew and stop any user's streams."""
        return self.admin or self.scope is KeyScope.plays


@frozen
class Readiness:
    """Each backend's state ("ok" or why not), and the outage mode in force; ready when every backend answers, or
    while an outage is within its grace (this process still serves the streams playing)."""

    checks: dict[str, str]
    outage: str = "normal"
    in_grace: bool = False

    @property
    def ok(self) -> bool:
        """True when every backend answered, or the outage is within its grace."""
        return self.in_grace or all(state == "ok" for state in self.checks.values())


@frozen
class Login:
    """A logged-in user's access token and how long it is valid."""

    access_token: str
    expires_in_s: int
    user: User


@frozen
class PlayTicket:
    """A play request as the API answers it: its id, its decision when already known, and whether the server issued
    the request's device (an answer that names devices tells that device's secret: PlayGate.device_secret)."""

    request: PlayRequest
    decision: Decision | None
    issued_device: bool = False

    @property
    def device_id(self) -> str:
        """The device the answer names: the decision's, else the request's."""
        return self.decision.device_id if self.decision is not None else self.request.device_id


class PlayGate:
    """Authentication, play requests, streams and announcements, over catalogue, ledger and bus."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        ledger: Ledger,
        queue: PlayQueue,
        fanout: Fanout,
        tokens: TokenIssuer,
        throttle: LoginThrottle,
        devices: DeviceIds,
        metrics: Metrics,
        clock: Callable[[], float],
        platform: PlatformTokens | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._ledger = ledger
        self._queue = queue
        self._fanout = fanout
        self._tokens = tokens
        self._throttle = throttle
        self._devices = devices
        self._platform = platform
        self._metrics = metrics
        self._clock = clock
        self._user_rate = UserRate(settings.user_rate, settings.user_burst, clock)
        self._traced = settings.tracing is Tracing.otlp
        self._audit = audit
        # Callers whose user is not cached, looked up together: with many users (each asking now and then, past
        # the catalogue's cache) one query serves every request that arrived meanwhile.
        self._callers: GroupCommit[str, User | None] = GroupCommit(self._users_of)
        self._late: set[asyncio.Task[None]] = set()  # late announcements under way (a reference keeps each)
        self._outage = Outage(
            policy=settings.outage_policy,
            grace_s=settings.outage_grace_s,
            lease_s=settings.stream_ttl_s,
            metrics=metrics,
            clock=clock,
        )
        if isinstance(fanout, EmittingFanout):  # ends another process announced: never honoured in an outage
            fanout.on_ended = self._outage.forget
        # What a stop in an outage leaves for the next start, and what this process took back at its own.
        self._kept = KeptOutages(settings.data_dir)
        self._writing_back: asyncio.Event | None = None  # set when the write-back under way has ended

    async def _users_of(self, user_ids: Sequence[str]) -> list[User | None]:
        found = await self._catalog.users(user_ids)
        return [found.get(user_id) for user_id in user_ids]

    # ---- who is calling ----------------------------------------------------------------------------

    async def login(self, name: str, password: str, address: str) -> Login:
        """A token for valid credentials; Unauthorized otherwise (same answer for any wrong part), Forbidden, saying
        so, for a disabled user who gave the right password, and Throttled (429) once this name from this address,
        or this address, has used up its failed logins. The attempt is counted before the password is checked, so
        concurrent guesses get no more checks than the limit."""
        try:
            await self._throttle.attempt(name, address)
        except Throttled as exc:
            self._metrics.logins_throttled.labels(exc.limit).inc()
            raise
        user = await self._catalog.authenticate(name, password)
        if user is None:
            raise Unauthorized("Wrong username or password.")
        await self._throttle.succeeded(name, address)
        if user.disabled:
            raise Forbidden("This account is disabled. Ask the account's owner or the platform's support to enable it.")
        token = self._tokens.issue(user.id, admin=user.is_admin, now=self._clock(), epoch=user.token_epoch)
        return Login(token, self._tokens.ttl_s, user)

    async def principal(self, token: str | None, claimed_user: str | None = None) -> Principal:
        """The caller of a request: from the token, or (auth disabled) from `?user=`, believed."""
        if self._settings.auth is AuthMode.disabled and not token:
            user = await self._existing_user(claimed_user) if claimed_user else None
            return Principal(user=user, admin=True)
        if not token:
            raise Unauthorized("Send Authorization: Bearer <accessToken> (get one from POST /auth/token).")
        if is_api_key(token):
            key = await self._catalog.keys.check(token)
            return Principal(user=None, admin=key.scope is KeyScope.admin, scope=key.scope)
        if self._platform is not None and not self._tokens.issued_here(token):
            return Principal(user=await self._platform_user(await self._platform.check(token)), admin=False)
        claims = self._tokens.check(token)
        user = self._catalog.cached_user(claims.user_id) or await self._callers(claims.user_id)
        if user is None:
            raise Unauthorized("The token's user no longer exists.")
        if user.disabled:
            raise Unauthorized("This user is disabled.")
        if claims.epoch != user.token_epoch:
            raise Unauthorized("The token was revoked (password changed or user disabled since); log in again.")
        return Principal(user=user, admin=claims.admin and user.is_admin)

    async def token_epochs(self, user_ids: Iterable[str]) -> dict[str, int]:
        """The current token epoch of each of these users who may still act (deleted and disabled ones are left
        out): a socket opened under another epoch, or of a user left out, must close."""
        return await self._catalog.token_epochs(user_ids)

    async def revoked_since(self, since: float) -> set[str]:
        """The users whose tokens died (password changed, disabled, deleted) at or after `since` (epoch seconds)."""
        return await self._catalog.revoked_since(since)

    async def _existing_user(self, user_id: str) -> User:
        return await self._catalog.get_user(user_id)

    def socket_opened(self) -> None:
        """Count a connected socket (the `playgate_sockets_connected` gauge)."""
        self._metrics.sockets.inc()

    def socket_closed(self) -> None:
        """Count a socket gone."""
        self._metrics.sockets.dec()

    async def _platform_user(self, claims: PlatformClaims) -> User:
        """The user a platform token names: created on first sight (no password), and its plan and own limit
        kept as the token's claims say (written only when they differ)."""
        try:
            user = await self._catalog.get_user(claims.user_id)
        except NotFound:
            user = None
        changes: dict[str, object] = {}
        if claims.plan is not None and (user is None or user.plan != claims.plan):
            changes["plan"] = claims.plan
        if claims.limit is not None and (user is None or user.own_limit != claims.limit):
            changes["limit"] = claims.limit
        if user is None or changes:
            try:
                await self._catalog.put(USERS, claims.user_id, changes)
            except Invalid as exc:
                if exc.extra.get("field") != "plan":
                    raise Unauthorized(f"The token's user cannot be stored: {exc.detail}") from None
                log.warning("platform token names an unknown plan %r: the user keeps its own", claims.plan)
                await self._catalog.put(USERS, claims.user_id, {k: v for k, v in changes.items() if k != "plan"})
            except Conflict as exc:
                raise Unauthorized(f"The token's user cannot be stored: {exc.detail}") from None
            user = await self._catalog.get_user(claims.user_id, fresh=True)
        if user.disabled:
            raise Unauthorized("This user is disabled.")
        return user

    def acting_user(self, principal: Principal, user_id: str | None) -> str:
        """The user a request acts for: the caller, or `user_id` when the caller may act for it (an admin, a
        `plays` key); an API key must name the user."""
        if user_id is None:
            if principal.user is None and principal.scope is not None:
                raise Invalid("An API key acts for a user: name it (userId).", field="userId")
            return principal.user_id
        if not principal.may_act_for(user_id):
            raise Forbidden("You may only act for yourself.")
        return user_id

    def viewed_user(self, principal: Principal, user_id: str | None) -> str:
        """The user a read is about: the caller, or `user_id` when the caller may see it."""
        if user_id is None:
            return self.acting_user(principal, None)
        if not principal.may_see(user_id):
            raise Forbidden("You may only see your own.")
        return user_id

    @property
    def sockets_per_user(self) -> int:
        """PLAYGATE_MAX_SOCKETS_PER_USER: most sockets of one user on this process (0: no cap)."""
        return self._settings.max_sockets_per_user

    def charge(self, user_id: str) -> None:
        """Count one play request or socket event of a user against PLAYGATE_USER_RATE (TooManyRequests beyond)."""
        self._user_rate.charge(user_id)

    # ---- plays -------------------------------------------------------------------------------------

    async def request_play(
        self,
        user_id: str,
        video_id: str,
        *,
        device_id: str | None = None,
        device_secret: str | None = None,
        device_name: str = "",
        idempotency_key: str | None = None,
        replace_stream_ids: Sequence[str] = (),
        replace_others: bool = False,
        wait_s: float = 0.0,
        client_address: str | None = None,
    ) -> PlayTicket:
        """Queue a play request (404 for an unknown user or video, 429 over the user's rate, before anything is
        queued).

        A request without a device id gets a new device of its own (a signed id, issued here, which the answer
        carries with its device secret); under PLAYGATE_DEVICE_IDS=issued a device id this server did not issue to
        the user, or one sent without its secret (copied from another installation), is refused.
        `replace_stream_ids` (or `replace_others`: all of them) are streams of the user that end in exchange, in
        the step that admits this request ("Watch here"), and only if it is admitted.
        The request carries what the rule needs of it: the video's kind tags, and whether `client_address` is
        away from the user's household networks.
        """
        self.charge(user_id)
        user = await self._catalog.get_user(user_id)
        kinds = await self._kinds(video_id)
        device = self._device(user.id, device_id, device_secret)
        away = is_away(client_address, user.household)
        request_id = owned_id(user.id)
        trace = tracing.joined(request_id) if self._traced else ""  # the worker's span joins the caller's trace

        def request(request_id: str) -> PlayRequest:
            return PlayRequest(
                request_id=request_id,
                user_id=user.id,
                video_id=video_id,
                device_id=device,
                accepted_at=self._clock(),
                replace_stream_ids=tuple(dict.fromkeys(replace_stream_ids)),
                replace_others=replace_others,
                device_name=device_name,
                replace_device_stream=self._settings.one_stream_per_device and device_id is not None,
                kinds=kinds,
                away=away,
                trace=trace,
            )

        if self._outage.decides_without_store():
            return self._told(await self._outage_play(request(request_id)), issued=device_id is None)
        try:
            await self._store_back()
            if idempotency_key is not None:
                asked = request_fingerprint(video_id, device_id, device_name, replace_stream_ids, replace_others)
                claim = await self._ledger.claim_key(user.id, idempotency_key, request_id, asked)
                if not claim.created:
                    # A key bound before keys covered the whole request holds its video alone.
                    if claim.fingerprint not in (asked, video_id):
                        raise Invalid(
                            "This Idempotency-Key was used for another request (another video, device, device name "
                            "or streams to replace); use a new key.",
                            field="Idempotency-Key",
                        )
                    return self._told(await self._replay(request(claim.request_id), wait_s), issued=device_id is None)
            ticket = await self._submit(request(request_id), wait_s)
        except Unavailable as exc:
            self._outage.store_down(exc)
            return self._told(await self._outage_play(request(request_id)), issued=device_id is None)
        await self._store_up()
        if ticket.decision is not None:
            self._outage.admitted(ticket.request, ticket.decision)
        return self._told(ticket, issued=device_id is None)

    def _told(self, ticket: PlayTicket, *, issued: bool) -> PlayTicket:
        """The ticket, marked when its device was issued for it (the device an idempotent retry's answer names: the
        first request's)."""
        return PlayTicket(ticket.request, ticket.decision, issued_device=True) if issued else ticket

    def device_secret(self, ticket: PlayTicket) -> str | None:
        """The secret of the device issued for the ticket's request, told only in that request's answer; None when
        the caller named its own device. Worked out here, when told: the seed route's answer names no device, and
        an HMAC a request would be spent on nothing."""
        if not ticket.issued_device:
            return None
        return self._devices.secret(ticket.request.user_id, ticket.device_id)

    async def _outage_play(self, request: PlayRequest) -> PlayTicket:
        """A new play while the ledger's store is down: refused (503) or decided here, by PLAYGATE_OUTAGE_POLICY.
        A decision is recorded (audit trail, webhooks) as the worker's are, with the streams it replaced, which are
        announced (once the fan-out answers)."""
        quota = (await self._catalog.quotas([request.user_id]))[request.user_id]
        outcome = self._outage.decide(request, 0 if quota.disabled else quota.limit, quota.rules.on_outage)
        decision = outcome.decision
        if self._audit is not None:
            # Distributed, the catalogue's database is not the store that is down: written now. Embedded, the
            # ledger records it in its transaction when the decision is written back (Ledger.keep, then stop).
            self._audit.record_outage([outcome])
        await self._tell(outcome.ended)
        self._metrics.labelled(self._metrics.decisions, decision.status.value, decision.why or "").inc()
        return PlayTicket(request, decision)

    async def _kinds(self, video_id: str) -> tuple[str, ...]:
        """The video's kind tags; NotFound for an unknown video unless PLAYGATE_UNKNOWN_VIDEOS allows it (no tags)."""
        try:
            return (await self._catalog.get_video(video_id)).kinds
        except NotFound:
            if self._settings.unknown_videos is UnknownVideos.deny:
                raise
            return ()

    def _device(self, user_id: str, device_id: str | None, device_secret: str | None) -> str:
        """The request's device id: a new one issued when none is named; under `issued`, one this server issued to
        the user, with its secret (an id seen in a listing and copied to another installation has none)."""
        if device_id is None:
            return self._devices.issue(user_id)
        if self._settings.device_ids is not DeviceIdMode.issued:
            return device_id
        if not self._devices.issued(user_id, device_id):
            raise Invalid(
                "This deviceId was not issued by this server to this user; send none to get one.", field="deviceId"
            )
        if not self._devices.proven(user_id, device_id, device_secret):
            raise Invalid(
                "This deviceId belongs to another installation: send the deviceSecret it was issued with, or send "
                "neither to get a device of your own.",
                field="deviceSecret",
            )
        return device_id

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
        # way round could miss it in between. The decision wins over a marker still there: the worker publishes
        # (waking `?wait=`) before it acknowledges, and a caller woken so must not read "pending" after "allowed".
        # A decision made here during an outage first: the store may not answer.
        found: PlayRequest | Decision | None = self._outage.decision(request_id)
        if found is None:
            pending = await self._queue.pending(request_id)
            found = await self._ledger.decision(request_id) or pending
        if found is None or not principal.may_see(found.user_id):
            raise NotFound(f"No play request {request_id!r}.")
        return found

    @property
    def lease_s(self) -> float:
        """Seconds a stream counts after its last sign of life (PLAYGATE_STREAM_TTL)."""
        return self._settings.stream_ttl_s

    async def conflicts(self, decision: Decision) -> list[Stream]:
        """The streams holding the limit that a denied decision ran into, as they are now; none for other
        decisions (the socket `message` carries them as they were at the decision)."""
        if decision.reason is not Reason.limit_reached:
            return []
        try:
            return await self._ledger.streams(decision.user_id)
        except Unavailable:
            if self._outage.since is None:
                raise
            return []  # a denial of the outage policy: the streams are not known now

    # ---- streams -----------------------------------------------------------------------------------

    async def streams(self, user_id: str) -> list[Stream]:
        """The user's active streams, oldest first (after an outage, once what it left is written back: the stops
        taken meanwhile are not listed)."""
        await self._store_back()
        return await self._ledger.streams(user_id)

    async def user_streams(self, user_id: str) -> list[Stream]:
        """Another user's active streams, oldest first; 404 for an unknown user."""
        await self._catalog.get_user(user_id)
        await self._store_back()
        return await self._ledger.streams(user_id)

    async def heartbeat(self, principal: Principal, stream_id: str, playback: PlaybackClaims | None = None) -> Stream:
        """Renew one of the caller's streams (anyone's for an admin or a `plays` key); 404 when it is no longer
        active. `playback`: the claims of the stream's playback token (checked by the caller), when the player
        sent it: while the ledger's store does not answer, the stream is honoured from them even on a process
        that never saw it (the token names its user, video, device and start)."""
        owner = principal.user.id if principal.user is not None else None
        if principal.stops_any:
            if playback is not None:
                owner = playback.user_id  # signed for this stream: no need to ask the store whose it is
            else:
                stream = await self._ledger.stream(stream_id)
                owner = stream.user_id if stream is not None else owner
        if owner is None:
            raise NotFound(f"Stream {stream_id!r} is not active.")
        return await self.renew(stream_id, owner, playback=playback if playback and playback.user_id == owner else None)

    async def renew(
        self, stream_id: str, user_id: str, *, slack: float = 0.0, playback: PlaybackClaims | None = None
    ) -> Stream:
        """Renew a stream of `user_id` (any heartbeat: HTTP, socket, media request); NotFound once it has ended,
        naming why (`reason`) when that is known.

        While the ledger's store does not answer, a stream this process knows (or whose playback token, sent with
        the media request or the heartbeat, gives its claims as `playback`: its video, device and start) is renewed
        here for up to PLAYGATE_OUTAGE_GRACE (the outage policy), and counted here from then on; beyond it, or for a
        stream unknown here without a token, Unavailable (503)."""
        if not self._outage.should_try_store():
            return self._honour(stream_id, user_id, playback, None)
        try:
            await self._store_back()
            stream = await self._renew_stored(stream_id, user_id, slack=slack)
        except Unavailable as exc:
            self._outage.store_down(exc)
            return self._honour(stream_id, user_id, playback, exc)
        except NotFound:
            self._outage.forget([stream_id])
            raise
        self._outage.remember([stream])
        await self._store_up()
        return stream

    def _honour(self, stream_id: str, user_id: str, playback: PlaybackClaims | None, exc: Unavailable | None) -> Stream:
        told = None
        if playback is not None and playback.stream_id == stream_id and playback.user_id == user_id:
            now = self._clock()
            started = now if playback.started_at is None else playback.started_at
            told = Stream(stream_id, user_id, playback.video_id, playback.device_id, started, now, away=playback.away)
        stream = self._outage.honour(stream_id, user_id, told)
        if stream is None:
            if self._outage.mode() is Mode.expired:
                raise Unavailable(
                    f"The stream ledger has been down longer than the outage grace ({self._outage.grace_s:g} s)."
                ) from exc
            raise exc or Unavailable(f"The stream ledger is down and stream {stream_id!r} is not known here.")
        self._metrics.outage_honoured.inc()
        return stream

    async def _store_back(self) -> None:
        """After an outage, before the first call that may find an expired lease: is the store back? (Unavailable
        if not); if so, write back what the outage left."""
        if self._outage.since is not None:
            await self._ledger.ping()
            await self._store_up()

    async def write_back_before_stopping(self) -> None:
        """The process is stopping: what an outage left in its memory (streams kept playing or admitted, decisions,
        stops) is written back now if the store answers (no call may have come since it did); if it does not, it is
        kept in a file of the data dir, which the next process started on it takes back (outage_taken_back)."""
        if self._writing_back is not None:  # a write-back under way: if it fails, its work is this process's again
            await self._writing_back.wait()
        if self._outage.since is None:
            return
        try:
            await self._store_back()
        except Unavailable as exc:
            self._keep_outage(str(exc))
            return
        if self._outage.since is not None:  # it answered, then failed the write-back
            self._keep_outage("the write-back failed")

    def _keep_outage(self, reason: str) -> None:
        """Keep what the outage under way left in the data dir (KeptOutages); only if that fails does an error line
        say what is lost with the process."""
        unwritten = self._outage.unwritten()
        assert unwritten is not None  # an outage is under way
        if unwritten[0].empty:  # a worker's, or nothing taken: no file
            return
        try:
            path = self._kept.keep(*unwritten)
        except OSError as exc:
            log.error(
                "stopping in an outage of the ledger store (%s), and what this process took during it cannot be "
                "kept in %s (%s): it is lost with the process (%s)",
                reason,
                self._kept.folder,
                exc,
                self._outage.held(),
            )
            return
        self._kept.release()  # what it took back at start is in the new file
        log.warning(
            "stopping in an outage of the ledger store (%s): what this process took during it (%s) is kept in %s; "
            "the next process started on this data dir writes it back",
            reason,
            self._outage.held(),
            path,
        )

    async def outage_taken_back(self) -> None:
        """At start: the work of outages that earlier processes on this data dir kept as they stopped with the
        store down (write_back_before_stopping) becomes this process's outage, written back now if the store
        answers, else once it does (or kept again at this process's stop). KeptOutages holds each file taken until
        then, so that no other process takes it too."""
        for path, work, since in self._kept.take(self._clock()):
            self._outage.resume(work)
            log.warning(
                "taken back from %s: an outage since %s left %d stream(s), %d decision(s) and %d stop(s) to write back",
                path,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
                len(work.streams),
                len(work.decisions),
                len(work.stopped),
            )
        if self._kept.held:
            try:
                await self._store_back()
            except Unavailable as exc:
                log.warning("the ledger store does not answer yet (%s): written back once it does", exc)

    @property
    def writes_back_taken(self) -> bool:
        """Whether work taken back at start is still to be written back (the worker holds its sweeps meanwhile)."""
        return self._kept.held

    async def _store_up(self) -> None:
        """The store answered: write back what an outage left (streams, decisions, stops), once."""
        work = self._outage.store_up()
        if work is None:
            return
        done = self._writing_back = asyncio.Event()  # a process stopping meanwhile waits for it (its outcome)
        try:
            await self._write_back(work)
        finally:
            done.set()
            self._writing_back = None

    async def _write_back(self, work: Reconciliation) -> None:
        try:
            restored = await self._ledger.restore(await self._with_kinds(work.streams))
            await self._ledger.keep(work.decisions)
            stops = 0
            for stream_id, stop in work.stopped.items():
                # Announced when the player stopped it (or a play under `allow` replaced it); recorded now, by a
                # ledger that records in its transaction (the embedded one), else by the audit trail's buffer then.
                stops += len(await self._stop_deferred(stream_id, stop))
        except Unavailable as exc:
            log.warning("outage reconciliation failed (%s): tried again when the store answers", exc)
            self._outage.store_down(exc)
            self._outage.carry(work)
            return
        self._kept.release()
        self._announce_late(work.unannounced)
        self._metrics.outage_reconciled.labels("streams").inc(restored)
        self._metrics.outage_reconciled.labels("decisions").inc(len(work.decisions))
        self._metrics.outage_reconciled.labels("stops").inc(stops)
        log.warning(
            "outage over: the ledger store answers again after %.1f s; normal mode; reconciled %d of %d streams "
            "restored, %d decisions kept, %d stops applied (users over their limit are held to it at their next "
            "heartbeat)",
            work.down_s,
            restored,
            len(work.streams),
            len(work.decisions),
            stops,
        )

    async def _with_kinds(self, streams: list[Stream]) -> list[Stream]:
        """The streams to write back, each without kind tags given its video's from the catalogue (a stream known
        from its playback token alone has none), so that the kind caps count it if the store lost it (a stream the
        store still holds keeps its own); without a catalogue answer, none."""
        kinds: dict[str, tuple[str, ...]] = {}
        for video_id in {s.video_id for s in streams if not s.kinds}:
            try:
                kinds[video_id] = await self._kinds(video_id)
            except (NotFound, Unavailable):
                kinds[video_id] = ()
        return [s if s.kinds else replace(s, kinds=kinds[s.video_id]) for s in streams]

    async def _stop_deferred(self, stream_id: str, stop: DeferredStop) -> list[Stream]:
        """Apply a stop the outage deferred, unless the stream was played again since: the store still held it, so
        a play of the same device and video was answered with the same stream, its lease renewed after the stop
        was taken (the lease then runs past the stop's instant plus a lease). Ending it would end that new play.
        The ledger checks and stops in one step: another process's play, decided as the store came back, races
        this write-back."""
        renewed_after = stop.at + self._settings.stream_ttl_s
        stopped = await self._ledger.stop(
            [stream_id], stop.user_id, reason=stop.reason, unless_renewed_after=renewed_after
        )
        if not stopped:
            log.info("stream %s ended, or played again, since its stop during the outage: not stopped", stream_id)
        return stopped

    def _announce_late(self, ended: Sequence[EndedStream]) -> None:
        """Announce the stream ends an outage kept from the sockets (they are recorded already), in the background
        LATE_ANNOUNCE_DELAY_S from now: the fan-out's listeners may not have subscribed again yet."""
        if not ended:
            return

        async def announce() -> None:
            await asyncio.sleep(LATE_ANNOUNCE_DELAY_S)
            try:
                await self._fanout.announce(ended)
            except Exception as exc:  # the fan-out's client raises its own errors; the ends stay in the audit trail
                log.warning("%d stream ends of the outage not announced: %s", len(ended), exc)

        task = asyncio.create_task(announce(), name="playgate-late-announcements")
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def _renew_stored(self, stream_id: str, user_id: str, *, slack: float = 0.0) -> Stream:
        """renew() on the ledger.

        A user disabled since, or now over a lowered limit or rule, is held to it here: all the streams of a
        disabled user end (`user_disabled`); a stream beyond the new total, kind, title, away or device cap ends
        (`limit_lowered`, or `outage_reconciled` for one admitted while the store was down), the rest keep
        playing.
        With `slack` (a fraction of the lease), a lease renewed less than that long ago is only checked, not
        written again: a player fetching many ranges a second costs one read each, and a write now and then.
        """
        streams = await self._ledger.streams(user_id)
        stream = next((s for s in streams if s.id == stream_id), None)
        if stream is None:
            raise await self._gone(user_id, stream_id)
        quota = (await self._catalog.quotas([user_id]))[user_id]
        if quota.disabled or not quota.exists:
            await self._end_all(user_id)
            raise NotFound(f"Stream {stream_id!r} has ended: the user is disabled.", reason=Reason.user_disabled.value)
        registered = None
        if quota.rules.max_devices is not None and len({s.device_id for s in streams}) > quota.rules.max_devices:
            # Read only when they may be too many. None registered: the cap is new, so every playing device counts.
            registered = {d.id for d in await self._ledger.devices(user_id)} or None
        broken = over_rules(streams, quota.limit, quota.rules, registered).get(stream.id)
        if broken is not None:
            why = Reason.outage_reconciled if admitted_in_outage(stream.id) else Reason.limit_lowered
            await self._announce(await self._ledger.stop([stream.id], user_id, reason=why), why)
            if broken.reason is Reason.limit_reached:
                raise NotFound(
                    f"Stream {stream_id!r} has ended: the user's limit is now {quota.limit}.", reason=why.value
                )
            raise NotFound(
                f"Stream {stream_id!r} has ended: the plan's rule {broken.text} was lowered below it.",
                reason=why.value,
            )
        lease_s = self._settings.stream_ttl_s
        if stream.expires_at - self._clock() > lease_s * (1.0 - slack):
            return stream
        renewed = await self._ledger.heartbeat(stream_id, user_id)
        if renewed is None:
            raise await self._gone(user_id, stream_id)
        return renewed

    async def _gone(self, user_id: str, stream_id: str) -> NotFound:
        """The NotFound of a stream that is no longer active, naming why it ended when the audit trail knows."""
        reason = await self.end_reason(user_id, stream_id)
        why = f" ({reason})" if reason is not None else ""
        return NotFound(f"Stream {stream_id!r} is not active{why}.", reason=reason)

    async def end_reason(self, user_id: str, stream_id: str) -> str | None:
        """Why a stream of `user_id` that is no longer active ended, as the audit trail knows it; None when it
        does not (yet), or the trail cannot be read now."""
        if self._audit is None:
            return None
        try:
            return await self._audit.end_reason(user_id, stream_id)
        except Unavailable as exc:
            log.warning("why stream %s ended is unknown: %s", stream_id, exc.detail)
            return None

    async def stop_stream(self, principal: Principal, stream_id: str) -> Stream:
        """Stop one stream: the caller's own (announced `stopped`, so that the device playing it, if another one,
        hears it at once), or anyone's for an admin (announced `stopped_by_admin`) or a `plays` key."""
        if principal.user is not None:
            # The common case, a player stopping its own stream: one ledger write, no lookup first.
            stopped, told = await self._stop_own(stream_id, principal.user.id)
            if stopped:
                await self._announce(stopped, Reason.stopped, told=told)
                return stopped[0]
        stream = await self._ledger.stream(stream_id) if principal.stops_any else None
        if stream is None:
            raise NotFound(f"Stream {stream_id!r} is not active.")
        # A `plays` key stops for the user, as the user's own player would: not announced, not recorded.
        by_admin = Reason.stopped_by_admin if principal.admin else None
        stopped = await self._ledger.stop([stream_id], stream.user_id, reason=by_admin)
        if not stopped:
            raise NotFound(f"Stream {stream_id!r} is not active.")
        if principal.admin:  # a `plays` key stops for the user, as the user's own player would: not announced
            await self._announce(stopped, Reason.stopped_by_admin)
        return stopped[0]

    async def _stop_own(self, stream_id: str, user_id: str) -> tuple[list[Stream], bool]:
        """Stop a stream of the user's; while the store is down, one this process knows (stopped in the store
        once it answers). True when the ledger announced it (Ledger.stop)."""
        try:
            stopped = await self._ledger.stop([stream_id], user_id, reason=Reason.stopped, announce=True)
        except Unavailable as exc:
            self._outage.store_down(exc)  # else, the first failed call of an outage, its stop is never written back
            known = self._outage.stopped(stream_id, user_id)
            if known is None:
                raise
            return [known], False
        self._outage.forget([stream_id])
        return stopped, self._ledger.announces_stops

    async def stop_streams(
        self, user_id: str, video_id: str | None = None, *, device_id: str | None = None
    ) -> list[Stream]:
        """Stop all of a user's streams (of one video, or of one device, if given), announced `stopped`: a device's
        log-out ends its own streams, "sign out of all devices" all of them (and those devices hear it at once)."""
        if device_id is None:
            stopped = await self._ledger.stop(None, user_id, video_id, reason=Reason.stopped, announce=True)
        else:
            own = [s.id for s in await self._ledger.streams(user_id) if s.device_id == device_id]
            stopped = await self._ledger.stop(own, user_id, video_id, reason=Reason.stopped, announce=True)
        await self._announce(stopped, Reason.stopped, told=self._ledger.announces_stops)
        return stopped

    # ---- devices, households, shadow denials --------------------------------------------------------

    async def devices(self, principal: Principal, user_id: str | None) -> list[Device]:
        """The registered devices of the caller (of `user_id`, for that user or an admin)."""
        return await self._ledger.devices(self._account(principal, user_id))

    async def forget_device(self, principal: Principal, device_id: str, user_id: str | None) -> None:
        """Remove a registered device, making room under the device cap; NotFound if it is not registered."""
        if not await self._ledger.forget_device(self._account(principal, user_id), device_id):
            raise NotFound(f"No registered device {device_id!r}.")

    async def user(self, principal: Principal, user_id: str | None) -> User:
        """The caller's user (`user_id`'s, for that user or an admin)."""
        return await self._catalog.get_user(self._account(principal, user_id), fresh=True)

    async def set_household(self, principal: Principal, networks: Sequence[str], user_id: str | None) -> User:
        """Set the household networks of the caller (of `user_id`, for an admin); applies to later requests."""
        account = self._account(principal, user_id)
        return await self._catalog.update_user(account, {"household": parse_networks(networks)})

    async def shadow_denials(self, principal: Principal, user_id: str | None) -> list[ShadowDenial]:
        """The latest would-be denials of the shadow policy: the caller's, a user's, or (admin, no user) all."""
        if user_id is None and principal.admin:
            return await self._catalog.shadow_denials(None)
        return await self._catalog.shadow_denials(self._account(principal, user_id))

    def _account(self, principal: Principal, user_id: str | None) -> str:
        """The account a call is about: the caller's own, or `user_id` if the caller may see it (else 404)."""
        if user_id is None:
            return principal.user_id
        if not principal.may_see(user_id):
            raise NotFound(f"No user with id {user_id!r}.")
        return user_id

    async def _announce(self, streams: Sequence[Stream], reason: Reason, *, told: bool = False) -> None:
        """Record the ends and tell the users' sockets (`told`: the ledger did, in its stop)."""
        ended = [EndedStream(s, reason) for s in streams]
        if ended:
            if self._audit is not None:
                if self._outage.since is not None:
                    self._audit.record_outage(ended=ended)  # the ledger records them when they are written back
                else:
                    self._audit.record_ended(ended)
            await self._tell(ended, told=told)

    async def _tell(self, ended: Sequence[EndedStream], *, told: bool = False) -> None:
        """Announce stream ends to their users' sockets (recorded already; `told`: announced already); while the
        store is down, once it answers."""
        if not ended:
            return
        self._outage.forget(e.stream.id for e in ended)
        if not told:
            if self._outage.since is None:
                await self._fanout.announce(ended)
            else:
                # The fan-out may run on the store that is down (Redis: its publisher gives up without raising):
                # announced once the store answers (the reconciliation).
                self._outage.unannounced(ended)
        for item in ended:
            self._metrics.labelled(self._metrics.streams_ended, item.reason.value).inc()

    async def _end_all(self, user_id: str) -> None:
        """End all of a disabled or deleted user's streams at once, and tell their players why."""
        await self._announce(await self._ledger.stop(None, user_id, reason=Reason.user_disabled), Reason.user_disabled)

    # ---- users (admin) -----------------------------------------------------------------------------

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> User:
        """Change a user; disabling one ends their streams at once (announced `user_disabled`)."""
        user = await self._catalog.update_user(user_id, dict(changes))
        if user.disabled:
            await self._end_all(user.id)
        return user

    async def put_user(self, user_id: str, values: Mapping[str, Any]) -> tuple[User, bool]:
        """Create or update a user by id (True when created); disabling one ends their streams at once."""
        created = await self._catalog.put(USERS, user_id, values)
        user = await self._catalog.get_user(user_id, fresh=True)
        if user.disabled:
            await self._end_all(user.id)
        return user, created

    async def import_rows(self, kind: KindName, data: bytes | str, fmt: Format) -> UpsertResult:
        """Create or update the rows of `data` (NDJSON, JSON array or CSV; at most imports.MAX_ROWS) by id; bad
        rows are refused with their reason, the others stored. Users it disables have their streams ended at once
        (announced `user_disabled`), as by update_user."""
        schema = imports.SCHEMAS[kind]
        if not data.strip():  # a file that was not sent (curl's -d @ of a missing path), not an import of nothing
            raise Invalid(f"body: empty; send the rows as {fmt}", field="body")
        try:
            # Parsing and checking 100,000 rows takes a while: off the event loop, so that plays go on meanwhile.
            parsed = await asyncio.to_thread(lambda: list(imports.check(schema, imports.records(data, fmt))))
        except (ValueError, UnicodeDecodeError) as exc:
            raise Invalid(f"body: not {fmt} ({exc})", field="body") from None
        if len(parsed) > imports.MAX_ROWS:
            raise TooLarge(f"At most {imports.MAX_ROWS} rows per import; this one has {len(parsed)}.")
        result = await imports.store(self._catalog, schema.kind, parsed)
        if schema.kind is USERS and result.revoked:
            disabled = [u.id for u in (await self._catalog.users(result.revoked)).values() if u.disabled]
            for start in range(0, len(disabled), ENDS_AT_ONCE):
                await asyncio.gather(*(self._end_all(user_id) for user_id in disabled[start : start + ENDS_AT_ONCE]))
        return result

    async def erase_history(self, user_id: str) -> dict[str, int]:
        """Erase what PlayGate keeps of a user's activity (a user deleted, or one who asks): the audit trail, shadow
        denials, webhook events and deliveries, registered devices. First, on a Redis ledger, wait until the
        change log holds nothing logged before now (the ends a delete just logged reach the trail, and are erased
        with it): Unavailable after ERASE_WAIT_S, nothing erased then. How many of each kind went."""
        started = self._clock()
        if isinstance(self._ledger, ChangeFeed):
            deadline = time.monotonic() + ERASE_WAIT_S
            while (oldest := await self._ledger.unrecorded_since()) is not None and oldest <= started:
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"The audit trail has not taken every change logged before this call within {ERASE_WAIT_S:g} "
                        "s; nothing was erased. Ask again."
                    )
                await asyncio.sleep(ERASE_POLL_S)
        devices = 0
        for device in await self._ledger.devices(user_id):
            devices += await self._ledger.forget_device(user_id, device.id)
        return {**await self._catalog.erase_history(user_id), "devices": devices}

    async def delete_user(self, user_id: str) -> None:
        """Delete a user; their streams end with them (announced `user_disabled`)."""
        await self._catalog.delete_user(user_id)
        await self._end_all(user_id)

    async def delete_video(self, video_id: str) -> None:
        """Remove a video from the catalogue and end every stream of it (announced `video_deleted`)."""
        await self._catalog.delete_video(video_id)
        ended = await self._ledger.stop_video(video_id, reason=Reason.video_deleted)
        await self._announce(ended, Reason.video_deleted)

    # ---- audit trail -------------------------------------------------------------------------------

    def _trail(self, principal: Principal, user_id: str) -> AuditTrail:
        if not principal.may_see(user_id):
            raise Forbidden("You may only see your own events.")
        if self._audit is None:
            raise Unavailable("This process keeps no audit trail.")
        return self._audit

    async def events(
        self,
        principal: Principal,
        user_id: str,
        *,
        since: float | None,
        until: float | None,
        cursor: str | None,
        limit: int,
    ) -> tuple[list[StoredEvent], str | None]:
        """A page of a user's audit trail (that user, or an admin), oldest first, and the next page's cursor."""
        trail = self._trail(principal, user_id)
        if cursor is not None and not cursor.isdigit():
            raise Invalid("Not a cursor of this trail; pass the nextCursor of the page before.", field="cursor")
        page = await trail.events(user_id, since=since, until=until, after_id=int(cursor or 0), limit=limit)
        return page, str(page[-1].id) if len(page) == limit else None

    def export_events(
        self, principal: Principal, user_id: str, *, since: float | None, until: float | None
    ) -> AsyncIterator[StoredEvent]:
        """Every event of a user within the range (that user, or an admin), a page at a time."""
        return self._trail(principal, user_id).export(user_id, since=since, until=until)

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
        failed = next((state for name, state in checks.items() if name != "catalog" and state != "ok"), None)
        if failed is not None:
            self._outage.store_down(Unavailable(failed))
        elif checks["catalog"] == "ok":
            await self._store_up()
        mode = self._outage.mode()
        readiness = Readiness(checks, self._outage.describe(), in_grace=mode is Mode.grace)
        self._metrics.ready.set(1 if readiness.ok else 0)
        return readiness

    async def metrics_page(self) -> tuple[bytes, str]:
        """This process's metrics in Prometheus text format, the queue gauges refreshed first; and its type."""
        try:
            await observe_queue(self._queue, self._metrics)
        except Unavailable as exc:
            # An outage is when the page matters most: the queue gauges keep their last values.
            log.warning("queue gauges not refreshed: %s", exc)
        return self._metrics.render(), self._metrics.content_type
