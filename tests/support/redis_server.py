"""A throwaway redis-server on a free port in a temp dir, started and stopped by the tests."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import trustme

from tests.support.servers import free_port

START_TIMEOUT_S = 10.0


def redis_binary() -> str | None:
    """The redis-server on PATH, if any."""
    return shutil.which("redis-server")


@dataclass
class RedisServer:
    """A redis-server process of the tests; `restart` keeps the port and, with AOF on, the data."""

    port: int
    data_dir: Path
    appendonly: bool
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()
    # Also listening on this socket file (a path short enough for the 107 bytes a socket address may hold).
    unix_socket: Path | None = None
    # Also speaking TLS on this port, with a certificate for 127.0.0.1 from a test CA (its file: tls_ca): `authority`,
    # one the nodes of a cluster share, else a new one.
    tls_port: int | None = None
    tls_ca: Path | None = None
    authority: trustme.CA | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_url(self) -> str:
        """The URL of the socket file: Redis on the same host without TCP."""
        assert self.unix_socket is not None, "started without a socket file"
        return f"unix://{self.unix_socket}?db=0"

    @property
    def tls_url(self) -> str:
        """The URL of the TLS port, naming the CA that signed the server's certificate (redis-py's ssl_ca_certs)."""
        assert self.tls_port is not None, "started without TLS"
        assert self.tls_ca is not None, "started without TLS"
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.tls_ca}"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        binary = redis_binary()
        assert binary is not None, "redis-server is not installed"
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--logfile",
            str(self.data_dir / "redis.log"),
            *self.extra_args,
            *(("--unixsocket", str(self.unix_socket), "--unixsocketperm", "700") if self.unix_socket else ()),
            *self._tls_args(),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server not answering on port {self.port} after {START_TIMEOUT_S}s")

    def _tls_args(self) -> tuple[str, ...]:
        """The TLS port's arguments: a certificate for 127.0.0.1 signed by the test CA (trustme), the CA kept in
        tls_ca for the clients; clients are not asked for certificates of their own. The files are written at the
        first start; a restart serves the same certificate."""
        if self.tls_port is None:
            return ()
        cert_file, key_file = self.data_dir / "tls-cert.pem", self.data_dir / "tls-key.pem"
        if self.tls_ca is None:
            ca = self.authority or trustme.CA()
            cert = ca.issue_cert("127.0.0.1")
            self.tls_ca = self.data_dir / "tls-ca.pem"
            ca.cert_pem.write_to_path(str(self.tls_ca))
            cert.cert_chain_pems[0].write_to_path(str(cert_file))
            cert.private_key_pem.write_to_path(str(key_file))
        return (
            *("--tls-port", str(self.tls_port), "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)),
            *("--tls-ca-cert-file", str(self.tls_ca), "--tls-auth-clients", "no"),
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM: it writes its AOF and exits) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down for down_s seconds, start again on the same port and directory."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def flush(self) -> None:
        """Empty every database (between tests sharing the server)."""
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            client.flushall()
        finally:
            client.close()


def start_redis(
    data_dir: Path, *, appendonly: bool = False, unix_socket: bool = False, tls: bool = False
) -> RedisServer:
    """A started redis-server on a free port, keeping its files in data_dir; with unix_socket, listening on a socket
    file in the system's temp dir too (removed by the server when it stops); with tls, on a TLS port too."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    socket_file = Path(tempfile.gettempdir()) / f"playgate-test-redis-{port}.sock" if unix_socket else None
    server = RedisServer(port, data_dir, appendonly, unix_socket=socket_file, tls_port=free_port() if tls else None)
    server.start()
    return server
