"""LeanManager: an emit to a room reaches the same sockets with the same packets as python-socketio's own manager,
and one socket's failure does not keep it from the others."""

from __future__ import annotations

from typing import Any

import pytest
import socketio

from playgate.api.app import client_manager
from playgate.api.socket import create_server
from playgate.bus.local import LeanManager
from playgate.config import load_settings
from tests.support.servers import JWT_SECRET


async def _server(manager: Any, failing: str | None = None) -> tuple[socketio.AsyncServer, list[tuple[str, str]]]:
    """A server whose engine.io sends are recorded (eio sid, encoded packet); sockets eio0..eio3 in rooms a, a, b,
    and none."""
    sio = create_server(client_manager=manager)
    sent: list[tuple[str, str]] = []

    async def send_packet(eio_sid: str, pkt: Any) -> None:
        if eio_sid == failing:
            raise RuntimeError("this socket's send failed")
        sent.append((eio_sid, pkt.encode()))

    sio.eio.send_packet = send_packet
    sio.manager.set_server(sio)
    sio.manager.initialize()
    for n, room in enumerate(("a", "a", "b", None)):
        sid = await sio.manager.connect(f"eio{n}", "/")
        if room is not None:
            await sio.manager.enter_room(sid, "/", room)
    return sio, sent


@pytest.mark.parametrize(
    ("data", "room", "skip"),
    [
        ({"status": "allowed", "requestId": "r1"}, "a", False),
        ({"status": "allowed"}, "b", False),
        (("two", "arguments"), "a", False),
        (None, "a", False),
        ({"x": 1}, ["a", "b"], False),
        ({"x": 1}, "a", True),
        ({"x": 1}, "nobody", False),
        ({"x": 1}, None, False),
        ({"blob": b"\x00\x01", "nested": [b"\x02"]}, "a", False),
    ],
)
async def test_an_emit_sends_what_python_socketios_manager_sends(data: Any, room: Any, skip: bool) -> None:
    outcomes = []
    for manager in (LeanManager(), None):
        sio, sent = await _server(manager)
        skip_sid = sio.manager.sid_from_eio_sid("eio0", "/") if skip else None
        await sio.emit("message", data, room=room, skip_sid=skip_sid)
        outcomes.append(sorted(sent, key=repr))  # binary attachments are bytes beside the text packets
    lean, theirs = outcomes
    assert lean == theirs


async def test_one_sockets_failure_does_not_keep_the_event_from_the_others() -> None:
    sio, sent = await _server(LeanManager(), failing="eio0")
    await sio.emit("message", {"status": "allowed"}, room="a")
    assert sent == [("eio1", '42["message",{"status":"allowed"}]')]


def test_the_embedded_deployment_emits_through_the_lean_manager() -> None:
    settings = load_settings({"PLAYGATE_JWT_SECRET": JWT_SECRET})
    assert isinstance(client_manager(settings, None), LeanManager)
