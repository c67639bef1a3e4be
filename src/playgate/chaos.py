"""`playgate chaos`: a distributed PlayGate on loopback, viewers looping request -> decision -> stop, faults
injected one after another (kill -9 of a worker and of an API, a Redis restart, a frozen Redis, the database cut
through a local TCP proxy), then every request id audited: over-limit samples, undecided, lost, changed answers.

The deployment is a throwaway redis-server (append-only file on, as deployed), a fresh PostgreSQL database on the
local server (created and dropped here) reached through the proxy, 2 `playgate api` and 2 `playgate worker`
processes, started with playgate.bench.target. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg

from playgate.bench.target import Account, BenchError, ServerProcess, Target

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
USER_LIMIT = 1
VIEWERS_PER_USER = 2  # two devices of one user compete for its one slot: denials are part of the load
PLAY_S = 0.3
WAIT_S = 3.0
HTTP_TIMEOUT_S = 15.0
SAMPLE_EVERY_S = 0.5
SETTLE_S = 30.0
AUDIT_SETTLE_S = 2.0  # the audit trail records an event within about a second
PAUSE_AFTER_ERROR_S = 0.2
PAUSE_AFTER_DENIAL_S = 0.1  # a denied player shows the denial before its user asks again
MAX_REQUESTS_PER_VIEWER = 100_000
FAULT_DOWN_S = 2.0
LOAD_AFTER_LAST_FAULT_S = 5.0  # the load goes on this long after the last fault, at least
VIDEOS = ("1", "2", "3")


@dataclass
class Asked:
    """One accepted play request: its first answer, and what the audit found."""

    request_id: str
    user: str
    first: str  # allowed | denied | pending
    stream_id: str | None
    final: str | None = None


@dataclass
class LostStream:
    """An allowed stream its viewer's first stop found gone (404): whose, and when (seconds into the run)."""

    stream_id: str
    request_id: str
    account: Account
    at_s: float


@dataclass
class FaultResult:
    """One injected fault: when (seconds into the run), for how long, and what the load saw until the next one."""

    name: str
    at_s: float
    down_s: float
    failed: int = 0  # requests answered 5xx or cut off, from the fault to the next one
    recovered_s: float | None = None  # from the end of the fault to the next decision answered


@dataclass
class Report:
    """What a chaos run found; the invariants are the four counts that must be zero."""

    duration_s: float
    viewers: int
    requests: int = 0
    accepted: int = 0
    allowed: int = 0
    denied: int = 0
    refused_5xx: int = 0
    cut_off: int = 0
    over_limit_samples: int = 0
    samples: int = 0
    undecided: int = 0
    lost: int = 0
    changed: int = 0
    stops_unconfirmed: int = 0
    faults: list[FaultResult] = field(default_factory=list)
    # What each LOST count was, to look for in the processes' logs: "stream <id> (request <id>): 404 at its stop,
    # <s> s into the run; audit trail: <its events, each with its second of the run>" or "request <id>: unknown at
    # the audit".
    lost_detail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no user was seen over the limit and every request was decided, kept and unchanged."""
        return self.over_limit_samples == self.undecided == self.lost == self.changed == 0

    def as_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        return {**asdict(self), "ok": self.ok}

    def table(self) -> str:
        """The report as text tables: the faults, then the totals and the invariants."""
        lines = [
            f"{'fault':<22} {'at s':>6} {'down s':>7} {'failed':>7} {'recovered s':>12}",
        ]
        for f in self.faults:
            recovered = f"{f.recovered_s:.2f}" if f.recovered_s is not None else "-"
            lines.append(f"{f.name:<22} {f.at_s:>6.1f} {f.down_s:>7.1f} {f.failed:>7} {recovered:>12}")
        lines.append("")
        rows = [
            ("viewers", self.viewers),
            ("requests sent", self.requests),
            ("accepted (request id)", self.accepted),
            ("allowed / denied", f"{self.allowed} / {self.denied}"),
            ("refused 5xx / cut off", f"{self.refused_5xx} / {self.cut_off}"),
            ("stops unconfirmed", self.stops_unconfirmed),
            ("limit samples", self.samples),
            ("OVER-LIMIT samples", self.over_limit_samples),
            ("UNDECIDED", self.undecided),
            ("LOST", self.lost),
            ("CHANGED answers", self.changed),
        ]
        lines += [f"{name:<24} {value}" for name, value in rows]
        lines += [f"  lost: {detail}" for detail in self.lost_detail]
        lines.append(f"{'verdict':<24} {'ok' if self.ok else 'FAILED'}")
        return "\n".join(lines)


class TcpProxy:
    """A TCP proxy on a free loopback port to host:port, which can cut every connection and refuse new ones."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.cut = False
        self.port = 0

    async def start(self) -> None:
        """Listen on 127.0.0.1, a free port (`port`)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            for w in (writer, up_writer):
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()

    def cut_all(self) -> None:
        """Drop every open connection and refuse new ones until `restore`."""
        self.cut = True
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        """Accept connections again."""
        self.cut = False

    async def close(self) -> None:
        """Stop listening and drop what is open."""
        self.cut_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database on the local server (its name), dropped afterwards."""
    name = f"playgate_chaos_{secrets.token_hex(5)}"
    try:
        admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"no PostgreSQL on {PG_HOST}:{PG_PORT} for user {PG_USER}: {exc}") from exc
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class Run:
    """One chaos run over a started deployment: the viewers, the sampler, the faults and the audit."""

    def __init__(self, target: Target, proxy: TcpProxy, accounts: list[Account], duration_s: float) -> None:
        self.target = target
        self.proxy = proxy
        self.accounts = accounts
        self.duration_s = duration_s
        self.report = Report(duration_s=duration_s, viewers=len(accounts) * VIEWERS_PER_USER)
        self.asked: dict[str, Asked] = {}
        self.decided_at: list[float] = []  # monotonic times of decisions answered
        self.failed_at: list[float] = []
        self.fault_ends: list[float] = []
        self.started = time.monotonic()
        self.started_wall = time.time()  # the audit trail's times are wall-clock
        self.lost_streams: list[LostStream] = []
        self.end = self.started + duration_s
        self.stopping = False

    def _urls(self) -> list[str]:
        return list(self.target.base_urls)

    async def viewer(self, http: aiohttp.ClientSession, account: Account, device: str) -> None:
        """Ask, wait for the decision, watch for PLAY_S, stop; again until the end of the run."""
        headers = {"Authorization": f"Bearer {account.token}"}
        for _ in range(MAX_REQUESTS_PER_VIEWER):
            if self.stopping:
                return
            url = random.choice(self._urls())
            body = {"videoId": random.choice(VIDEOS), "deviceId": device}
            self.report.requests += 1
            try:
                async with http.post(f"{url}/v1/plays?wait={WAIT_S}", json=body, headers=headers) as answer:
                    status, payload = answer.status, await answer.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await self._failed(cut=True)
                continue
            if status >= 500:
                await self._failed(cut=False)
                continue
            if status not in (200, 202):
                raise BenchError(f"POST /v1/plays answered {status}: {payload}")
            self._accepted(account, payload)
            if payload["status"] == "allowed":
                await asyncio.sleep(PLAY_S)
                await self._stop(http, account, payload["streamId"], payload["requestId"])
            else:
                await asyncio.sleep(PAUSE_AFTER_DENIAL_S)

    async def _failed(self, *, cut: bool) -> None:
        if cut:
            self.report.cut_off += 1
        else:
            self.report.refused_5xx += 1
        self.failed_at.append(time.monotonic())
        await asyncio.sleep(PAUSE_AFTER_ERROR_S)

    def _accepted(self, account: Account, payload: dict[str, Any]) -> None:
        asked = Asked(payload["requestId"], account.user_id, payload["status"], payload.get("streamId"))
        self.asked[asked.request_id] = asked
        self.report.accepted += 1
        if asked.first != "pending":
            self.decided_at.append(time.monotonic())

    async def _stop(self, http: aiohttp.ClientSession, account: Account, stream_id: str, request_id: str) -> None:
        """DELETE the stream, retried on another API after a 5xx or a cut; a 404 on the first try means the
        ledger lost an allowed stream (after a retry, the first try may have stopped it)."""
        headers = {"Authorization": f"Bearer {account.token}"}
        for attempt in range(20):
            url = random.choice(self._urls())
            try:
                async with http.delete(f"{url}/v1/streams/{stream_id}", headers=headers) as answer:
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            if status == 204:
                return
            if status == 404:
                if attempt == 0:
                    self.report.lost += 1
                    at_s = time.monotonic() - self.started
                    self.lost_streams.append(LostStream(stream_id, request_id, account, at_s))
                else:
                    self.report.stops_unconfirmed += 1
                return
            self.failed_at.append(time.monotonic())
            await asyncio.sleep(PAUSE_AFTER_ERROR_S)
        self.report.stops_unconfirmed += 1

    async def sampler(self, http: aiohttp.ClientSession) -> None:
        """Every SAMPLE_EVERY_S, each user's active streams as the ledger lists them, against the limit."""
        while not self.stopping:
            for account in self.accounts:
                url = random.choice(self._urls())
                headers = {"Authorization": f"Bearer {account.token}"}
                try:
                    async with http.get(f"{url}/v1/streams", headers=headers) as answer:
                        if answer.status != 200:
                            continue
                        streams = await answer.json()
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    continue
                self.report.samples += 1
                if len(streams) > USER_LIMIT:
                    self.report.over_limit_samples += 1
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def faults(self) -> None:
        """The standard scenario, spread over the run."""
        steps: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("kill -9 worker", lambda: self._kill_and_restart("worker")),
            ("kill -9 api", lambda: self._kill_and_restart("api")),
            ("restart redis", self._restart_redis),
            ("freeze redis", self._freeze_redis),
            ("cut database", self._cut_database),
        ]
        for index, (name, inject) in enumerate(steps):
            at = self.started + self.duration_s * (0.1 + 0.75 * index / len(steps))
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            began = time.monotonic()
            down_s = await inject()
            self.report.faults.append(FaultResult(name, round(began - self.started, 2), round(down_s, 2)))
            self.fault_ends.append(began + down_s)

    async def timekeeper(self) -> None:
        """The faults, then the load goes on until the end of the run and at least LOAD_AFTER_LAST_FAULT_S more
        (a start-up on a busy machine may push the last faults past the planned end)."""
        await self.faults()
        await asyncio.sleep(max(LOAD_AFTER_LAST_FAULT_S, self.end - time.monotonic()))
        self.stopping = True

    def _process(self, role: str) -> ServerProcess:
        return next(p for p in self.target.processes if p.role == role)

    async def _kill_and_restart(self, role: str) -> float:
        process = self._process(role)
        if role == "api":
            self.target.base_urls.remove(f"http://127.0.0.1:{process.port}")  # the load balancer takes it out
        return await self._stop_and_restart(process, signal.SIGKILL, wait_s=10)

    async def _restart_redis(self) -> float:
        # SIGTERM: it writes its append-only file and exits.
        return await self._stop_and_restart(self._process("redis"), signal.SIGTERM, wait_s=20)

    async def _stop_and_restart(self, process: ServerProcess, stop: signal.Signals, wait_s: float) -> float:
        """Send `stop`, wait for the exit, start the process again; the seconds it took."""
        assert process.popen is not None
        began = time.monotonic()
        process.popen.send_signal(stop)
        await asyncio.to_thread(process.popen.wait, wait_s)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.target.restart, process)
        return time.monotonic() - began

    async def _freeze_redis(self) -> float:
        process = self._process("redis")
        os.kill(process.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(FAULT_DOWN_S)
        finally:
            os.kill(process.pid, signal.SIGCONT)
        return FAULT_DOWN_S

    async def _cut_database(self) -> float:
        self.proxy.cut_all()
        try:
            await asyncio.sleep(FAULT_DOWN_S)
        finally:
            self.proxy.restore()
        return FAULT_DOWN_S

    async def audit(self, http: aiohttp.ClientSession) -> None:
        """Every accepted request id asked again until decided (SETTLE_S at most): undecided, lost (unknown) and
        changed (another status or stream than first answered) counted."""
        pending = dict(self.asked)
        deadline = time.monotonic() + SETTLE_S
        while pending and time.monotonic() < deadline:
            for request_id, asked in list(pending.items()):
                account = next(a for a in self.accounts if a.user_id == asked.user)
                try:
                    async with http.get(
                        f"{random.choice(self._urls())}/v1/plays/{request_id}",
                        headers={"Authorization": f"Bearer {account.token}"},
                    ) as answer:
                        status, payload = answer.status, await answer.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    continue
                if status == 404:
                    asked.final = "unknown"
                elif status == 200 and payload["status"] != "pending":
                    asked.final = payload["status"]
                    if asked.first != "pending" and (
                        asked.first != payload["status"] or asked.stream_id != payload.get("streamId")
                    ):
                        self.report.changed += 1
                else:
                    continue
                del pending[request_id]
            if pending:
                await asyncio.sleep(0.5)
        self.report.undecided = len(pending)
        if self.lost_streams:
            await asyncio.sleep(AUDIT_SETTLE_S)
        for lost in self.lost_streams:
            self.report.lost_detail.append(
                f"stream {lost.stream_id} (request {lost.request_id}): 404 at its stop, {lost.at_s:.1f} s into the "
                f"run; audit trail: {await self._recorded(http, lost)}"
            )
        unknown = [a.request_id for a in self.asked.values() if a.final == "unknown"]
        self.report.lost += len(unknown)
        self.report.lost_detail += [f"request {request_id}: unknown at the audit" for request_id in unknown]
        self.report.allowed = sum(a.final == "allowed" for a in self.asked.values())
        self.report.denied = sum(a.final == "denied" for a in self.asked.values())

    async def _recorded(self, http: aiohttp.ClientSession, lost: LostStream) -> str:
        """What the audit trail recorded of a lost stream: each decision that named it and its ends (why), with
        their seconds into the run, to tell a stream the ledger dropped from one that something ended first."""
        url = f"{random.choice(self._urls())}/v1/users/{lost.account.user_id}/events?format=ndjson"
        try:
            async with http.get(url, headers={"Authorization": f"Bearer {lost.account.token}"}) as answer:
                if answer.status != 200:
                    return f"not read ({answer.status})"
                lines = (await answer.read()).splitlines()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"not read ({type(exc).__name__})"
        seen = []
        for line in lines:
            event = json.loads(line)
            if event["streamId"] == lost.stream_id:
                at_s = datetime.fromisoformat(event["at"]).timestamp() - self.started_wall
                of = f" of request {event['requestId']}" if event["requestId"] else ""
                seen.append(f"{event['kind']} {event['outcome']}{of} at {at_s:.2f} s")
        return ", ".join(seen) or "nothing of it"

    def score_faults(self) -> None:
        """Each fault's failed requests (until the next fault) and recovery time (its end to the next decision)."""
        starts = [self.started + f.at_s for f in self.report.faults] + [float("inf")]
        self.decided_at.sort()
        for f, start, after, ended in zip(self.report.faults, starts, starts[1:], self.fault_ends, strict=False):
            f.failed = sum(start <= t < after for t in self.failed_at)
            nxt = next((t for t in self.decided_at if t >= ended), None)
            f.recovered_s = round(nxt - ended, 3) if nxt is not None else None

    async def run(self) -> Report:
        """Load, sampler and faults at once until the end; then the audit."""
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            tasks = [
                self.viewer(http, account, f"device-{n}") for account in self.accounts for n in range(VIEWERS_PER_USER)
            ]
            await asyncio.gather(*tasks, self.sampler(http), self.timekeeper())
            await self.audit(http)
        self.score_faults()
        return self.report


async def chaos(duration_s: float, users: int) -> Report:
    """Start the deployment, run the standard scenario for `duration_s`, audit it, stop everything."""
    async with database() as name:
        proxy = TcpProxy(PG_HOST, PG_PORT)
        await proxy.start()
        target: Target | None = None
        try:
            target = await asyncio.to_thread(
                Target.distributed,
                apis=2,
                workers=2,
                database_url=f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{proxy.port}/{name}",
                settings={"PLAYGATE_CLAIM_IDLE": "4"},
                redis_aof=True,
            )
            accounts = await target.accounts_for([f"viewer{i}" for i in range(users)], limit=USER_LIMIT)
            return await Run(target, proxy, accounts, duration_s).run()
        finally:
            if target is not None:
                for process in target.processes:
                    if process.role == "redis":
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(process.pid, signal.SIGCONT)
                await asyncio.to_thread(target.stop)
            await proxy.close()
