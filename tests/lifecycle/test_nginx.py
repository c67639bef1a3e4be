"""A real nginx (deploy/nginx/) in front of the media: auth_request asks PlayGate's /v1/authorize about each request."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import m3u8
import pytest

from playgate.domain import Stream
from playgate.media import EdgeSigner
from playgate.security import PlaybackTokens
from tests.lifecycle.conftest import Deployment, start_deployment
from tests.lifecycle.helpers import active_ids, ended_events, play, token_of
from tests.support.clients import OpenSocket, admin_client, api_client, new_user
from tests.support.servers import JWT_SECRET, free_port

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
START_TIMEOUT_S = 15.0


AUTH_CACHE_S = 2
EDGE_SECRET = "edge-secret-for-tests-0123456789abcdef"


def start_nginx(prefix: Path, upstream: str, media_dir: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """nginx with deploy/nginx's configuration rendered for this upstream and media folder, on a free port."""
    if NGINX is None:
        pytest.skip("nginx is not installed: `make test` installs the Debian package nginx")
    listen = f"127.0.0.1:{free_port()}"
    rendered = {
        **os.environ,
        "NGINX_PREFIX": str(prefix),
        "NGINX_LISTEN": listen,
        "PLAYGATE_UPSTREAM": upstream.removeprefix("http://"),
        "PLAYGATE_MEDIA_DIR": str(media_dir),
        "NGINX_WORKERS": "1",
        "NGINX_AUTH_CACHE": f"{AUTH_CACHE_S}s",
        **env,
    }
    subprocess.run([str(DEPLOY_DIR / "render")], env=rendered, check=True, capture_output=True, timeout=30)
    # As root, nginx would hand its workers to `nobody`, who cannot read a private temp folder.
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    with (prefix / "stderr.log").open("wb") as log:
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
            return proc, base
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"nginx did not answer in {START_TIMEOUT_S}s")
            time.sleep(0.1)


def stop_nginx(proc: subprocess.Popen[bytes]) -> None:
    """Stop nginx and wait for it."""
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def nginx(evict: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx with deploy/nginx's configuration, on a free port, in front of the evict_oldest deployment."""
    proc, base = start_nginx(Path(tmp_path_factory.mktemp("nginx")), evict.base_url, evict.media_dir)
    yield base
    stop_nginx(proc)


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
    nginx: str,
    evict: Deployment,
    evict_admin: httpx.AsyncClient,
    open_socket: OpenSocket,
) -> None:
    alice = await new_user(evict.base_url, evict_admin, limit=1)
    bob = await new_user(evict.base_url, evict_admin, limit=1)
    sock = await open_socket(evict.socket_url, token=alice.token)
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


async def authorize_count(base_url: str) -> int:
    """How many /v1/authorize requests this PlayGate process has answered (its /metrics)."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        text = (await client.get("/metrics")).text
    found = re.findall(r'^playgate_http_requests_total\{[^}]*route="/v1/authorize"[^}]*\} ([0-9.e+]+)$', text, re.M)
    return int(sum(float(n) for n in found))


async def raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as written (no client-side `..` clean-up): the status and the body."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 15.0)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_nginx_serves_hls_segments_from_disk_with_the_auth_answer_cached_per_token(
    nginx: str, evict: Deployment, evict_admin: httpx.AsyncClient
) -> None:
    user = await new_user(evict.base_url, evict_admin, limit=1)
    async with api_client(evict.base_url, user.token) as client, httpx.AsyncClient(base_url=nginx) as player:
        decision = await play(client, "1", "tv")
        url = decision["playbackUrl"]
        master = m3u8.loads((await player.get(url)).text)
        folder = evict.media_dir / "1"
        segments = []
        for variant in master.playlists:
            variant_url = url.rsplit("/", 1)[0] + "/" + variant.uri
            media = m3u8.loads((await player.get(variant_url)).text)
            segments += [(variant_url.rsplit("/", 1)[0] + "/" + s.uri, s.uri) for s in media.segments[:15]]
        before = await authorize_count(evict.base_url)
        started = time.monotonic()
        for segment_url, name in segments:
            answer = await player.get(segment_url)
            assert answer.status_code == 200, answer.text
            assert answer.content == (folder / name).read_bytes()
            assert answer.headers["content-type"] == "video/iso.segment"
        elapsed_s = time.monotonic() - started
        asked = await authorize_count(evict.base_url) - before
        # One authorisation per token per cache period (and the first), however many segments and renditions.
        assert 1 <= asked <= 1 + int(elapsed_s / AUTH_CACHE_S) + 1, (asked, len(segments), elapsed_s)
        assert asked < len(segments) // 3
        # The authorisations nginx did make renewed the lease.
        assert decision["streamId"] in await active_ids(client)


async def test_nginx_refuses_ended_forged_expired_and_traversing_hls_requests(
    nginx: str, evict: Deployment, evict_admin: httpx.AsyncClient
) -> None:
    alice = await new_user(evict.base_url, evict_admin, limit=1)
    bob = await new_user(evict.base_url, evict_admin, limit=1)
    async with (
        api_client(evict.base_url, alice.token) as a_client,
        api_client(evict.base_url, bob.token) as b_client,
        httpx.AsyncClient(base_url=nginx) as player,
    ):
        first = await play(a_client, "1", "tv")
        bobs = await play(b_client, "2", "tv")
        token, segment = token_of(first), "chunk-0-00001.m4s"
        assert (await player.get(f"/v1/play/{token}/{segment}")).status_code == 200
        # Another user's token opens that user's own video only: the folder comes from the token, not the URL.
        theirs = await player.get(f"/v1/play/{token_of(bobs)}/{segment}")
        assert theirs.content == (evict.media_dir / "2" / segment).read_bytes()
        # Forged and expired tokens: 401, nothing served.
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert (await player.get(f"/v1/play/{forged}/{segment}")).status_code == 401
        expired = PlaybackTokens(JWT_SECRET, 1).issue(
            Stream(first["streamId"], alice.id, "1", "", 0.0, 0.0), now=time.time() - 120
        )
        assert (await player.get(f"/v1/play/{expired}/{segment}")).status_code == 401
        # Path traversal, plain and encoded: never a file outside the video's folder.
        outside = (evict.media_dir / "1.mp4").read_bytes()
        for target in (
            f"/v1/play/{token}/../1.mp4",
            f"/v1/play/{token}/../../../../etc/passwd",
            f"/v1/play/{token}/%2e%2e/1.mp4",
            f"/v1/play/{token}/..%2f1.mp4",
            f"/v1/play/{token}/.%2e/.%2e/1.mp4",
            f"/v1/play/{token}/.hidden",
        ):
            status, body = await raw_get(nginx, target)
            assert status in (400, 401, 403, 404), (target, status)
            assert outside[:256] not in body
            assert b"root:" not in body

        # Evicted: the playlist (PlayGate's) is refused at once; segments within the auth cache period.
        second = await play(a_client, "3", "phone")
        assert second["status"] == "allowed"
        assert (await player.get(first["playbackUrl"])).status_code == 403
        deadline = time.monotonic() + AUTH_CACHE_S + 5.0
        while (await player.get(f"/v1/play/{token}/{segment}")).status_code == 200:
            assert time.monotonic() < deadline, "the ended stream's segments were still served"
            await asyncio.sleep(0.2)
        assert (await player.get(f"/v1/play/{token}/{segment}")).status_code == 403


async def test_nginx_secure_link_edge_urls_valid_expired_tampered(
    tmp_path_factory: pytest.TempPathFactory, media_dir: Path
) -> None:
    root = Path(tmp_path_factory.mktemp("edge"))
    server = await start_deployment(
        "embedded", root, media_dir, PLAYGATE_EDGE_SIGNING="nginx-secure-link", PLAYGATE_EDGE_SECRET=EDGE_SECRET,
        PLAYGATE_EDGE_LINK_TTL="30",
    )  # fmt: skip
    try:
        proc, base = start_nginx(root / "nginx", server.base_url, media_dir, PLAYGATE_EDGE_SECRET=EDGE_SECRET)
    except BaseException:  # skipped without nginx, or failed: the deployment is not left running
        await server.stop()
        raise
    try:
        async with await admin_client(server.base_url) as admin:
            user = await new_user(server.base_url, admin, limit=1)
        async with api_client(server.base_url, user.token) as client, httpx.AsyncClient(base_url=base) as player:
            decision = await play(client, "6", "tv")
            url = decision["playbackUrl"]
            assert url.startswith("/edge/")
            # The link carries no PlayGate token: the decision carries the stream's beside it, for the heartbeats.
            token = decision["playbackToken"]
            assert token not in url
            beat = await client.post(
                f"/v1/streams/{decision['streamId']}/heartbeat", headers={"X-Playback-Token": token}
            )
            assert beat.status_code == 200, beat.text
            master = await player.get(url)
            assert master.status_code == 200, master.text
            variant = m3u8.loads(master.text).playlists[0].uri
            playlist = await player.get(url.rsplit("/", 1)[0] + "/" + variant)
            assert playlist.status_code == 200
            segment_name = m3u8.loads(playlist.text).segments[0].uri
            segment = await player.get(url.rsplit("/", 1)[0] + "/" + segment_name)
            assert segment.content == (media_dir / "6" / segment_name).read_bytes()
            # Heartbeats hand out a fresh link, valid longer.
            await asyncio.sleep(1.1)
            fresh = (await client.post(f"/v1/streams/{decision['streamId']}/heartbeat")).json()["playbackUrl"]
            assert int(fresh.split("/")[3]) > int(url.split("/")[3])
            assert (await player.get(fresh)).status_code == 200
            # Tampered: another video, another stream, a changed expiry or signature.
            _, _, md5, expires, stream_id, video_id, file = url.split("/")
            for tampered in (
                f"/edge/{md5}/{expires}/{stream_id}/5/{file}",
                f"/edge/{md5}/{int(expires) + 3600}/{stream_id}/{video_id}/{file}",
                f"/edge/{md5[:-2]}{'BB' if md5.endswith('AA') else 'AA'}/{expires}/{stream_id}/{video_id}/{file}",
            ):
                assert (await player.get(tampered)).status_code == 403, tampered
            # Expired: a link signed with the right secret, in the past.
            old = EdgeSigner(EDGE_SECRET, 10).url(stream_id=stream_id, video_id=video_id, now=time.time() - 60)
            assert (await player.get(old)).status_code == 410
    finally:
        stop_nginx(proc)
        await server.stop()
