"""A real nginx (deploy/nginx/) in front of the media: auth_request asks PlayGate's /v1/authorize about each request."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.lifecycle.conftest import Deployment
from tests.lifecycle.helpers import active_ids, ended_events, play, token_of
from tests.support.clients import api_client, connect_socket, new_user
from tests.support.servers import free_port

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
START_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def nginx(evict: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx with deploy/nginx's configuration, on a free port, in front of the evict_oldest deployment."""
    if NGINX is None:
        pytest.skip("nginx is not installed: `make test` installs the Debian package nginx")
    prefix = Path(tmp_path_factory.mktemp("nginx"))
    listen = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "NGINX_PREFIX": str(prefix),
        "NGINX_LISTEN": listen,
        "PLAYGATE_UPSTREAM": evict.base_url.removeprefix("http://"),
        "PLAYGATE_MEDIA_DIR": str(evict.media_dir),
        "NGINX_WORKERS": "1",
    }
    subprocess.run([str(DEPLOY_DIR / "render")], env=env, check=True, capture_output=True, timeout=30)
    # As root, nginx would hand its workers to `nobody`, who cannot read a private temp folder.
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    log = (prefix / "stderr.log").open("wb")
    proc = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", "nginx.conf", "-e", "stderr", "-g", directives], stdout=log, stderr=log
    )
    base = f"http://{listen}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"nginx exited {proc.returncode}: {(prefix / 'stderr.log').read_text()}")
        try:
            httpx.get(f"{base}/healthz", timeout=1.0)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"nginx did not answer in {START_TIMEOUT_S}s")
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(10)
    log.close()


def media_url(decision: dict[str, str], token: str | None = None) -> str:
    """The nginx URL of a stream's media, with the token of its playbackUrl (or the one given)."""
    token = token if token is not None else token_of(decision)
    return f"/media/{decision['streamId']}/{decision['videoId']}.mp4?token={token}"


async def test_nginx_serves_an_active_streams_media_and_renews_its_lease(
    nginx: str, evict: Deployment, evict_admin: httpx.AsyncClient
) -> None:
    user = await new_user(evict.base_url, evict_admin, limit=1)
    async with api_client(evict.base_url, user.token) as client, httpx.AsyncClient(base_url=nginx) as media:
        decision = await play(client, "1", "tv")
        clip = (evict.media_dir / "1.mp4").read_bytes()
        first = await media.get(media_url(decision), headers={"Range": "bytes=0-99"})
        assert first.status_code == 206
        assert first.content == clip[:100]
        assert first.headers["content-range"] == f"bytes 0-99/{len(clip)}"
        whole = await media.get(media_url(decision))
        assert (whole.status_code, whole.content) == (200, clip)
        token = token_of(decision)
        by_header = await media.get(
            media_url(decision, token=""), headers={"X-Playback-Token": token, "Range": "bytes=-10"}
        )
        assert (by_header.status_code, by_header.content) == (206, clip[-10:])
        # Requests through nginx alone keep the stream past its lease.
        deadline = time.monotonic() + evict.stream_ttl_s * 1.5
        while time.monotonic() < deadline:
            assert (await media.get(media_url(decision), headers={"Range": "bytes=0-0"})).status_code == 206
            await asyncio.sleep(0.3)
        assert decision["streamId"] in await active_ids(client)


async def test_nginx_refuses_forged_other_users_evicted_and_expired_tokens(
    nginx: str, evict: Deployment, evict_admin: httpx.AsyncClient
) -> None:
    alice = await new_user(evict.base_url, evict_admin, limit=1)
    bob = await new_user(evict.base_url, evict_admin, limit=1)
    sock = await connect_socket(evict.socket_url, token=alice.token)
    try:
        async with (
            api_client(evict.base_url, alice.token) as a_client,
            api_client(evict.base_url, bob.token) as b_client,
            httpx.AsyncClient(base_url=nginx) as media,
        ):
            first = await play(a_client, "2", "tv")
            bobs = await play(b_client, "2", "tv")
            token = token_of(first)
            assert (await media.get(media_url(first))).status_code == 200
            assert (await media.get(media_url(first, token=""))).status_code == 401
            forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
            assert (await media.get(media_url(first, token=forged))).status_code == 401
            other_users = token_of(bobs)
            assert (await media.get(media_url(first, token=other_users))).status_code == 403
            wrong_file = f"/media/{first['streamId']}/3.mp4?token={token}"
            assert (await media.get(wrong_file)).status_code == 403

            # Evicted (limit 1, evict_oldest): the old URL stops working at once.
            second = await play(a_client, "3", "phone")
            assert second["status"] == "allowed"
            assert (await media.get(media_url(first))).status_code == 403
            [evicted] = await ended_events(sock, 1, 5.0)
            assert (evicted["streamId"], evicted["reason"]) == (first["streamId"], "evicted")

            # Expired: no media requests for a lease, then the URL is refused.
            assert (await media.get(media_url(second))).status_code == 200
            [expired] = await ended_events(sock, 1, evict.stream_ttl_s + 3.0)
            assert (expired["streamId"], expired["reason"]) == (second["streamId"], "expired")
            assert (await media.get(media_url(second))).status_code == 403
    finally:
        await sock.close()
