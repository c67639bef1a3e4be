"""The PlayGate under test: one the benchmark starts on a throwaway data dir (embedded, or distributed on a
throwaway redis-server), optionally pinned to CPUs, or one that is already running."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from playgate.bench.keyset import IdentityProvider, new_key
from playgate.connections import REDIS_SERVER_ARGS
from playgate.errors import PlayGateError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# Limit of the users the benchmark makes: high enough that a closed loop is never denied for lack of room.
BENCH_USER_LIMIT = 1000
SETUP_CONCURRENCY = 8
HTTP_TIMEOUT_S = 30.0
WORKERS_JOIN_TIMEOUT_S = 10.0


class BenchError(PlayGateError):
    """The benchmark could not set up or run (server did not start, login refused, ...)."""


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (sockets are files); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def parse_cpus(text: str | None) -> set[int] | None:
    """`"0"`, `"0,1"` or `"2-3"` as a set of CPU numbers (None for None)."""
    if text is None:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_command(port: int, data_dir: str | None = None) -> list[str]:
    """The argv of a throwaway redis-server on 127.0.0.1:port that keeps nothing, configured as PlayGate asks
    (connections.REDIS_SERVER_ARGS, as deploy/ does); BenchError if not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server), or give --redis-url")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *REDIS_SERVER_ARGS]
    return [*argv, "--dir", data_dir] if data_dir else argv


@dataclass
class Account:
    """A user of the benchmark and its bearer token."""

    user_id: str
    token: str


@dataclass
class ServerProcess:
    """One process of the deployment under test: its role (serve, api, worker, redis) and pid."""

    role: str
    pid: int
    popen: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    port: int | None = None
    argv: list[str] = field(default_factory=list)


@dataclass
class Target:
    """Where the load goes: the API URLs, and the server processes when they run on this machine."""

    base_urls: list[str]
    deployment: str
    processes: list[ServerProcess] = field(default_factory=list)
    admin_password: str | None = None
    data_dir: tempfile.TemporaryDirectory[str] | None = None
    accounts: dict[str, Account] = field(default_factory=dict)
    # The servers the bench starts trust this key set: users sign in with its tokens, no password hashed.
    idp: IdentityProvider | None = None
    _env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """The first API's URL (where users are made)."""
        return self.base_urls[0]

    @property
    def server_pid(self) -> int | None:
        """The pid of the first API (or serve) process, if known."""
        return next((p.pid for p in self.processes if p.role in ("serve", "api")), None)

    @classmethod
    def embedded(cls, *, server_cpus: frozenset[int] | None = None) -> Target:
        """Start `playgate serve` on a free port with a throwaway data dir, and wait until it is ready."""
        target = cls._fresh("embedded")
        try:
            target._start_playgate("serve", server_cpus)
        except BaseException:
            target.stop()
            raise
        return target

    @classmethod
    def distributed(
        cls,
        *,
        apis: int,
        workers: int,
        server_cpus: frozenset[int] | None = None,
        redis_url: str | None = None,
        database_url: str | None = None,
        settings: dict[str, str] | None = None,
        redis_aof: bool = False,
    ) -> Target:
        """Start `apis` x `playgate api` and `workers` x `playgate worker` on Redis (a throwaway redis-server,
        its append-only file on with `redis_aof`, unless `redis_url`) and a shared catalogue (`database_url`, else
        SQLite in a throwaway data dir), with PLAYGATE_* `settings` on top of the bench's."""
        target = cls._fresh("distributed")
        target._env.update(settings or {})
        try:
            if redis_url is None:
                redis_url = target._start_redis(server_cpus, aof=redis_aof)
            target._env["PLAYGATE_REDIS_URL"] = redis_url
            target._env["PLAYGATE_DATABASE_URL"] = (
                database_url or f"sqlite+aiosqlite:///{Path(target._dir) / 'catalog.sqlite3'}"
            )
            target._run_once("db", "upgrade")
            for _ in range(apis):
                target._start_playgate("api", server_cpus)
            for _ in range(workers):
                target._start_playgate("worker", server_cpus)
            target._wait_for_workers(redis_url, workers)
        except BaseException:
            target.stop()
            raise
        return target

    @classmethod
    def running(cls, base_urls: list[str], *, admin_password: str | None, server_pids: list[int]) -> Target:
        """A PlayGate someone else started (its processes are sampled only when their pids are given)."""
        return cls(
            base_urls=[u.rstrip("/") for u in base_urls],
            deployment="external",
            processes=[ServerProcess("server", pid) for pid in server_pids],
            admin_password=admin_password,
        )

    @classmethod
    def _fresh(cls, deployment: str) -> Target:
        raise_fd_limit()  # inherited by the servers: they must hold as many sockets as the load opens
        data_dir = tempfile.TemporaryDirectory(prefix="playgate-bench-")
        target = cls(base_urls=[], deployment=deployment, data_dir=data_dir)
        target.admin_password = secrets.token_urlsafe(18)
        # The media (clips, posters, adaptive sets) are kept between runs, so that no run's server spends its
        # first seconds on ffmpeg: PLAYGATE_MEDIA_DIR if set, else data/media (where `make run` keeps them).
        media_dir = Path(os.environ.get("PLAYGATE_MEDIA_DIR") or "data/media").resolve()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYGATE_") and k != "PORT"}
        env.update(
            PLAYGATE_DATA_DIR=data_dir.name,
            PLAYGATE_MEDIA_DIR=str(media_dir),
            PLAYGATE_ADMIN_PASSWORD=target.admin_password,
            PLAYGATE_JWT_SECRET=secrets.token_urlsafe(36),
            PLAYGATE_LOG_LEVEL="warning",
            PLAYGATE_DEMO="true",
            # A viewer of the closed loop asks about a hundred times a second, and the idle sockets are spread over
            # at most 100 users: the per-user limits, made for players, would measure themselves.
            PLAYGATE_USER_RATE="0",
            PLAYGATE_MAX_SOCKETS_PER_USER="0",
        )
        target.idp = IdentityProvider([new_key("bench-ec", "ES256")]).start()
        env.update(target.idp.env())
        target._env = env
        return target

    @property
    def _dir(self) -> str:
        assert self.data_dir is not None
        return self.data_dir.name

    def _start_playgate(self, role: str, cpus: frozenset[int] | None, port: int | None = None) -> ServerProcess:
        port = port or free_port()
        log_path = Path(self._dir) / f"{role}-{len(self.processes)}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(  # noqa: S603 (this interpreter and our own arguments, no shell)
                [sys.executable, "-m", "playgate", role],
                env={**self._env, "PLAYGATE_PORT": str(port)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if cpus is not None:
            os.sched_setaffinity(popen.pid, cpus)
        process = ServerProcess(role, popen.pid, popen, log_path, port)
        self.processes.append(process)
        if role != "worker":
            url = f"http://127.0.0.1:{port}"
            self._wait_ready(url, process)
            if url not in self.base_urls:
                self.base_urls.append(url)
        return process

    def restart(self, process: ServerProcess) -> ServerProcess:
        """Start a process of this deployment again (it must have exited) in the same role, on the same port;
        an API is waited for until ready. The new process replaces the old one in `processes`."""
        assert process.popen is None or process.popen.poll() is not None, "the process still runs"
        self.processes.remove(process)
        if process.role == "redis":
            popen = subprocess.Popen(process.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
            again = ServerProcess("redis", popen.pid, popen, port=process.port, argv=process.argv)
            self.processes.append(again)
            assert process.port is not None
            self._wait_for_port(process.port)
            return again
        return self._start_playgate(process.role, None, process.port)

    def _run_once(self, *args: str) -> None:
        done = subprocess.run(  # noqa: S603 (this interpreter and our own arguments, no shell)
            [sys.executable, "-m", "playgate", *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"playgate {' '.join(args)} failed: {done.stdout}{done.stderr}")

    def _start_redis(self, cpus: frozenset[int] | None, *, aof: bool = False) -> str:
        port = free_port()
        argv = redis_server_command(port, self._dir)
        if aof:
            argv = [*argv, "--appendonly", "yes", "--appendfsync", "everysec"]
        popen = subprocess.Popen(  # noqa: S603 (redis-server from PATH and our own arguments, no shell)
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if cpus is not None:
            os.sched_setaffinity(popen.pid, cpus)
        self.processes.append(ServerProcess("redis", popen.pid, popen, port=port, argv=argv))
        self._wait_for_port(port)
        return f"redis://127.0.0.1:{port}/0"

    @staticmethod
    def _wait_for_port(port: int) -> None:
        """Until something accepts connections on 127.0.0.1:port (BenchError after START_TIMEOUT_S)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
            time.sleep(0.05)
        raise BenchError(f"nothing listens on port {port} after {START_TIMEOUT_S}s")

    def _wait_for_workers(self, redis_url: str, count: int) -> None:
        """Until a play request gets its decision (a worker is taking requests), then, for a bounded time,
        until `count` consumers have joined the request queue's group."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._decided_once():
            for process in self.processes:
                if process.popen is not None and process.popen.poll() is not None:
                    raise BenchError(f"playgate {process.role} exited:\n{self.server_log()}")
            if time.monotonic() > deadline:
                raise BenchError(f"no worker decided a request in {START_TIMEOUT_S}s:\n{self.server_log()}")
        import redis

        from playgate.connections import GROUP, REQUESTS_KEY

        client = redis.Redis.from_url(redis_url, socket_timeout=2)
        try:
            joined_by = time.monotonic() + WORKERS_JOIN_TIMEOUT_S
            while time.monotonic() < joined_by:
                with contextlib.suppress(redis.ResponseError):
                    if len(client.xinfo_consumers(REQUESTS_KEY, GROUP)) >= count:
                        return
                time.sleep(0.1)
        finally:
            client.close()

    def _decided_once(self) -> bool:
        """One play request of the demo user1 through the first API, waiting for its decision; True if decided."""
        url = self.base_urls[0]
        try:
            token = _call(f"{url}/auth/token", {"username": "user1", "password": "user1"})["accessToken"]
            answer = _call(f"{url}/v1/plays?wait=5", {"videoId": "1", "deviceId": "bench-ready"}, token)
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            time.sleep(0.2)
            return False
        if answer.get("status") not in ("allowed", "denied"):
            return False
        _call(f"{url}/v1/streams", None, token, method="DELETE")
        return True

    def _wait_ready(self, url: str, process: ServerProcess) -> None:
        """Poll /readyz until 200; BenchError with the server log if it exits or never gets there."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.popen is not None and process.popen.poll() is not None:
                raise BenchError(
                    f"playgate {process.role} exited with {process.popen.returncode}:\n{self.server_log()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{url}/readyz", timeout=1.0) as answer,  # noqa: S310 (our own URL)
            ):
                if answer.status == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"playgate {process.role} not ready after {START_TIMEOUT_S}s:\n{self.server_log()}")

    def server_log(self) -> str:
        """The tail of each started process's log (empty for a running deployment)."""
        tails = []
        for process in self.processes:
            if process.log_path is not None and process.log_path.exists():
                tails.append(
                    f"--- {process.role} {process.pid}\n{process.log_path.read_text(errors='replace')[-3000:]}"
                )
        return "\n".join(tails)

    def stop(self) -> None:
        """Stop what the benchmark started (SIGTERM, then SIGKILL), workers first, and remove the data dir."""
        order = {"worker": 0, "api": 1, "serve": 1, "redis": 2}
        for process in sorted(self.processes, key=lambda p: order.get(p.role, 3)):
            popen = process.popen
            if popen is None or popen.poll() is not None:
                continue
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)
        if self.data_dir is not None:
            self.data_dir.cleanup()
            self.data_dir = None
        if self.idp is not None:
            self.idp.stop()
            self.idp = None

    async def accounts_for(self, names: list[str], limit: int = BENCH_USER_LIMIT) -> list[Account]:
        """Users for the load: imported in one call and signed in with the bench's key set when the bench started
        the servers; else made through the admin API (or the demo users without an admin password)."""
        missing = [n for n in names if n not in self.accounts]
        if missing:
            async with aiohttp.ClientSession(
                self.base_url, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
            ) as http:
                if self.admin_password is not None and self.idp is not None:
                    made = await _platform_accounts(http, self.admin_password, self.idp, missing, limit)
                elif self.admin_password is None:
                    made = await _demo_accounts(http, missing)
                else:
                    made = await _new_accounts(http, self.admin_password, missing)
            self.accounts.update(made)
        return [self.accounts[n] for n in names]


def _call(url: str, body: dict[str, Any] | None, token: str | None = None, method: str = "POST") -> Any:
    """A blocking JSON call (set-up only); the decoded answer, or None for an empty one."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 (our own URL)
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:  # noqa: S310 (our own URL)
        payload = answer.read()
    return orjson.loads(payload) if payload else None


async def _post_json(http: aiohttp.ClientSession, path: str, body: dict[str, Any], token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(path, data=orjson.dumps(body), headers=headers) as answer:
        payload = await answer.read()
        if answer.status not in (200, 201):
            raise BenchError(f"POST {path} answered {answer.status}: {payload[:300]!r}")
        return orjson.loads(payload)


async def _login(http: aiohttp.ClientSession, name: str, password: str) -> Account:
    body = await _post_json(http, "/auth/token", {"username": name, "password": password})
    return Account(user_id=str(body["user"]["id"]), token=str(body["accessToken"]))


async def _new_accounts(http: aiohttp.ClientSession, admin_password: str, names: list[str]) -> dict[str, Account]:
    """Create each user (limit BENCH_USER_LIMIT) and log it in, a few at a time (password hashing is slow)."""
    admin = await _login(http, "admin", admin_password)
    run = secrets.token_hex(3)
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one(name: str) -> tuple[str, Account]:
        password = secrets.token_urlsafe(12)
        user_name = f"bench-{run}-{name}"
        async with gate:
            await _post_json(
                http, "/v1/users", {"name": user_name, "password": password, "limit": BENCH_USER_LIMIT}, admin.token
            )
            return name, await _login(http, user_name, password)

    return dict(await asyncio.gather(*(one(n) for n in names)))


async def _platform_accounts(
    http: aiohttp.ClientSession,
    admin_password: str,
    idp: IdentityProvider,
    names: list[str],
    limit: int = BENCH_USER_LIMIT,
) -> dict[str, Account]:
    """Import the users in one call (with this stream limit), then mint each a token of the bench's key set."""
    admin = await _login(http, "admin", admin_password)
    run = secrets.token_hex(3)
    ids = {name: f"bench-{run}-{name}" for name in names}
    body = b"\n".join(orjson.dumps({"id": i, "limit": limit}) for i in ids.values())
    headers = {"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {admin.token}"}
    async with http.post("/v1/users:import", data=body, headers=headers) as answer:
        report = await answer.read()
        if answer.status != 200 or orjson.loads(report)["refused"]:
            raise BenchError(f"POST /v1/users:import answered {answer.status}: {report[:300]!r}")
    return {name: Account(user_id=i, token=idp.mint(i, ttl_s=24 * 3600)) for name, i in ids.items()}


async def _demo_accounts(http: aiohttp.ClientSession, names: list[str]) -> dict[str, Account]:
    """Without an admin, the demo users user1..user3 (password = name) take the load round-robin."""
    demo = [await _login(http, f"user{i}", f"user{i}") for i in (1, 2, 3)]
    return {name: demo[i % len(demo)] for i, name in enumerate(names)}
