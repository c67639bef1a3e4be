"""HLS in the viewer: hls.js plays the gated playlist segment by segment; pausing lets the slot go; an evicted
stream's player is refused and says why."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.async_api import Page, Response, expect

from tests.browser.conftest import WEB_DIST, Browsing
from tests.browser.pages import card, expect_lost, log_in_viewer, play
from tests.support.clients import api_client, token_for
from tests.support.servers import ServerProcess, start_playgate

STREAM_TTL_S = 4
SEGMENT = re.compile(r"/v1/play/[^/]+/chunk-[^/]+\.m4s$")


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of this module's own: short leases (a paused player frees its slot soon), evict_oldest."""
    if not (WEB_DIST / "index.html").is_file():
        raise RuntimeError(f"The web app is not built ({WEB_DIST}): run `make web` (make test does).")
    server = start_playgate(
        tmp_path_factory.mktemp("browser-hls"),
        PLAYGATE_STREAM_TTL=str(STREAM_TTL_S),
        PLAYGATE_SWEEP_INTERVAL="0.5",
        PLAYGATE_POLICY="evict_oldest",
    )
    yield server
    server.stop()


def segment_log(page: Page) -> list[tuple[int, str]]:
    """Every segment answer the page gets, as (status, URL), in order."""
    seen: list[tuple[int, str]] = []

    def keep(response: Response) -> None:
        if SEGMENT.search(response.url):
            seen.append((response.status, response.url))

    page.on("response", keep)
    return seen


async def test_hls_js_plays_segments_and_a_paused_player_frees_its_slot(
    browsing: Browsing, web_server: ServerProcess
) -> None:
    page, _ = await browsing.page("user2 hls")
    segments = segment_log(page)
    await log_in_viewer(page, "user2", "user2")
    await play(page, "video1")
    video = card(page, "video1").locator("video")
    assert await video.evaluate("v => v.src.startsWith('blob:')"), "hls.js plays it through Media Source Extensions"
    # Three 2 s segments played, each fetched from the gate with the token in the path.
    await page.wait_for_function("v => v.currentTime > 6.2", arg=await video.element_handle(), timeout=30_000)
    assert len({url for status, url in segments if status == 200}) >= 3
    assert all(status == 200 for status, _ in segments)

    await video.evaluate("v => v.pause()")
    # Paused: hls.js stops fetching once its buffer is full, no heartbeat is sent, and the lease runs out; the
    # picture stays, and Play asks again.
    await expect(card(page, "video1").locator(".state")).to_have_text(
        "Paused: your slot is free again; Play asks for it", timeout=30_000
    )
    fetched = len(segments)
    async with api_client(web_server.base_url, await token_for(web_server.base_url, "user2", "user2")) as api:
        assert (await api.get("/v1/streams")).json() == []
    await page.wait_for_timeout(1000)
    assert len(segments) == fetched, "no segment request once the stream has ended"


async def test_an_evicted_streams_player_is_refused_and_shows_why(
    browsing: Browsing, web_server: ServerProcess
) -> None:
    page, _ = await browsing.page("user3 evicted")
    playlists: list[str] = []
    page.on("request", lambda request: playlists.append(request.url) if "master.m3u8" in request.url else None)
    await log_in_viewer(page, "user3", "user3")
    await play(page, "video2")
    assert playlists, "the player kit fetched the master playlist through hls.js"
    playback = playlists[0]
    assert "/v1/play/" in playback
    # user3's limit is 3: three more streams elsewhere evict this, the oldest.
    async with api_client(web_server.base_url, await token_for(web_server.base_url, "user3", "user3")) as api:
        for n in (3, 4, 5):
            body = {"videoId": str(n), "deviceId": f"tv{n}"}
            decision = await api.post("/v1/plays", params={"wait": 10}, json=body)
            assert decision.json()["status"] == "allowed"
    await expect_lost(page, "video2", "a newer stream took its slot (the oldest stream ends at the limit)")
    # The player's playlist URL is refused from now on, with the reason in problem+json.
    refused = await page.evaluate(
        "async url => { const r = await fetch(url); return [r.status, r.headers.get('content-type'), await r.json()] }",
        playback,
    )
    assert refused[0] == 403
    assert refused[1] == "application/problem+json"
    assert "ended" in refused[2]["detail"]
