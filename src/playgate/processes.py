"""A process group on one machine (`playgate serve --processes N`): one owner process and N member processes.

The owner (the process `playgate serve` runs in) migrates the database, holds the request queue, the worker (the
one writer of decisions to the SQLite ledger) and the sweeper, and owns the listening socket. Members serve HTTP
and Socket.IO; each reaches the owner over its own Unix socket pair (bus.hub) and gets the connections the owner
accepts over another, as file descriptors (SCM_RIGHTS).

Engine.IO sessions stay on one process: a member's session ids start with its index and a dot (`1.Ab3…`). The
owner peeks at the request line of each connection it accepts (MSG_PEEK: the member reads the request whole) and
hands a connection whose `/socket.io/` request names a session to the member that holds it; any other connection
goes to a member chosen at random. So a polling session's later requests, and its upgrade to a websocket, reach the
process that opened it, on a new connection or a kept-alive one that the session opened. A kept-alive connection
that first carried another session's requests (a browser's shared pool) stays where it is: a request of another
process's session on it gets Engine.IO's "unknown session" answer, and the client connects again.

A member that dies is started again (its sockets' clients reconnect; requests it had queued are decided all the
same, by the owner). Members exit when the owner goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import uvicorn

from playgate.bus.hub import Hub, MemberLink, Relay
from playgate.bus.local import QUEUE_KEEP_FILE, LocalQueue
from playgate.config import Settings
from playgate.errors import ConfigError
from playgate.metrics import Metrics
from playgate.runtime import Role, Runtime, probe_server

log = logging.getLogger("playgate.processes")

SESSION_MARK = "."
SOCKET_PREFIX = "/socket.io/"
# How much of a new connection's first bytes the owner reads to find its session, and how long it waits for them
# before handing the connection on anyway (the member's header timeout deals with a slow client).
PEEK_BYTES = 2048
PEEK_TIMEOUT_S = 2.0
PEEK_PAUSE_S = 0.005
# A member that exits is started again, after this pause when it lived less than that.
RESTART_PAUSE_S = 1.0
# How long a connection waits for a ready member (while every member is restarting).
READY_WAIT_S = 30.0
# At start-up the owner accepts once every member is ready (or after this long, with those that are).
GROUP_START_S = 120.0
# How long members get to finish their requests and close their sockets when the group stops.
MEMBER_STOP_S = 20.0
LISTEN_BACKLOG = 2048
ACCEPT_PAUSE_S = 0.1


def session_ids(index: int, generate: Callable[[], str]) -> Callable[[], str]:
    """Engine.IO's id generator, with the member's index in front: the owner routes the session's requests by it."""

    def generate_id() -> str:
        return f"{index}{SESSION_MARK}{generate()}"

    return generate_id


def member_of_session(sid: str) -> int | None:
    """The index of the member holding an Engine.IO session, from its id."""
    prefix, mark, _ = sid.partition(SESSION_MARK)
    return int(prefix) if mark and prefix.isdigit() else None


def member_of_request(head: bytes) -> int | None:
    """The member a connection belongs to, from the first bytes of its first request: the one holding the
    Engine.IO session its `/socket.io/` request names; None for any other request (or a partial line)."""
    line = head.partition(b"\r\n")[0]
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    target = parts[1].decode("latin-1")
    url = urlsplit(target)
    if not url.path.startswith(SOCKET_PREFIX):
        return None
    sid = parse_qs(url.query).get("sid")
    return member_of_session(sid[0]) if sid else None


async def _until_ready(fd: int, *, write: bool, timeout_s: float) -> bool:
    """Wait until `fd` can be read (or written); False after timeout_s."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await asyncio.wait_for(ready, max(0.0, timeout_s))
        return True
    except TimeoutError:
        return False
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def peek_head(conn: socket.socket, timeout_s: float = PEEK_TIMEOUT_S) -> bytes:
    """The first bytes a client sent, left in the socket for the member to read; b"" if none came in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if not await _until_ready(conn.fileno(), write=False, timeout_s=deadline - loop.time()):
            return b""
        try:
            head = conn.recv(PEEK_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        except OSError:
            return b""
        if not head or b"\n" in head or len(head) >= PEEK_BYTES or loop.time() >= deadline:
            return head
        await asyncio.sleep(PEEK_PAUSE_S)  # part of a line: the rest comes soon; no busy loop meanwhile


async def send_connection(channel: socket.socket, conn: socket.socket, timeout_s: float) -> None:
    """Pass `conn` to the process at the other end of `channel` (one byte carrying its descriptor)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            socket.send_fds(channel, [b"c"], [conn.fileno()])
            return
        except BlockingIOError:
            if not await _until_ready(channel.fileno(), write=True, timeout_s=deadline - loop.time()):
                raise TimeoutError("the member takes no connections") from None


def listening_socket(host: str, port: int) -> socket.socket:
    """The group's listening socket; ConfigError naming PLAYGATE_PORT when it cannot be bound."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise ConfigError(f"PLAYGATE_PORT: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


@dataclass
class _Slot:
    """One member's place in the group: its process and the owner's end of its connection channel."""

    index: int
    process: asyncio.subprocess.Process | None = None
    connections: socket.socket | None = None


@dataclass
class ProcessGroup:
    """The owner's side: starts the members (and again when one exits), accepts connections and hands them on."""

    settings: Settings
    size: int
    hub: Hub
    slots: list[_Slot] = field(default_factory=list)
    _chance: random.Random = field(default_factory=random.Random)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.slots = [_Slot(i) for i in range(self.size)]

    def member_argv(self, index: int, link_fd: int, connections_fd: int) -> list[str]:
        """The command of a member process."""
        return [
            sys.executable, "-m", "playgate", "member",
            "--index", str(index), "--link-fd", str(link_fd), "--connections-fd", str(connections_fd),
        ]  # fmt: skip

    def member_env(self) -> dict[str, str]:
        """A member's environment: the owner's, with the host and port it was told on the command line."""
        env = dict(os.environ)
        env["PLAYGATE_HOST"] = self.settings.host
        env["PLAYGATE_PORT"] = str(self.settings.port)
        env.pop("PORT", None)
        return env

    async def _start(self, slot: _Slot) -> asyncio.subprocess.Process:
        link_owner, link_member = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        conns_owner, conns_member = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fds = (link_member.fileno(), conns_member.fileno())
            process = await asyncio.create_subprocess_exec(
                *self.member_argv(slot.index, *fds), pass_fds=fds, env=self.member_env()
            )
        except BaseException:
            link_owner.close()
            conns_owner.close()
            raise
        finally:
            link_member.close()
            conns_member.close()
        conns_owner.setblocking(False)
        slot.process, slot.connections = process, conns_owner
        await self.hub.attach(slot.index, link_owner)
        log.info("member %d started (pid %d)", slot.index, process.pid)
        return process

    async def keep(self, slot: _Slot, stop: asyncio.Event) -> None:
        """Run one member; start it again whenever it exits, until the group stops."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started_at = loop.time()
            try:
                process = await self._start(slot)
            except OSError as exc:
                log.error("member %d could not be started (%s); trying again", slot.index, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RESTART_PAUSE_S)
                continue
            code = await process.wait()
            await self.hub.detach(slot.index)
            if slot.connections is not None:
                slot.connections.close()
                slot.connections = None
            if stop.is_set():
                return
            log.error("member %d (pid %d) exited with status %s; starting it again", slot.index, process.pid, code)
            if loop.time() - started_at < RESTART_PAUSE_S:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RESTART_PAUSE_S)

    async def accept(self, listener: socket.socket) -> None:
        """Accept connections for ever, each handed to its member by its own task."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors (EMFILE), a reset before accept: go on after a pause
                log.error("accepting a connection failed: %s", exc)
                await asyncio.sleep(ACCEPT_PAUSE_S)
                continue
            task = asyncio.create_task(self._hand_on(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _hand_on(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            wanted = member_of_request(await peek_head(conn))
            refused: list[socket.socket] = []
            while (slot := await self._member_for(wanted, refused)) is not None and slot.connections is not None:
                try:
                    await send_connection(slot.connections, conn, READY_WAIT_S)
                    return
                except ConnectionError as exc:
                    # The member died and the hub has not seen its link close yet: another member takes it.
                    log.warning("member %d takes no connection (%s): handing it to another", slot.index, exc)
                    refused.append(slot.connections)
            log.warning("no member takes connections: one closed")
        except (OSError, TimeoutError) as exc:
            log.warning("a connection could not be handed to a member: %s", exc)
        finally:
            conn.close()  # the member holds its own descriptor of the connection

    async def _member_for(self, wanted: int | None, refused: Collection[socket.socket] = ()) -> _Slot | None:
        """The member holding the session, if it is ready; else a ready one at random (waiting for one); never a
        member whose channel is one of `refused` (it died: one started again in its place has a new channel)."""
        deadline = time.monotonic() + READY_WAIT_S
        while True:
            ready = [index for index in self.hub.ready() if self.slots[index].connections not in refused]
            if wanted is not None and wanted in ready:
                return self.slots[wanted]
            if ready:
                # At random, not in turn: a client that opens two connections at a time (a login, then its
                # socket) would otherwise get all its sockets on one member.
                return self.slots[self._chance.choice(ready)]
            if not await self._next_change(deadline):
                return None

    async def all_ready(self, timeout_s: float) -> bool:
        """Wait until every member takes connections; False after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while len(self.hub.ready()) < self.size:
            if not await self._next_change(deadline):
                return False
        return True

    async def _next_change(self, deadline: float) -> bool:
        """Wait for a member to become ready or leave (looking again at least every second); False once the
        monotonic `deadline` has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.hub.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.hub.changed.wait(), min(remaining, 1.0))
        return True

    async def stop_members(self) -> None:
        """SIGTERM every member (they finish their requests and close their sockets); SIGKILL after MEMBER_STOP_S."""
        running = [s.process for s in self.slots if s.process is not None and s.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), MEMBER_STOP_S)
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    log.error("member pid %d did not stop in %.0f s: killed", process.pid, MEMBER_STOP_S)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(p.wait() for p in running))


async def run_group(settings: Settings, secret: str, *, clock: Callable[[], float] = time.time) -> None:
    """The owner of `playgate serve --processes N`: until SIGTERM or SIGINT, then members first, the worker (which
    decides all that is queued) last."""
    listener = listening_socket(settings.host, settings.port)
    hub = Hub(LocalQueue(settings.data_dir / QUEUE_KEEP_FILE))
    try:
        runtime = await Runtime.start(
            settings,
            emitter=Relay(hub.broadcast),
            metrics=Metrics(),
            clock=clock,
            role=Role.owner,
            secret=secret,
            group=hub,
        )
    except BaseException:
        listener.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    group = ProcessGroup(settings, settings.processes, hub)
    keepers = [asyncio.create_task(group.keep(s, stop), name=f"playgate-member-{s.index}") for s in group.slots]
    acceptor: asyncio.Task[None] | None = None
    started = asyncio.create_task(group.all_ready(GROUP_START_S))
    probes = probe_server(settings, runtime)  # the decisions' metrics are the owner's
    try:
        if probes is not None:
            await probes.start()
        await asyncio.wait([started, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            if not started.result():
                log.error("not every member is ready after %.0f s: serving with %s", GROUP_START_S, group.hub.ready())
            acceptor = asyncio.create_task(group.accept(listener), name="playgate-accept")
            log.info(
                "PlayGate serving on http://%s:%d with %d processes (owner pid %d)",
                settings.host,
                settings.port,
                settings.processes,
                os.getpid(),
            )
            await stop.wait()
    finally:
        started.cancel()
        if acceptor is not None:
            acceptor.cancel()
        listener.close()
        await group.stop_members()
        await asyncio.gather(*keepers, return_exceptions=True)
        if probes is not None:
            await probes.stop()
        await runtime.stop()
        await hub.close()
        log.info("PlayGate stopped")


class MemberServer(uvicorn.Server):
    """uvicorn in a member: no listening socket of its own; it serves the connections the owner hands over."""

    def __init__(self, config: uvicorn.Config, connections: socket.socket, link: MemberLink) -> None:
        super().__init__(config)
        self._connections = connections
        self._link = link

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start the app (lifespan), then take connections and tell the owner so."""
        await super().startup(sockets=[])
        if self.should_exit:
            return
        config = self.config
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            made: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )
            return made

        self._connections.setblocking(False)
        loop.add_reader(self._connections.fileno(), self._take, protocol)
        self._link.on_lost = self._owner_lost
        self._link.send(["ready"])

    def _take(self, protocol: Callable[[], asyncio.Protocol]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._connections, 1, 1)
            except BlockingIOError:
                return
            if not data:
                self._owner_lost()
                return
            for fd in fds:
                conn = socket.socket(fileno=fd)
                conn.setblocking(False)
                task = asyncio.ensure_future(loop.connect_accepted_socket(protocol, conn))
                task.add_done_callback(_log_failed_connection)

    def _owner_lost(self) -> None:
        if not self.should_exit:
            log.error("the owner process went away: this member stops")
        self.should_exit = True
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._connections.fileno())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Take no more connections, then uvicorn's graceful shutdown."""
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._connections.fileno())
        await super().shutdown(sockets=sockets)


def _log_failed_connection(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a handed-over connection could not be served: %s", task.exception())
