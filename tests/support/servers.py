"""Start and stop real `playgate` processes on free ports, each with a data dir of its own."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ADMIN_PASSWORD = "admin-password-for-tests"
JWT_SECRET = "test-secret-that-is-long-enough-0123456789"
# A bound, not a measure: with the suite's workers in parallel on 2 cores, a start may wait its turn for a core.
START_TIMEOUT_S = 90.0
# One media folder for every server of a test session (tests/conftest.py sets it): each video's clip, poster and
# adaptive set are made once, not by every server that starts, which would cost the suite minutes of CPU.
_shared_media_dir: list[Path] = []


def share_media_dir(folder: Path) -> None:
    """Make `folder` the PLAYGATE_MEDIA_DIR of every test server that does not name one of its own."""
    _shared_media_dir[:] = [folder]


# The test servers' ports, below the kernel's ephemeral range (32768-60999 on Linux) and the Redis Cluster nodes'
# (20000 and up, tests/support/redis_cluster.py): a port the kernel hands out (bind to 0) can be taken, before the
# server starts, as the source port of any outgoing connection of the suite (a clean-clone run once lost
# `make run` that way, "Address already in use"). Each xdist worker has half of the range, and a process never
# hands out the same port twice, so the suite's workers cannot pick one another's ports either.
PORT_RANGE = (10000, 20000)
_handed_out: set[int] = set()


def _worker_ports() -> range:
    low, high = PORT_RANGE
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    share = (high - low) // count
    start = low + share * (int(worker) % count if worker.isdigit() else 0)
    return range(start, start + share)


def free_port() -> int:
    """A TCP port nobody listens on right now, that no other test of the session was given."""
    ports = _worker_ports()
    first = random.randrange(len(ports))
    for step in range(len(ports)):
        port = ports[(first + step) % len(ports)]
        if port in _handed_out:
            continue
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {ports}")


@dataclass
class ServerProcess:
    """A running `playgate` command and where to reach it."""

    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Send `sig` and wait for the exit code (SIGKILL after timeout_s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def playgate_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a test process: this interpreter's, minus any PLAYGATE_* of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYGATE_") and k != "PORT"}
    env.update(
        PLAYGATE_DATA_DIR=str(data_dir),
        PLAYGATE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        PLAYGATE_JWT_SECRET=JWT_SECRET,
        PLAYGATE_LOG_LEVEL="warning",
        # Every test client logs in from 127.0.0.1, and some tests fail logins on purpose (bad input, fuzzing):
        # keep the per-address login throttle out of their way. tests/ops/test_security.py sets its own limits.
        PLAYGATE_LOGIN_FAILURES_PER_ADDRESS="100000",
    )
    if _shared_media_dir:
        env["PLAYGATE_MEDIA_DIR"] = str(_shared_media_dir[0])
    env.update(extra)
    return env


def run_playgate(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `playgate <args>` to its end with the test environment (a command, or a server expected not to start):
    its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "playgate", *args],
        env=playgate_env(data_dir, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def migrate_playgate(data_dir: Path, **env: str) -> None:
    """`playgate db upgrade` with the test environment (the database the settings name), asserting it worked."""
    upgrade = run_playgate(data_dir, "db", "upgrade", **env)
    assert upgrade.returncode == 0, upgrade.stderr


def start_playgate(
    data_dir: Path, *args: str, port: int | None = None, wait_ready: bool = True, **env: str
) -> ServerProcess:
    """Run `playgate <args>` (default `serve`) and wait until /readyz answers 200."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    full_env = playgate_env(data_dir, PLAYGATE_PORT=str(port), **env)
    log_path = data_dir / f"playgate-{port}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "playgate", *(args or ("serve",))],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(proc, port, data_dir, log_path, full_env)
    if wait_ready:
        wait_until_ready(server)
    return server


def wait_until_ready(server: ServerProcess, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll /readyz until 200; fail with the process log if it exits or never gets there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"playgate exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"playgate not ready after {timeout_s}s:\n{server.log()}")
