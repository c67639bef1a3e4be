"""The media library: real clips and posters made with the ffmpeg imageio-ffmpeg ships, once, atomically."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from xml.etree import ElementTree

import m3u8
import psutil
import pytest

from playgate.errors import NotFound, Unavailable
from playgate.media import MediaLibrary, media_file, rewrite_playlist
from playgate.media.clips import SEGMENT_S


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
    assert sorted(p.name for p in (tmp_path / "media").iterdir()) == ["7", "7.jpg", "7.mp4", "8", "8.jpg", "8.mp4"]


async def test_the_adaptive_set_is_hls_and_dash_over_the_same_segments(tmp_path: Path) -> None:
    library = MediaLibrary(tmp_path / "media")
    folder = await library.ensure_adaptive("5")
    master = m3u8.load(str(folder / "master.m3u8"))
    assert master.is_variant
    bandwidths = sorted(p.stream_info.bandwidth for p in master.playlists)
    assert len(bandwidths) >= 2, "at least two bitrates"
    assert bandwidths[0] < bandwidths[-1]
    total_s = 0.0
    for variant in master.playlists:
        media = m3u8.load(str(folder / variant.uri))
        assert media.is_endlist
        assert media.target_duration == SEGMENT_S
        assert media.segments[0].init_section is not None, "fMP4: an init segment"
        assert all(s.duration <= SEGMENT_S + 0.01 for s in media.segments)
        assert all((folder / s.uri).is_file() for s in media.segments)
        total_s = sum(s.duration for s in media.segments)
    assert total_s >= 60, "long enough to exercise a lease"
    mpd = ElementTree.parse(folder / "manifest.mpd").getroot()
    namespace = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    representations = mpd.findall(".//d:Representation", namespace)
    assert len(representations) == len(master.playlists)
    template = mpd.find(".//d:SegmentTemplate", namespace)
    assert template is not None
    assert (folder / template.attrib["initialization"].replace("$RepresentationID$", "0")).is_file()
    assert await library.ensure_adaptive("5") == folder, "made once"
    assert [p.name for p in (tmp_path / "media").iterdir()] == ["5"], "no scratch folder left behind"


def test_a_media_path_never_leaves_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "hi").mkdir(parents=True)
    (root / "hi" / "a.m4s").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("no")
    (root / "link.m4s").symlink_to(tmp_path / "secret.txt")
    assert media_file(root, "hi/a.m4s") == (root / "hi" / "a.m4s").resolve()
    for bad in ["../secret.txt", "hi/../../secret.txt", "/etc/passwd", "hi//a.m4s", ".hidden", "link.m4s", "", "hi"]:
        with pytest.raises(NotFound):
            media_file(root, bad)


def test_absolute_uris_in_playlists_are_made_relative(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "hi").mkdir(parents=True)
    for name in ("hi/init.mp4", "hi/seg1.ts", "hi/index.m3u8", "key.bin"):
        (root / name).write_bytes(b"x")
    hls = (
        '#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI="https://cdn.example/v/key.bin"\n'
        '#EXT-X-MAP:URI="/v/hi/init.mp4"\n#EXTINF:2.0,\nhttps://cdn.example/v/hi/seg1.ts?x=1\n'
        "#EXTINF:2.0,\nseg2.ts\n#EXTINF:2.0,\nhttps://elsewhere.example/other.ts\n"
    )
    out = rewrite_playlist(hls, root=root, playlist=root / "hi" / "index.m3u8")
    assert 'URI="../key.bin"' in out
    assert 'URI="init.mp4"' in out
    assert "\nseg1.ts?x=1\n" in out
    assert "\nseg2.ts\n" in out, "relative URIs are left alone"
    assert "https://elsewhere.example/other.ts" in out, "what the folder does not hold is not the gate's"
    dash = '<MPD><BaseURL>https://cdn.example/v/hi/</BaseURL><SegmentTemplate media="/v/hi/seg1.ts"/></MPD>'
    (root / "manifest.mpd").write_text(dash)
    out = rewrite_playlist(dash, root=root, playlist=root / "manifest.mpd")
    assert 'media="hi/seg1.ts"' in out


@pytest.mark.parametrize("video_id", ["../etc", "a/b", "", "x" * 65, "a.b"])
def test_ids_that_cannot_name_a_file_have_no_media(tmp_path: Path, video_id: str) -> None:
    with pytest.raises(NotFound):
        MediaLibrary(tmp_path).files(video_id)


async def test_a_failing_ffmpeg_is_unavailable_and_leaves_nothing_behind(tmp_path: Path) -> None:
    library = MediaLibrary(tmp_path / "media", ffmpeg="/bin/false")
    with pytest.raises(Unavailable, match=r"could not make 1\.mp4"):
        await library.ensure("1")
    assert list((tmp_path / "media").iterdir()) == [], "no half-made file is left behind"


@pytest.mark.parametrize("make", ["clip", "adaptive"])
async def test_making_media_cancelled_kills_ffmpeg_and_leaves_nothing_behind(tmp_path: Path, make: str) -> None:
    """What a process does when it stops while the demo media is still being made. The ffmpeg here writes its output
    file, then takes its time (a real one may finish first), so that the cancellation finds it running."""
    slow = tmp_path / "slow-ffmpeg"
    slow.write_text(f"#!{sys.executable}\nimport sys, time\nopen(sys.argv[-1], 'w').write('partial')\ntime.sleep(30)\n")
    slow.chmod(0o755)
    library = MediaLibrary(tmp_path / "media", ffmpeg=str(slow))
    making = asyncio.create_task(library.ensure("1") if make == "clip" else library.ensure_adaptive("1"))
    ffmpeg: list[psutil.Process] = []
    for _ in range(200):  # until it runs and has written (at most 10 s)
        ffmpeg = [p for p in psutil.Process().children() if str(slow) in " ".join(p.cmdline())]
        if ffmpeg and any(f.name.endswith("partial") for f in (tmp_path / "media").rglob("*")):
            break
        await asyncio.sleep(0.05)
    assert ffmpeg, "ffmpeg started and wrote"
    making.cancel()
    with pytest.raises(asyncio.CancelledError):
        await making
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ffmpeg), "ffmpeg was killed"
    assert list((tmp_path / "media").iterdir()) == [], "no half-made file is left behind"
