"""A video pointed at a folder of the admin's own HLS/DASH media (`source`): checked against PLAYGATE_MEDIA_ROOTS
(no way out by `..` or a symbolic link), then served by the gate, absolute URIs rewritten, like the demo media."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import m3u8
import pytest
import pytest_asyncio

from playgate.media import MediaLibrary
from tests.lifecycle.conftest import Deployment, start_deployment
from tests.lifecycle.helpers import play
from tests.support.clients import admin_client, api_client, new_user


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one folder own media may come from."""
    return Path(tmp_path_factory.mktemp("own-media"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def own(tmp_path_factory: pytest.TempPathFactory, media_dir: Path, media_root: Path) -> AsyncIterator[Deployment]:
    """An embedded PlayGate that accepts own media under `media_root`."""
    root = Path(tmp_path_factory.mktemp("sources"))
    deployment = await start_deployment("embedded", root, media_dir, PLAYGATE_MEDIA_ROOTS=str(media_root))
    yield deployment
    await deployment.stop()


async def own_set(media_dir: Path, media_root: Path, name: str) -> Path:
    """A folder of HLS media as a platform would bring it: a copy of a made set, one variant URI absolute."""
    made = await MediaLibrary(media_dir).ensure_adaptive("2")
    folder = media_root / name
    shutil.copytree(made, folder)
    master = (folder / "master.m3u8").read_text()
    (folder / "master.m3u8").write_text(master.replace("\nmedia_1.m3u8", f"\nhttps://cdn.example/{name}/media_1.m3u8"))
    return folder


async def test_an_admin_points_a_video_at_own_media_and_the_gate_serves_it(
    own: Deployment, media_dir: Path, media_root: Path, tmp_path: Path
) -> None:
    folder = await own_set(media_dir, media_root, "show")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "master.m3u8").write_text("#EXTM3U\n")
    (media_root / "escape").symlink_to(tmp_path / "elsewhere")
    (media_root / "empty").mkdir()
    async with await admin_client(own.base_url) as admin:
        # A video of its own: no other test of the session plays it, so its media folder is this test's alone.
        created = await admin.post("/v1/videos", json={"title": "own show", "url": "/show", "source": str(folder)})
        assert created.status_code == 201, created.text
        video_id = created.json()["id"]
        for bad in (
            str(tmp_path / "elsewhere"),  # outside the roots
            f"{media_root}/../{tmp_path.name}/elsewhere",  # out by `..`
            str(media_root / "escape"),  # out by a symbolic link
            str(media_root / "empty"),  # no master playlist
            str(media_root / "missing"),
            "relative/folder",
        ):
            answer = await admin.patch(f"/v1/videos/{video_id}", json={"source": bad})
            assert answer.status_code == 422, (bad, answer.text)
            assert answer.json()["field"] == "source"
        answer = await admin.post(
            "/v1/videos", json={"title": "bad", "url": "/bad", "source": str(media_root / "empty")}
        )
        assert answer.status_code == 422
        answer = await admin.patch(f"/v1/videos/{video_id}", json={"source": str(folder)})
        assert answer.status_code == 200, answer.text
        assert answer.json()["source"] == str(folder.resolve())
        public = (await admin.get(f"/videos/{video_id}")).json()
        assert "source" not in public, "the public video JSON names no server path"
        user = await new_user(own.base_url, admin, limit=1)

        async with api_client(own.base_url, user.token) as client, httpx.AsyncClient(base_url=own.base_url) as player:
            decision = await play(client, video_id, "tv")
            url = decision["playbackUrl"]
            base = url.rsplit("/", 1)[0]
            master = m3u8.loads((await player.get(url)).text)
            assert [p.uri for p in master.playlists] == ["media_0.m3u8", "media_1.m3u8"], "absolute URI made relative"
            media = m3u8.loads((await player.get(f"{base}/media_1.m3u8")).text)
            segment = await player.get(f"{base}/{media.segments[0].uri}")
            assert segment.status_code == 200
            assert segment.content == (folder / media.segments[0].uri).read_bytes()

            # Back to PlayGate's own media: the link goes, a made set takes its place.
            assert (await admin.patch(f"/v1/videos/{video_id}", json={"source": None})).json()["source"] is None
            made = await MediaLibrary(media_dir).ensure_adaptive(video_id)  # made here: it outlasts a short lease
            assert made.is_dir()
            assert not made.is_symlink()
            again = await play(client, video_id, "tv")
            answer = await player.get(again["playbackUrl"])
            assert answer.status_code == 200
            assert answer.text == (made / "master.m3u8").read_text()
