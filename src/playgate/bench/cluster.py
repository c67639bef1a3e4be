"""A throwaway Redis Cluster of real redis-server processes on loopback ports, for the benchmarks, and what
they ask of it: empty it, how much memory each shard holds."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from playgate.bench.target import BenchError, redis_server_command
from playgate.connections import cluster_nodes, is_cluster_url, primaries

START_TIMEOUT_S = 30.0
# A node's cluster bus listens on its port + 10000.
BUS_PORT_OFFSET = 10000
PORT_RANGE = (20000, 55535)


def _free(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port is free too (at most 200 tries)."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        if _free(port) and _free(port + BUS_PORT_OFFSET):
            return port
    raise BenchError("no free port pair for a cluster node")


@contextlib.asynccontextmanager
async def redis_cluster(primaries: int, replicas_per_primary: int = 0) -> AsyncIterator[str]:
    """Start `primaries` (plus replicas) cluster-enabled redis-servers, join them with `redis-cli --cluster
    create`, yield the redis+cluster:// URL, stop them all afterwards."""
    if shutil.which("redis-cli") is None:
        raise BenchError("redis-cli is not installed (apt-get install redis-tools)")
    processes: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory(prefix="playgate-bench-cluster-") as tmp:
        try:
            ports = []
            for i in range(primaries * (1 + replicas_per_primary)):
                port = cluster_port()
                argv = redis_server_command(port, tmp)
                argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"{tmp}/nodes-{i}.conf"]
                processes.append(
                    await asyncio.create_subprocess_exec(
                        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
                    )
                )
                ports.append(port)
            for port in ports:
                await _until_ping(port)
            hosts = [f"127.0.0.1:{port}" for port in ports]
            create = await asyncio.create_subprocess_exec(
                "redis-cli", "--cluster", "create", *hosts, "--cluster-yes",
                "--cluster-replicas", str(replicas_per_primary),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(create.communicate(), START_TIMEOUT_S)
            if create.returncode != 0:
                raise BenchError(f"redis-cli --cluster create failed: {err.decode(errors='replace')}")
            await _until_ok(ports)
            yield f"redis+cluster://{','.join(hosts)}/0"
        finally:
            for process in processes:
                if process.returncode is None:
                    process.terminate()
            for process in processes:
                await asyncio.wait_for(process.wait(), START_TIMEOUT_S)


async def _until_ping(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    client = Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        while True:
            try:
                await client.ping()
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise BenchError(f"redis-server did not start on port {port}") from exc
            except Exception as exc:  # redis-py's ConnectionError while it starts
                if time.monotonic() > deadline:
                    raise BenchError(f"redis-server did not start on port {port}: {exc}") from exc
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def _until_ok(ports: list[int]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    for port in ports:
        client = Redis(host="127.0.0.1", port=port, decode_responses=True)
        try:
            # redis-py leaves execute_command unannotated; CLUSTER INFO comes back parsed as a dict
            while (await client.execute_command("CLUSTER INFO")).get("cluster_state") != "ok":  # type: ignore[no-untyped-call]
                if time.monotonic() > deadline:
                    raise BenchError(f"the cluster is not ok on port {port} after {START_TIMEOUT_S}s")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()


async def each_primary(url: str, ask: Callable[[Redis], Awaitable[Any]]) -> list[Any]:
    """`ask` of every primary (flushall, info), their answers in order."""
    answers = []
    for client in await primaries(url):
        try:
            answers.append(await ask(client))
        finally:
            await client.aclose()
    return answers


def describe(url: str) -> str:
    """`url` without credentials: one server, or the cluster's first node and how many it names."""
    if not is_cluster_url(url):
        return url.rpartition("@")[2]
    nodes = cluster_nodes(url)
    return f"cluster of {len(nodes)} nodes at {nodes[0][0]}:{nodes[0][1]}…"
