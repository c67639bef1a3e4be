"""HTTP Range at the content gate: the pure parser by a table, then real requests against the clip on disk."""

from __future__ import annotations

import httpx
import pytest

from playgate.media import ByteRange, RangeNotSatisfiable, parse_range
from tests.lifecycle.conftest import Deployment
from tests.lifecycle.helpers import clip_url, fetch, play
from tests.support.clients import api_client, new_user

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", ByteRange(0, 99, SIZE)),
        ("bytes=500-599", ByteRange(500, 599, SIZE)),
        ("bytes=900-", ByteRange(900, 999, SIZE)),
        ("bytes=-100", ByteRange(900, 999, SIZE)),
        ("bytes=-5000", ByteRange(0, 999, SIZE)),
        ("bytes=990-5000", ByteRange(990, 999, SIZE)),
        ("bytes=999-999", ByteRange(999, 999, SIZE)),
        ("BYTES = 1-2", ByteRange(1, 2, SIZE)),
        ("items=0-1", None),
        ("bytes=0-1,5-6", None),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=9-3", "bytes=abc", "bytes=-"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        parse_range(header, SIZE)
    assert raised.value.status == 416
    assert raised.value.size_bytes == SIZE


async def test_range_requests_at_the_content_gate(deny: Deployment, deny_admin: httpx.AsyncClient) -> None:
    base = deny.base_url
    user = await new_user(base, deny_admin, limit=1)
    async with api_client(base, user.token) as client:
        decision = await play(client, "2", "tv")
    url = clip_url(decision)
    whole = await fetch(base, url, range_header=None)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    clip = (deny.media_dir / "2.mp4").read_bytes()
    assert whole.content == clip
    assert clip[4:8] == b"ftyp", "an MP4 file"
    size = len(clip)
    middle = size // 2

    first = await fetch(base, url, range_header="bytes=0-99")
    assert (first.status_code, first.content) == (206, clip[:100])
    assert first.headers["content-range"] == f"bytes 0-99/{size}"
    assert first.headers["content-length"] == "100"

    mid = await fetch(base, url, range_header=f"bytes={middle}-{middle + 4095}")
    assert (mid.status_code, mid.content) == (206, clip[middle : middle + 4096])
    assert mid.headers["content-range"] == f"bytes {middle}-{middle + 4095}/{size}"

    suffix = await fetch(base, url, range_header="bytes=-500")
    assert (suffix.status_code, suffix.content) == (206, clip[-500:])
    assert suffix.headers["content-range"] == f"bytes {size - 500}-{size - 1}/{size}"

    open_ended = await fetch(base, url, range_header=f"bytes={middle}-")
    assert (open_ended.status_code, open_ended.content) == (206, clip[middle:])

    for bad in (f"bytes={size}-", "bytes=-0", "bytes=oops"):
        invalid = await fetch(base, url, range_header=bad)
        assert invalid.status_code == 416, bad
        assert invalid.headers["content-range"] == f"bytes */{size}"
        assert invalid.headers["content-type"] == "application/problem+json"
        assert invalid.json()["field"] == "Range"

    several = await fetch(base, url, range_header="bytes=0-1,10-11")
    assert (several.status_code, several.content) == (200, clip)

    etag = whole.headers["etag"]
    same = await fetch(base, url, range_header="bytes=0-9", **{"If-Range": etag})
    assert same.status_code == 206
    stale = await fetch(base, url, range_header="bytes=0-9", **{"If-Range": '"another-version"'})
    assert (stale.status_code, stale.content) == (200, clip)

    async with httpx.AsyncClient(base_url=base) as media:
        head = await media.head(url, headers={"Range": "bytes=0-9"})
    assert (head.status_code, head.content) == (206, b"")
    assert head.headers["content-length"] == "10"


async def test_posters_are_for_anyone(deny: Deployment) -> None:
    async with httpx.AsyncClient(base_url=deny.base_url) as anyone:
        video = (await anyone.get("/videos/3")).json()
        assert video["posterUrl"] == "/videos/3/poster"
        poster = await anyone.get(video["posterUrl"])
        assert poster.status_code == 200
        assert poster.headers["content-type"] == "image/jpeg"
        assert poster.content[:3] == b"\xff\xd8\xff", "a JPEG file"
        missing = await anyone.get("/videos/no-such-video/poster")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
