"""A throwaway PgBouncer of the tests' own on a free port, pooling in transaction mode (as hosted PostgreSQL
offerings' poolers do) in front of the PostgreSQL the tests use, with fewer server connections than clients."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.pg_database import PG_HOST, PG_PORT, PG_USER
from tests.support.pg_server import as_server_user, server_user_dir
from tests.support.servers import free_port

START_TIMEOUT_S = 10.0
SERVER_CONNECTIONS = 2  # per database: every client's transactions share two PostgreSQL sessions


def pgbouncer_binary() -> str | None:
    """PgBouncer's program (Debian keeps it in /usr/sbin), if installed."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


@dataclass
class PgBouncer:
    """A running PgBouncer: trust authentication for the tests' user."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]

    def url(self, database: str, query: str = "") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop it at once (SIGINT: immediate shutdown), wait, and remove its files. The signal goes to the process
        group: runuser, which started it as the postgres user, does not pass SIGINT on."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


def start_pgbouncer() -> PgBouncer:
    """Start PgBouncer in transaction mode in front of PG_HOST:PG_PORT and wait until it listens."""
    binary = pgbouncer_binary()
    assert binary is not None, "pgbouncer is not installed"
    root = server_user_dir("playgate-test-pgbouncer-")
    port = free_port()
    (root / "users.txt").write_text(f'"{PG_USER}" ""\n')
    (root / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={PG_HOST} port={PG_PORT}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {root / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\nmax_client_conn = 200\n"
        f"logfile = {root / 'pgbouncer.log'}\n"
    )
    proc = subprocess.Popen(
        [*as_server_user(), binary, str(root / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    bouncer = PgBouncer(root, port, proc)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}: {bouncer.log()}")
        if f"listening on 127.0.0.1:{port}" in bouncer.log():
            return bouncer
        time.sleep(0.05)
    bouncer.stop()
    raise RuntimeError(f"pgbouncer not listening on {port} after {START_TIMEOUT_S}s")
