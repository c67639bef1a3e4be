"""A throwaway PostgreSQL server of the tests' own (initdb, pg_ctl) on a free port, speaking TLS with a certificate
for 127.0.0.1 from a test CA (trustme), and refusing any connection that is not encrypted."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support.servers import free_port

START_TIMEOUT_S = 30
# initdb and the server refuse to run as root; as root the tests run them as the system's postgres user.
SERVER_USER = "postgres"


def postgres_bindir() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps them off PATH), if installed."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = [Path(path) for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    newest = max(found, key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0, default=None)
    return newest.parent if newest else None


def unavailable_reason() -> str | None:
    """Why no server of the tests' own can be started here, or None."""
    if postgres_bindir() is None:
        return "PostgreSQL's server programs (initdb, pg_ctl) are not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser, initdb cannot be run as another user"
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root with no {SERVER_USER} user to run initdb as"
    return None


@dataclass
class PgServer:
    """A running server: trust authentication for user postgres, over TLS only (hostssl; hostnossl rejected)."""

    root: Path
    port: int
    tls_ca: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, query: str = "") -> str:
        """A URL as libpq and hosting providers write it (no driver named), to database postgres."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres" + (f"?{query}" if query else "")

    def stop(self) -> None:
        """Stop the server at once (pg_ctl's immediate mode), wait for it, and remove its files."""
        try:
            _pg_ctl(self.data_dir, "stop", "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PgServer:
    """initdb into a new temp dir (the server user's own: pytest's are private to the user running the tests), a
    TLS certificate for 127.0.0.1, then pg_ctl start, which waits until the server accepts connections."""
    root = server_user_dir("playgate-test-pg-")
    server = PgServer(root, free_port(), root / "tls-ca.pem")
    try:
        _configure_and_start(server)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def _configure_and_start(server: PgServer) -> None:
    _as_server_user(_bin("initdb"), "-D", str(server.data_dir), "-A", "trust", "-U", "postgres", "--no-sync")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(server.tls_ca))
    cert = authority.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(server.data_dir / "server.crt"))
    cert.private_key_pem.write_to_path(str(server.data_dir / "server.key"))
    (server.data_dir / "server.key").chmod(0o600)
    (server.data_dir / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"
    )
    settings = {
        "port": str(server.port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{server.root}'",
        "ssl": "on",
        "fsync": "off",
        "max_connections": "40",
    }
    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
    if os.geteuid() == 0:
        for path in (server.data_dir / "server.crt", server.data_dir / "server.key"):
            shutil.chown(path, SERVER_USER)
    _pg_ctl(server.data_dir, "start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(server.root / "postgres.log"))


def _bin(name: str) -> str:
    bindir = postgres_bindir()
    assert bindir is not None, "PostgreSQL's server programs are not installed"
    return str(bindir / name)


def _pg_ctl(data_dir: Path, *args: str) -> None:
    _as_server_user(_bin("pg_ctl"), "-D", str(data_dir), *args)


def _as_server_user(*command: str) -> None:
    subprocess.run([*as_server_user(), *command], check=True, capture_output=True, timeout=START_TIMEOUT_S + 10)


def as_server_user() -> tuple[str, ...]:
    """The prefix that runs a command as the postgres user when the tests run as root (PostgreSQL's programs and
    PgBouncer refuse root), else nothing."""
    return ("runuser", "-u", SERVER_USER, "--") if os.geteuid() == 0 else ()


def server_user_dir(prefix: str) -> Path:
    """A new temp dir the postgres user owns when the tests run as root (pytest's are private to root)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER)
    return root
