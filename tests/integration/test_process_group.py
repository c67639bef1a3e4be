"""`playgate serve --processes 2` for real: sockets on both member processes get their users' decisions, a
limit holds under concurrent requests spread over both, polling sessions (Engine.IO 4 and 3) stay on their
process, and a member killed with SIGKILL is started again while the other carries on."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import socketio

from playgate.processes import member_of_session
from tests.integration.test_cli import playgate
from tests.integration.test_policies import request_caps_hold
from tests.support.clients import SocketClient, api_client, new_user, token_for
from tests.support.servers import (
    ADMIN_PASSWORD,
    ServerProcess,
    free_port,
    start_playgate,
    wait_until_ready,
)

# Two members and an owner start on a shared, loaded machine: give them time (the module's first test and the
# restart test include a start of the group or of a member).
GROUP_START_S = 180.0
MAX_SOCKETS = 24
pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One process group for the module: an owner (its probes on PLAYGATE_METRICS_PORT) and two members."""
    folder = Path(tmp_path_factory.mktemp("group"))
    server = start_playgate(
        folder, "serve", "--processes", "2", wait_ready=False, PLAYGATE_METRICS_PORT=str(free_port())
    )
    wait_until_ready(server, GROUP_START_S)
    yield server
    assert server.stop(timeout_s=60) == 0, server.log()


def members(owner_pid: int) -> list[int]:
    """The pids of the owner's member processes (`playgate member ...`; not other children, such as the ffmpeg
    that makes the demo media at start-up)."""
    children = Path(f"/proc/{owner_pid}/task/{owner_pid}/children").read_text().split()
    return sorted(int(pid) for pid in children if _is_member(int(pid)))


def _is_member(pid: int) -> bool:
    try:
        return b"member" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:  # it exited meanwhile
        return False


async def admin_of(base_url: str) -> httpx.AsyncClient:
    return api_client(base_url, await token_for(base_url, "admin", ADMIN_PASSWORD))


async def socket_of(base_url: str, token: str, transports: list[str]) -> tuple[SocketClient, int]:
    """A connected socket and the index of the member holding it (from its Engine.IO session id)."""
    sio = socketio.AsyncClient(reconnection=False)
    client = SocketClient(sio)
    sio.on("message", client.messages.put)
    sio.on("stream_ended", client.ended.put)
    await sio.connect(base_url, auth={"token": token}, transports=transports, wait_timeout=10)
    index = member_of_session(sio.eio.sid)
    assert index in (0, 1), sio.eio.sid
    return client, index


async def sockets_on_both(base_url: str, admin: httpx.AsyncClient, transports: list[str]) -> list[tuple]:
    """Users with one socket each, opened until both members hold some: (user, socket, member index)."""
    opened = []
    for _ in range(MAX_SOCKETS):
        user = await new_user(base_url, admin, limit=1)
        sock, index = await socket_of(base_url, user.token, transports)
        opened.append((user, sock, index))
        if {i for *_, i in opened} == {0, 1}:
            return opened
    raise AssertionError(f"{MAX_SOCKETS} sockets all landed on one member")


async def each_gets_its_decision(base_url: str, opened: list[tuple]) -> None:
    """Each user asks to play (over a new connection each, so the requests land on both members too); its own
    socket gets its decision, and no socket gets another user's."""
    asked = {}
    for user, _sock, _index in opened:
        async with api_client(base_url, user.token) as client:
            response = await client.post("/v1/plays", json={"videoId": "1"})
        assert response.status_code == 202, response.text
        asked[user.id] = response.json()["requestId"]
    for user, sock, _index in opened:
        message = await sock.next_message(timeout_s=10)
        assert (message["requestId"], message["status"]) == (asked[user.id], "allowed")
        assert message["data"]["userId"] == user.id
    await asyncio.sleep(0.3)
    assert all(sock.messages.empty() for _, sock, _ in opened), "one decision each, to its own user only"


async def close_all(opened: list[tuple]) -> None:
    for _user, sock, _index in opened:
        await sock.close()


async def test_decisions_reach_sockets_on_either_member(group: ServerProcess) -> None:
    assert len(members(group.proc.pid)) == 2
    admin = await admin_of(group.base_url)
    opened = await sockets_on_both(group.base_url, admin, ["websocket"])
    try:
        await each_gets_its_decision(group.base_url, opened)
    finally:
        await close_all(opened)
        await admin.aclose()


async def test_one_users_sockets_on_both_members_get_its_decision_and_its_stop(group: ServerProcess) -> None:
    """A stop served by one member is announced (`stream_ended`) through the owner to the sockets on both."""
    admin = await admin_of(group.base_url)
    user = await new_user(group.base_url, admin)
    await admin.aclose()
    held: dict[int, SocketClient] = {}
    extra: list[SocketClient] = []
    try:
        for _ in range(MAX_SOCKETS):
            sock, index = await socket_of(group.base_url, user.token, ["websocket"])
            if index in held:
                extra.append(sock)
            else:
                held[index] = sock
            if len(held) == 2:
                break
        assert set(held) == {0, 1}, f"{MAX_SOCKETS} sockets of one user all on one member"
        async with api_client(group.base_url, user.token) as client:
            decided = (await client.post("/v1/plays", params={"wait": 10}, json={"videoId": "4"})).json()
        assert decided["status"] == "allowed", decided
        for sock in held.values():
            assert (await sock.next_message(timeout_s=10))["requestId"] == decided["requestId"]
        async with api_client(group.base_url, user.token) as client:
            assert (await client.delete(f"/v1/streams/{decided['streamId']}")).status_code == 204
        for sock in held.values():
            ended = await sock.next_ended(timeout_s=10)
            assert (ended["streamId"], ended["reason"]) == (decided["streamId"], "stopped")
    finally:
        for sock in [*held.values(), *extra]:
            await sock.close()


async def test_a_users_socket_opened_again_gets_its_later_decisions_on_whichever_member(group: ServerProcess) -> None:
    """The owner sends a user's decisions only to the members holding its sockets: one that closed its last
    socket of the user stops getting them; a socket opened after (on either member) gets each later one, once;
    `?wait=` callers get theirs on any member."""
    admin = await admin_of(group.base_url)
    user = await new_user(group.base_url, admin, limit=10)
    await admin.aclose()
    for video in ("1", "4", "1", "4"):  # four rounds: the sockets land on both members in most runs
        sock, _index = await socket_of(group.base_url, user.token, ["websocket"])
        try:
            async with api_client(group.base_url, user.token) as client:
                waited = await client.post("/v1/plays", params={"wait": 10}, json={"videoId": video})
                asked = await client.post("/v1/plays", json={"videoId": video})
            assert waited.status_code == 200, waited.text
            assert asked.status_code == 202, asked.text
            got = [(await sock.next_message(timeout_s=10))["requestId"] for _ in range(2)]
            assert got == [waited.json()["requestId"], asked.json()["requestId"]]
        finally:
            await sock.close()


@pytest.mark.parametrize("transports", [["polling"], ["polling", "websocket"]])
async def test_polling_sessions_stay_on_their_member(group: ServerProcess, transports: list[str]) -> None:
    admin = await admin_of(group.base_url)
    opened = await sockets_on_both(group.base_url, admin, transports)
    try:
        await each_gets_its_decision(group.base_url, opened)
        for _user, sock, index in opened:
            assert sock.sio.connected
            assert member_of_session(sock.sio.eio.sid) == index
    finally:
        await close_all(opened)
        await admin.aclose()


async def test_engineio3_polling_sessions_stay_on_their_member(group: ServerProcess) -> None:
    """The original clients' protocol (`?EIO=3`): after the handshake, each poll on a new connection is answered by
    the session's own member (another member would answer 400, unknown session)."""
    admin = await admin_of(group.base_url)
    try:
        user = await new_user(group.base_url, admin)
    finally:
        await admin.aclose()
    seen = set()
    for _ in range(MAX_SOCKETS):
        async with httpx.AsyncClient(base_url=group.base_url, timeout=10) as client:
            query = {"EIO": "3", "transport": "polling", "token": user.token}
            opened = await client.get("/socket.io/", params=query)
        assert opened.status_code == 200, opened.text
        sid = opened.text[opened.text.index('"sid":"') + 7 :].split('"', 1)[0]
        for _ in range(2):
            async with httpx.AsyncClient(base_url=group.base_url, timeout=10) as client:
                sent = await client.post(
                    "/socket.io/", params={"EIO": "3", "transport": "polling", "sid": sid}, content="1:2"
                )
            assert sent.status_code == 200, sent.text
        seen.add(member_of_session(sid))
        if seen == {0, 1}:
            return
    raise AssertionError(f"{MAX_SOCKETS} EIO=3 sessions all on one member")


async def test_a_limit_holds_under_concurrent_requests_on_both_members(group: ServerProcess) -> None:
    admin = await admin_of(group.base_url)
    try:
        user = await new_user(group.base_url, admin, limit=2)
    finally:
        await admin.aclose()

    async def ask(device: int) -> dict:
        async with api_client(group.base_url, user.token) as client:  # a connection each: both members serve
            response = await client.post(
                "/v1/plays", params={"wait": 10}, json={"videoId": "2", "deviceId": f"d{device}"}
            )
        assert response.status_code == 200, response.text
        return response.json()

    answers = await asyncio.gather(*(ask(i) for i in range(24)))
    assert len({a["requestId"] for a in answers}) == 24
    assert sum(a["status"] == "allowed" for a in answers) == 2
    async with api_client(group.base_url, user.token) as client:
        streams = (await client.get("/v1/streams")).json()
    assert len(streams) == 2


async def test_kind_and_household_caps_hold_when_the_owner_decides(group: ServerProcess) -> None:
    """A member hands the request to the owner's worker with the video's kinds and the client's network."""
    await request_caps_hold(group.base_url, group.base_url)


async def test_the_owner_exports_the_decisions_metrics(group: ServerProcess) -> None:
    """The owner decides, so its probe server (PLAYGATE_METRICS_PORT) counts the decisions the members asked for."""
    admin = await admin_of(group.base_url)
    try:
        user = await new_user(group.base_url, admin)
    finally:
        await admin.aclose()
    async with api_client(group.base_url, user.token) as client:
        played = await client.post("/v1/plays", params={"wait": 10}, json={"videoId": "3"})
    assert played.json()["status"] == "allowed", played.text
    port = group.env["PLAYGATE_METRICS_PORT"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert (await client.get("/readyz")).status_code == 200
        metrics = (await client.get("/metrics")).text
    lines = metrics.splitlines()
    allowed = [line for line in lines if line.startswith("playgate_decisions_total{") and "allowed" in line]
    assert allowed, metrics[:3000]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in allowed) >= 1, allowed


async def test_a_killed_member_is_started_again_and_the_other_carries_on(group: ServerProcess) -> None:
    admin = await admin_of(group.base_url)
    opened = await sockets_on_both(group.base_url, admin, ["websocket"])
    before = members(group.proc.pid)
    victim_index = opened[-1][2]
    victim_pid = next(pid for pid in before if _member_index(pid) == victim_index)
    os.kill(victim_pid, signal.SIGKILL)
    survivors = [o for o in opened if o[2] != victim_index]
    deadline = time.monotonic() + GROUP_START_S
    try:
        # Until the owner has reaped it, the victim may still hold its end of the connection channel (a killed
        # process's other threads close its descriptors after its main thread shows as a zombie), so a connection
        # handed to it then is lost with it (httpx.ReadError), as a crash loses what the member held. The owner
        # starts a new member once it has reaped the old one; the test's requests come after that.
        while len(set(members(group.proc.pid)) - set(before)) < 1:
            assert time.monotonic() < deadline, "the killed member was not started again"
            await asyncio.sleep(0.2)
        await each_gets_its_decision(group.base_url, survivors)
        await close_all(survivors)
        survivors = await until_both_take_sockets(group.base_url, admin, deadline)
        await each_gets_its_decision(group.base_url, survivors)
    finally:
        await close_all(survivors)
        await admin.aclose()


async def until_both_take_sockets(base_url: str, admin: httpx.AsyncClient, deadline: float) -> list[tuple]:
    """Sockets on both members, once the restarted one takes connections (it starts in seconds)."""
    while True:
        try:
            return await sockets_on_both(base_url, admin, ["websocket"])
        except AssertionError:
            assert time.monotonic() < deadline, "the restarted member never took a connection"
            await asyncio.sleep(1.0)


def _member_index(pid: int) -> int:
    """A member's index, from its command line (`playgate member --index N ...`)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"--index") + 1])


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"PLAYGATE_PROCESSES": "0"}, "PLAYGATE_PROCESSES"),
        ({"PLAYGATE_PROCESSES": "many"}, "PLAYGATE_PROCESSES"),
        ({"PLAYGATE_PROCESSES": "2", "PLAYGATE_REDIS_URL": "redis://127.0.0.1:1/0"}, "playgate api"),
    ],
)
def test_a_bad_process_count_stops_start_up_naming_it(tmp_path: Path, env: dict[str, str], says: str) -> None:
    done = playgate(tmp_path, "serve", **env)
    assert done.returncode == 1
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
