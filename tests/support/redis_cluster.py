"""A throwaway Redis Cluster (three primaries, three replicas) of real redis-server processes on loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import trustme

from playgate.bench.cluster import cluster_port  # a free port whose cluster bus port (+10000) is free too
from tests.support.redis_server import RedisServer, redis_binary
from tests.support.servers import free_port

PRIMARIES = 3
REPLICAS_PER_PRIMARY = 1
READY_TIMEOUT_S = 30.0


def cluster_tools_installed() -> bool:
    """redis-server and redis-cli (for `--cluster create`) are on PATH."""
    return redis_binary() is not None and shutil.which("redis-cli") is not None


@dataclass
class RedisCluster:
    """The nodes of a test cluster; `url` names every node (the client needs only one, but any may be down)."""

    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}/0"

    @property
    def tls_url(self) -> str:
        """The nodes' TLS ports (a cluster started with tls), naming the CA that signed their certificates."""
        hosts = ",".join(f"127.0.0.1:{n.tls_port}" for n in self.nodes)
        return f"rediss+cluster://{hosts}/0?ssl_ca_certs={self.nodes[0].tls_ca}"

    def client(self, port: int) -> redis.Redis:
        """A plain client of one node (CLUSTER commands, INFO), decoding replies."""
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)

    def node(self, port: int) -> RedisServer:
        """The node listening on `port`."""
        return next(n for n in self.nodes if n.port == port)

    def primaries(self) -> list[int]:
        """Ports of the nodes that are primaries now (the first live node's view)."""
        return [
            int(addr.rpartition(":")[2].split("@")[0])
            for addr, node in self.topology().items()
            if "master" in node["flags"] and "fail" not in node["flags"]
        ]

    def topology(self) -> dict[str, dict[str, object]]:
        """CLUSTER NODES of the first live node, as redis-py parses it (address -> node id, flags, slots...)."""
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            try:
                with self.client(n.port) as c:
                    nodes: dict[str, dict[str, object]] = c.execute_command("CLUSTER NODES")
            except redis.exceptions.ConnectionError:
                continue
            return nodes
        raise RuntimeError("no cluster node answers")

    def flush(self, tries: int = 5) -> None:
        """Empty every primary (replicas follow). A node that turned replica meanwhile (a failover the cluster made
        by itself: its 1 s node timeout can pass on a loaded machine) answers READONLY: the topology is read again
        once the cluster agrees on it, at most `tries` times."""
        for attempt in range(tries):
            try:
                for port in self.primaries():
                    with self.client(port) as c:
                        c.flushall()
                return
            except redis.exceptions.ReadOnlyError:
                if attempt == tries - 1:
                    raise
                self.wait_ok()
                time.sleep(0.2)

    def wait_ok(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every live node says cluster_state:ok and agrees on the slots."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._state_ok(n) for n in self.nodes if n.proc is not None and n.proc.poll() is None):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the test cluster is not ok after {timeout_s}s")

    def _state_ok(self, n: RedisServer) -> bool:
        try:
            with self.client(n.port) as c:
                info = c.execute_command("CLUSTER INFO")
        except redis.exceptions.ConnectionError:
            return False
        return bool(info.get("cluster_state") == "ok" and info.get("cluster_slots_ok") == "16384")

    def stop(self) -> None:
        """Stop every node."""
        for n in self.nodes:
            n.stop()


def start_cluster(data_dir: Path, *, tls: bool = False) -> RedisCluster:
    """Start six cluster-enabled redis-servers and join them (`redis-cli --cluster create`, one replica each).

    With tls, the nodes speak TLS to each other (the cluster bus, replication) and to clients on a port of their own
    (`tls_url`), with certificates from one test CA; their plain ports stay open for the tests' own look-ups."""
    cluster = RedisCluster()
    authority = trustme.CA() if tls else None
    tls_args = ("--tls-cluster", "yes", "--tls-replication", "yes") if tls else ()
    try:
        for i in range(PRIMARIES * (1 + REPLICAS_PER_PRIMARY)):
            node_dir = data_dir / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            port = cluster_port()  # its cluster bus port (+10000) is free too
            node = RedisServer(
                free_port() if tls else port,
                node_dir,
                appendonly=False,
                tls_port=port if tls else None,
                authority=authority,
                extra_args=(
                    *tls_args,
                    "--cluster-port",
                    str(port + 10000),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout",
                    "1000",
                    # A replica's first sync starts at once, not after the default 5 s a primary waits for more
                    # replicas to share a diskless transfer: the cluster is up in about 2 s instead of 6.
                    "--repl-diskless-sync-delay",
                    "0",
                ),
            )
            node.start()
            cluster.nodes.append(node)
        hosts = [f"127.0.0.1:{n.tls_port if tls else n.port}" for n in cluster.nodes]
        subprocess.run(
            [
                "redis-cli",
                *(("--tls", "--cacert", str(cluster.nodes[0].tls_ca)) if tls else ()),
                "--cluster",
                "create",
                *hosts,
                "--cluster-yes",
                "--cluster-replicas",
                str(REPLICAS_PER_PRIMARY),
            ],
            check=True,
            capture_output=True,
            timeout=READY_TIMEOUT_S,
        )
        cluster.wait_ok()
        wait_replicas_synced(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_replicas_synced(cluster: RedisCluster, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until every replica reports its link to its primary up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        links = []
        for n in cluster.nodes:
            with cluster.client(n.port) as c:
                info = c.info("replication")
            if info.get("role") == "slave":
                links.append(info.get("master_link_status") == "up")
        if len(links) == PRIMARIES * REPLICAS_PER_PRIMARY and all(links):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the test cluster's replicas are not in sync after {timeout_s}s")
