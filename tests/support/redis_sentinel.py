"""A throwaway primary, its replica and a Redis Sentinel watching them, on free ports, for the tests."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer, redis_binary, start_redis
from tests.support.servers import free_port

SERVICE = "playgate"
START_TIMEOUT_S = 15.0


@dataclass
class SentinelSet:
    """A primary with one replica, and one Sentinel (quorum 1, down after 1 s) that fails over to the replica."""

    primary: RedisServer
    replica: RedisServer
    sentinel_port: int
    sentinel_proc: subprocess.Popen[bytes]
    data_dir: Path

    def url(self, *, dead_first: bool = True) -> str:
        """PLAYGATE_REDIS_URL for the set, naming first a Sentinel address nobody answers at (a client must try the
        next), then the live one."""
        dead = f"127.0.0.1:{free_port()}," if dead_first else ""
        return f"redis+sentinel://{dead}127.0.0.1:{self.sentinel_port}/0/{SERVICE}"

    def primary_port(self) -> int:
        """The port of the primary the Sentinel names now."""
        with redis.Redis(port=self.sentinel_port, socket_timeout=2, decode_responses=True) as client:
            _host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(port)

    def stop(self) -> None:
        if self.sentinel_proc.poll() is None:
            self.sentinel_proc.terminate()
            self.sentinel_proc.wait(10)
        for server in (self.primary, self.replica):
            server.stop()


def start_sentinel_set(data_dir: Path) -> SentinelSet:
    """Start the primary (append-only file on), its replica and the Sentinel; wait until the Sentinel knows the
    replica (without it there is nothing to fail over to)."""
    primary = start_redis(data_dir / "primary", appendonly=True)
    replica = RedisServer(
        free_port(), data_dir / "replica", True, extra_args=("--replicaof", "127.0.0.1", str(primary.port))
    )
    (data_dir / "replica").mkdir(parents=True, exist_ok=True)
    replica.start()
    port = free_port()
    conf = data_dir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {data_dir}\nlogfile {data_dir / 'sentinel.log'}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 5000\n"
    )
    binary = redis_binary()
    assert binary is not None, "redis-server is not installed"
    proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    sentinels = SentinelSet(primary, replica, port, proc, data_dir)
    deadline = time.monotonic() + START_TIMEOUT_S
    with redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=0.5, decode_responses=True) as client:
        while time.monotonic() < deadline:
            try:
                if client.execute_command("SENTINEL", "REPLICAS", SERVICE):
                    return sentinels
            except redis.exceptions.ConnectionError:
                pass
            time.sleep(0.1)
    sentinels.stop()
    raise RuntimeError(f"the Sentinel on {port} never saw the replica of {primary.port}")
