"""The PlayGate under test: one the benchmark starts (embedded, temp data dir, optionally pinned) or a running one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from playgate.errors import PlayGateError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# Limit of the users the benchmark makes: high enough that a closed loop is never denied for lack of room.
BENCH_USER_LIMIT = 1000
SETUP_CONCURRENCY = 8
HTTP_TIMEOUT_S = 30.0


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


@dataclass
class Account:
    """A user of the benchmark and its bearer token."""

    user_id: str
    token: str


@dataclass
class Target:
    """Where the load goes: the URL, and the server process when it is on this machine."""

    base_url: str
    deployment: str
    server_pid: int | None = None
    admin_password: str | None = None
    process: subprocess.Popen[bytes] | None = None
    data_dir: tempfile.TemporaryDirectory[str] | None = None
    log_path: Path | None = None
    accounts: dict[str, Account] = field(default_factory=dict)

    @classmethod
    def embedded(cls, *, server_cpus: frozenset[int] | None = None, env: dict[str, str] | None = None) -> Target:
        """Start `playgate serve` on a free port with a throwaway data dir, and wait until it is ready."""
        raise_fd_limit()  # inherited by the server: it must hold as many sockets as the load opens
        data_dir = tempfile.TemporaryDirectory(prefix="playgate-bench-")
        port = free_port()
        admin_password = secrets.token_urlsafe(18)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYGATE_") and k != "PORT"}
        full_env.update(
            PLAYGATE_DATA_DIR=data_dir.name,
            PLAYGATE_PORT=str(port),
            PLAYGATE_ADMIN_PASSWORD=admin_password,
            PLAYGATE_LOG_LEVEL="warning",
            PLAYGATE_DEMO="true",
        )
        full_env.update(env or {})
        log_path = Path(data_dir.name) / "server.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "playgate", "serve"], env=full_env, stdout=log, stderr=subprocess.STDOUT
            )
        if server_cpus is not None:
            os.sched_setaffinity(process.pid, server_cpus)
        target = cls(
            base_url=f"http://127.0.0.1:{port}",
            deployment="embedded",
            server_pid=process.pid,
            admin_password=admin_password,
            process=process,
            data_dir=data_dir,
            log_path=log_path,
        )
        target.wait_ready()
        return target

    @classmethod
    def running(cls, base_url: str, *, admin_password: str | None, server_pid: int | None) -> Target:
        """A PlayGate someone else started (its process is sampled only when its pid is given)."""
        return cls(
            base_url=base_url.rstrip("/"), deployment="external", server_pid=server_pid, admin_password=admin_password
        )

    def server_log(self) -> str:
        """The tail of the started server's log (empty for a running one)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> None:
        """Poll /readyz until 200; BenchError with the server log if it exits or never gets there."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BenchError(f"playgate exited with {self.process.returncode}:\n{self.server_log()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.base_url}/readyz", timeout=1.0) as answer,  # noqa: S310 (our own URL)
            ):
                if answer.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise BenchError(f"playgate not ready after {START_TIMEOUT_S}s:\n{self.server_log()}")

    def stop(self) -> None:
        """Stop the server the benchmark started (SIGTERM, then SIGKILL) and remove its data dir."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.data_dir is not None:
            self.data_dir.cleanup()
            self.data_dir = None

    async def accounts_for(self, names: list[str]) -> list[Account]:
        """Users for the load, made through the admin API (or the demo users without an admin password)."""
        missing = [n for n in names if n not in self.accounts]
        if missing:
            async with aiohttp.ClientSession(
                self.base_url, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
            ) as http:
                if self.admin_password is None:
                    made = await _demo_accounts(http, missing)
                else:
                    made = await _new_accounts(http, self.admin_password, missing)
            self.accounts.update(made)
        return [self.accounts[n] for n in names]


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


async def _demo_accounts(http: aiohttp.ClientSession, names: list[str]) -> dict[str, Account]:
    """Without an admin, the demo users user1..user3 (password = name) take the load round-robin."""
    demo = [await _login(http, f"user{i}", f"user{i}") for i in (1, 2, 3)]
    return {name: demo[i % len(demo)] for i, name in enumerate(names)}
