"""The Socket.IO side: token checked at connect, one room per user, and a `heartbeat` event with an ack."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import socketio

from playgate.api.errors import error_fields
from playgate.api.legacy_socketio import LegacyAwareServer
from playgate.bus.protocol import SocketJson, user_room
from playgate.domain import ID_PATTERN
from playgate.errors import Invalid, PlayGateError, TooManyRequests
from playgate.media import ContentGate
from playgate.service import PlayGate
from playgate.wire import MAX_STREAM_ID_LEN, iso

log = logging.getLogger("playgate.socket")

# What a stream id looks like (the `StreamId` of the HTTP routes): checked before anything is looked up.
STREAM_ID = re.compile(ID_PATTERN)
# Far longer than a playback token (about 250 characters): a bigger one is refused before it is parsed.
MAX_PLAYBACK_TOKEN_LEN = 2048
REVOKED = "This session has ended (user deleted or disabled, or password changed); log in again."
# The sockets' sweep asks about the users whose tokens died in the last LOOKBACK_S (Catalog.revoked_since: a few
# rows) and, once every FULL_CHECK_S, about every connected user. The look-back covers what a socket may open with
# after its user's tokens died (an epoch cached for PLAYGATE_CACHE_TTL), the sweep interval, and another process's
# clock being off; the full check, anything a note could still miss (a clock further off). Asking about every
# connected user every sweep took 17 to 30 ms of the database thread each second at 5,000 sockets (timed awaits).
LOOKBACK_S = 60.0
FULL_CHECK_S = 60.0


def create_server(cors_origins: str | list[str] | None = None, client_manager: Any = None) -> LegacyAwareServer:
    """An ASGI Socket.IO server (that Socket.IO v2 sessions can join: api/legacy_socketio.py); same-origin
    browsers only unless origins (or "*") are given."""
    return LegacyAwareServer(
        async_mode="asgi", json=SocketJson, cors_allowed_origins=cors_origins, client_manager=client_manager
    )


def _token(environ: dict[str, Any], auth: Any) -> tuple[str | None, str | None]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    token = user = None
    if isinstance(auth, dict):
        token = auth.get("token") if isinstance(auth.get("token"), str) else None
        user = auth.get("user") if isinstance(auth.get("user"), str) else None
    token = token or (query.get("token") or [None])[0]
    user = user or (query.get("user") or [None])[0]
    return token, user


class SocketRegistry:
    """This process's sockets by user, each with the token epoch it was opened under: held to
    PLAYGATE_MAX_SOCKETS_PER_USER, and closed when their user is deleted, disabled or changes password."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._open: dict[str, dict[str, int]] = {}  # user id -> {sid: token epoch}
        self._revoked_before: set[str] = set()  # sockets found revoked by the previous pass
        self._clock = clock
        self._checked_all_at: float | None = None  # when every connected user was last asked about

    def take(self, user_id: str, sid: str, epoch: int, cap: int) -> None:
        """Count one more socket of the user; refuse the connection (status 429) when the cap is reached."""
        sids = self._open.setdefault(user_id, {})
        if cap and len(sids) >= cap:
            raise socketio.exceptions.ConnectionRefusedError(
                {"message": f"This user has {cap} sockets open here already; close one first.", "status": 429}
            )
        sids[sid] = epoch

    def give_back(self, user_id: str | None, sid: str) -> None:
        """A socket of the user closed."""
        if user_id is None or user_id not in self._open:
            return
        sids = self._open[user_id]
        sids.pop(sid, None)
        if not sids:
            del self._open[user_id]

    async def revoked(self, gate: PlayGate) -> list[str]:
        """The sockets whose user was deleted or disabled, or whose token epoch has moved on since they opened:
        of every connected user once a FULL_CHECK_S, else of those whose tokens died in the last LOOKBACK_S."""
        now = self._clock()
        everyone = self._checked_all_at is None or now - self._checked_all_at >= FULL_CHECK_S
        if everyone:
            users = list(self._open)
        else:
            users = [user_id for user_id in await gate.revoked_since(now - LOOKBACK_S) if user_id in self._open]
        epochs = await gate.token_epochs(users) if users else {}
        if everyone:
            self._checked_all_at = now
        return [
            sid
            for user_id in users
            for sid, epoch in list(self._open.get(user_id, {}).items())
            if epochs.get(user_id) != epoch
        ]

    async def close_revoked(self, sio: socketio.AsyncServer, gate: PlayGate) -> int:
        """Tell each revoked socket why (event `error`, status 401), then close it; how many were closed.

        A socket is closed on the second pass that finds it revoked, not the first: what the change itself
        announces (disabling a user ends their streams, `stream_ended`) reaches the socket before it closes.
        """
        found = set(await self.revoked(gate))
        revoked, self._revoked_before = found & self._revoked_before, found - self._revoked_before
        for sid in revoked:
            await sio.emit("error", {"error": REVOKED, "status": 401}, to=sid)
            await sio.disconnect(sid)
        return len(revoked)

    async def watch(self, sio: socketio.AsyncServer, gate: Callable[[], PlayGate], interval_s: float) -> None:
        """Every interval_s, close the revoked sockets (until cancelled); a catalogue outage only delays it."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                closed = await self.close_revoked(sio, gate())
            except PlayGateError as exc:
                log.warning("could not check the sockets' tokens: %s", exc.detail)
                continue
            if closed:
                log.info("closed %d socket(s) whose token was revoked", closed)


def register(
    sio: socketio.AsyncServer, gate: Callable[[], PlayGate], content: Callable[[], ContentGate] | None = None
) -> SocketRegistry:
    """Attach PlayGate's handlers to `sio`; `gate` returns the service once the app has started, `content` its
    content gate (the heartbeat ack carries a fresh playback URL and token, as the HTTP heartbeat answer does, and
    the heartbeat's playback token is checked there). The registry returned is to be watched
    (SocketRegistry.watch) while the app runs."""
    sockets = SocketRegistry()

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token, claimed_user = _token(environ, auth)
        try:
            principal = await gate().principal(token, claimed_user)
        except PlayGateError as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.detail) from None
        if principal.user is None:
            raise socketio.exceptions.ConnectionRefusedError("Name the user: auth {user} or ?user=.")
        sockets.take(principal.user.id, sid, principal.user.token_epoch, gate().sockets_per_user)
        # The handshake's environ is kept for the socket's whole life; its body reader (a class that engineio's
        # ASGI driver makes per request, about 2.5 KB) is never read again: let it go.
        environ.pop("wsgi.input", None)
        await sio.save_session(sid, {"user_id": principal.user.id, "admin": principal.admin})
        await sio.enter_room(sid, user_room(principal.user.id))
        gate().socket_opened()

    @sio.event  # type: ignore[untyped-decorator]
    async def disconnect(sid: str, *_args: Any) -> None:
        gate().socket_closed()
        sockets.give_back((await sio.get_session(sid)).get("user_id"), sid)

    @sio.on("heartbeat")  # type: ignore[untyped-decorator]
    async def heartbeat(sid: str, data: Any = None, *_more: Any) -> dict[str, Any]:
        # `_more`: arguments past the first are ignored (python-socketio hands every one of the event's over).
        session = await sio.get_session(sid)
        ack = await heartbeat_ack(gate(), session["user_id"], data, content)
        if ack.get("status") == TooManyRequests.status:
            # Told twice: in the ack, and as an `error` event for a client that sent without asking for one.
            await sio.emit("error", ack, to=sid)
        return ack

    return sockets


async def heartbeat_ack(
    gate: PlayGate, user_id: str | None, data: Any, content: Callable[[], ContentGate] | None = None
) -> dict[str, Any]:
    """The `heartbeat` event of a v4 or v2 socket: renew a stream's lease, `{"streamId", "playbackToken"?}` → ack
    `{"streamId", "expiresAt", "playbackUrl", "playbackToken"}` (a fresh playback URL and token when `content` is
    given: with edge signing, how a playing client gets a link that outlives the one it has), or the problem
    fields `{"type", "title", "status", "detail"}` (and `field`) as HTTP answers them. The stream's playback token,
    if sent, lets a process that never saw the stream honour it while the ledger's store does not answer (the
    outage policy)."""
    stream_id = data.get("streamId") if isinstance(data, dict) else None
    token = data.get("playbackToken") if isinstance(data, dict) else None
    try:
        if user_id is None:
            raise Invalid("This socket named no user (?user=): it has no streams.", field="user")
        gate.charge(user_id)
        if not isinstance(stream_id, str) or len(stream_id) > MAX_STREAM_ID_LEN or not STREAM_ID.fullmatch(stream_id):
            # Checked like the HTTP routes' stream ids, and never echoed: a 100 KB id gets a short answer.
            raise Invalid('Send {"streamId": "<a stream id>"}.', field="streamId")
        if token is not None and (not isinstance(token, str) or len(token) > MAX_PLAYBACK_TOKEN_LEN):
            raise Invalid("playbackToken: the stream's playback token, a string.", field="playbackToken")
        if token is not None and content is None:
            raise Invalid("This socket takes no playback token.", field="playbackToken")
        claims = content().heartbeat_claims(token, stream_id, user_id, field="playbackToken") if content else None
        stream = await gate.renew(stream_id, user_id, playback=claims)
    except PlayGateError as exc:
        return error_fields(exc)
    ack = {"streamId": stream.id, "expiresAt": iso(stream.expires_at)}
    if content is not None:
        playback = content().playback_for(stream)
        ack["playbackUrl"], ack["playbackToken"] = playback.url, playback.token
    return ack


# What a Socket.IO v2 socket may emit (api/legacy_socketio.py): event name → its ack, from the socket's user.
V2_EVENTS: dict[str, Callable[[PlayGate, str | None, Any], Awaitable[Any]]] = {"heartbeat": heartbeat_ack}
