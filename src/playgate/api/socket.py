"""The Socket.IO side: token checked at connect, one room per user, and a `heartbeat` event with an ack."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import socketio

from playgate.api.errors import error_fields
from playgate.api.legacy_socketio import LegacyAwareServer
from playgate.api.schemas import MAX_STREAM_ID_LEN, iso
from playgate.bus.protocol import SocketJson, user_room
from playgate.domain import ID_PATTERN
from playgate.errors import Invalid, PlayGateError, TooManyRequests
from playgate.service import PlayGate

log = logging.getLogger("playgate.socket")

# What a stream id looks like (the `StreamId` of the HTTP routes): checked before anything is looked up.
STREAM_ID = re.compile(ID_PATTERN)


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


class SocketsPerUser:
    """Each user's sockets on this process, held to PLAYGATE_MAX_SOCKETS_PER_USER."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def take(self, user_id: str, cap: int) -> None:
        """Count one more socket of the user; refuse the connection (status 429) when the cap is reached."""
        if cap and self._open[user_id] >= cap:
            raise socketio.exceptions.ConnectionRefusedError(
                {"message": f"This user has {cap} sockets open here already; close one first.", "status": 429}
            )
        self._open[user_id] += 1

    def give_back(self, user_id: str | None) -> None:
        """A socket of the user closed."""
        if user_id is None or user_id not in self._open:
            return
        self._open[user_id] -= 1
        if self._open[user_id] <= 0:
            del self._open[user_id]


def register(sio: socketio.AsyncServer, gate: Callable[[], PlayGate]) -> None:
    """Attach PlayGate's handlers to `sio`; `gate` returns the service once the app has started."""
    sockets = SocketsPerUser()

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token, claimed_user = _token(environ, auth)
        try:
            principal = await gate().principal(token, claimed_user)
        except PlayGateError as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.detail) from None
        if principal.user is None:
            raise socketio.exceptions.ConnectionRefusedError("Name the user: auth {user} or ?user=.")
        sockets.take(principal.user.id, gate().sockets_per_user)
        # The handshake's environ is kept for the socket's whole life; its body reader (a class that engineio's
        # ASGI driver makes per request, about 2.5 KB) is never read again: let it go.
        environ.pop("wsgi.input", None)
        await sio.save_session(sid, {"user_id": principal.user.id, "admin": principal.admin})
        await sio.enter_room(sid, user_room(principal.user.id))
        gate().socket_opened()

    @sio.event  # type: ignore[untyped-decorator]
    async def disconnect(sid: str, *_args: Any) -> None:
        gate().socket_closed()
        sockets.give_back((await sio.get_session(sid)).get("user_id"))

    @sio.on("heartbeat")  # type: ignore[untyped-decorator]
    async def heartbeat(sid: str, data: Any = None) -> dict[str, Any]:
        session = await sio.get_session(sid)
        ack = await heartbeat_ack(gate(), session["user_id"], data)
        if ack.get("status") == TooManyRequests.status:
            # Told twice: in the ack, and as an `error` event for a client that sent without asking for one.
            await sio.emit("error", ack, to=sid)
        return ack


async def heartbeat_ack(gate: PlayGate, user_id: str | None, data: Any) -> dict[str, Any]:
    """The `heartbeat` event of a v4 or v2 socket: renew a stream's lease, `{"streamId"}` → ack
    `{"streamId", "expiresAt"}`, or the problem fields `{"type", "title", "status", "detail"}` (and `field`) as
    HTTP answers them."""
    stream_id = data.get("streamId") if isinstance(data, dict) else None
    try:
        if user_id is None:
            raise Invalid("This socket named no user (?user=): it has no streams.", field="user")
        gate.charge(user_id)
        if not isinstance(stream_id, str) or len(stream_id) > MAX_STREAM_ID_LEN or not STREAM_ID.fullmatch(stream_id):
            # Checked like the HTTP routes' stream ids, and never echoed: a 100 KB id gets a short answer.
            raise Invalid('Send {"streamId": "<a stream id>"}.', field="streamId")
        stream = await gate.renew(stream_id, user_id)
    except PlayGateError as exc:
        return error_fields(exc)
    return {"streamId": stream.id, "expiresAt": iso(stream.expires_at)}


# What a Socket.IO v2 socket may emit (api/legacy_socketio.py): event name → its ack, from the socket's user.
V2_EVENTS: dict[str, Callable[[PlayGate, str | None, Any], Awaitable[Any]]] = {"heartbeat": heartbeat_ack}
