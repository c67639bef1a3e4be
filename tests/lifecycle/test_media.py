"""The media library: real clips and posters made with the ffmpeg imageio-ffmpeg ships, once, atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from playgate.errors import NotFound, Unavailable
from playgate.media import MediaLibrary


async def test_clips_and_posters_are_made_once(tmp_path: Path) -> None:
    library = MediaLibrary(tmp_path / "media")
    assert await library.prepare(["7", "8"]) == 2
    files = library.files("7")
    clip = files.clip.read_bytes()
    assert clip[4:8] == b"ftyp", "an MP4 file"
    assert b"avc1" in clip[:4096], "H.264, its index up front (faststart)"
    assert files.poster.read_bytes()[:3] == b"\xff\xd8\xff", "a JPEG poster"
    assert library.files("8").clip.read_bytes() != clip, "each video looks different"
    made_at = files.clip.stat().st_mtime_ns
    assert await library.prepare(["7", "8"]) == 0
    assert (await library.ensure("7")).clip.stat().st_mtime_ns == made_at
    assert sorted(p.name for p in (tmp_path / "media").iterdir()) == ["7.jpg", "7.mp4", "8.jpg", "8.mp4"]


@pytest.mark.parametrize("video_id", ["../etc", "a/b", "", "x" * 65, "a.b"])
def test_ids_that_cannot_name_a_file_have_no_media(tmp_path: Path, video_id: str) -> None:
    with pytest.raises(NotFound):
        MediaLibrary(tmp_path).files(video_id)


async def test_a_failing_ffmpeg_is_unavailable_and_leaves_nothing_behind(tmp_path: Path) -> None:
    library = MediaLibrary(tmp_path / "media", ffmpeg="/bin/false")
    with pytest.raises(Unavailable, match=r"could not make 1\.mp4"):
        await library.ensure("1")
    assert list((tmp_path / "media").iterdir()) == [], "no half-made file is left behind"
