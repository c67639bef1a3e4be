"""`playgate serve` with PLAYGATE_REDIS_URL: API and worker in one process, on Redis and PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import redis as redis_client

from tests.distributed.conftest import Cluster
from tests.support.clients import api_client, user_with_socket
from tests.support.redis_cluster import RedisCluster, cluster_tools_installed, start_cluster
from tests.support.redis_server import RedisServer, start_redis
from tests.support.servers import start_playgate

README = Path(__file__).resolve().parents[2] / "README.md"
ACL_PASSWORD = "least-privilege-password"


def readme_acl_rules() -> list[str]:
    """The rules of the Redis user README's distributed deployment gives PlayGate (`ACL SETUSER playgate ...`)."""
    found = re.search(r"^\s*ACL SETUSER playgate on >PASSWORD (.+)$", README.read_text(), re.MULTILINE)
    assert found is not None, "README gives no ACL SETUSER line for PlayGate's Redis user"
    return found[1].split()


def url_for(redis: RedisServer | RedisCluster, transport: str) -> str:
    """PLAYGATE_REDIS_URL of the server (or cluster) for one way to reach it; `acl`: as the user README says to make,
    the default user turned off."""
    if isinstance(redis, RedisCluster):
        return redis.tls_url
    if transport == "acl":
        with redis_client.Redis(port=redis.port, socket_timeout=5) as admin:
            admin.acl_setuser("playgate", enabled=True, passwords=[f"+{ACL_PASSWORD}"])
            admin.execute_command("ACL", "SETUSER", "playgate", *readme_acl_rules())
            admin.acl_setuser("default", enabled=False)
        return f"redis://playgate:{ACL_PASSWORD}@127.0.0.1:{redis.port}/0"
    if transport == "unix":
        return redis.socket_url
    return redis.tls_url if transport == "tls" else redis.url


@pytest.mark.parametrize("transport", ["tcp", "unix", "tls", "tls-cluster", "acl"])
async def test_serve_with_redis_and_postgres_runs_api_and_worker_in_one_process(
    cluster: Cluster, transport: str
) -> None:
    # Every client PlayGate opens (the ledger, the queue, the fan-out, Socket.IO's manager and the login throttle,
    # which the admin's log-in goes through) over each way to reach Redis: TCP; its socket file on the same host (a
    # unix:// PLAYGATE_REDIS_URL); TLS, the server's certificate checked against the CA the URL names (rediss://);
    # a Redis Cluster over TLS (rediss+cluster://, the CA named the same way); as a Redis user with README's
    # least-privilege rules.
    where = cluster.data_dir / f"serve-redis-{transport}"
    if transport == "tls-cluster" and not cluster_tools_installed():
        pytest.skip("redis-cli is not installed (apt-get install redis-tools; .ci/run does)")
    redis = (
        start_cluster(where, tls=True)
        if transport == "tls-cluster"
        else start_redis(where, unix_socket=transport == "unix", tls=transport == "tls")
    )
    try:
        url = url_for(redis, transport)
        server = start_playgate(cluster.data_dir, "serve", **{**cluster.env, "PLAYGATE_REDIS_URL": url})
    except BaseException:
        redis.stop()  # a server that did not start leaves no redis-server behind
        raise
    try:
        user, sock = await user_with_socket(server.base_url, limit=2)
        async with api_client(server.base_url, user.token) as client:
            answers = []
            for video in ("1", "2", "3"):
                response = await client.post("/v1/plays", params={"wait": 5}, json={"videoId": video})
                assert response.status_code == 200, response.text
                answers.append(response.json())
            assert [a["status"] for a in answers] == ["allowed", "allowed", "denied"]
            assert answers[2]["reason"] == "limit_reached"
            messages = [await sock.next_message() for _ in range(3)]
            assert [m["requestId"] for m in messages] == [a["requestId"] for a in answers]
            ready = await client.get("/readyz")
            assert ready.json()["checks"] == {"catalog": "ok", "ledger": "ok", "queue": "ok"}
        await sock.close()
        async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
            assert (await anonymous.get("/healthz")).status_code == 200
        # No client was refused anything (a command, a key, a channel) on the way: each would have said so.
        assert '"level":"warning"' not in server.log(), server.log()
    finally:
        server.stop()
        redis.stop()
