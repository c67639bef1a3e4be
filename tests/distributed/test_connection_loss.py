"""PostgreSQL going away under an API process: /readyz 503, requests 503 problem+json, recovery by itself.

The API reaches PostgreSQL through a TCP relay in the test process, so that the connection can be cut and
restored without touching the shared PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from tests.distributed.conftest import Cluster
from tests.support.clients import admin_client, api_client, new_user
from tests.support.pg_database import PG_HOST, PG_PORT
from tests.support.servers import free_port, start_playgate

CACHE_TTL_S = 0.5


class Relay:
    """A TCP relay 127.0.0.1:<port> -> PostgreSQL that can be cut (every connection closed) and restored."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            pg_reader, pg_writer = await asyncio.open_connection(PG_HOST, PG_PORT)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, pg_writer}
        await asyncio.gather(self._pipe(client_reader, pg_writer), self._pipe(pg_reader, client_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)


async def test_postgres_away_gives_503_and_the_api_recovers_by_itself(cluster: Cluster) -> None:
    relay = Relay()
    await relay.start()
    url = cluster.db.url.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{relay.port}")
    env = {**cluster.env, "PLAYGATE_DATABASE_URL": url, "PLAYGATE_CACHE_TTL": str(CACHE_TTL_S)}
    api = await asyncio.to_thread(start_playgate, cluster.data_dir, "api", **env)
    try:
        admin = await admin_client(api.base_url)
        user = await new_user(api.base_url, admin, limit=2)
        await admin.aclose()
        async with api_client(api.base_url, user.token) as client, httpx.AsyncClient(base_url=api.base_url) as probe:
            assert (await client.post("/v1/plays", json={"videoId": "1"})).status_code == 202
            await relay.cut()
            await asyncio.sleep(CACHE_TTL_S * 2)  # past the catalogue cache
            ready = await probe.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["catalog"] != "ok"
            refused = await client.post("/v1/plays", json={"videoId": "2"})
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            await relay.start()
            deadline = time.monotonic() + 20
            while (await probe.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "the API did not recover by itself"
                await asyncio.sleep(0.2)
            again = await client.post("/v1/plays", params={"wait": 5}, json={"videoId": "3"})
            assert again.status_code == 200, again.text
            assert again.json()["status"] == "allowed"
    finally:
        api.stop()
        with contextlib.suppress(AssertionError):
            await relay.cut()
