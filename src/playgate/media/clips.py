"""Real media made offline with the ffmpeg imageio-ffmpeg ships: a small clip (H.264 MP4) and a poster per video,
and an adaptive rendition set (HLS and DASH over the same fMP4 segments)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from playgate.errors import NotFound, Unavailable
from playgate.values import frozen

log = logging.getLogger("playgate.media")

CLIP_SECONDS = 4
CLIP_SIZE = "320x180"
CLIP_FPS = 24
POSTER_AT_S = 1
FFMPEG_TIMEOUT_S = 60.0
# The adaptive set: long enough to exercise a lease, 2 s segments (a keyframe at each), two bitrates, small frames
# and x264's fastest preset so that making six videos costs seconds, not minutes.
ADAPTIVE_SECONDS = 64
SEGMENT_S = 2
RENDITIONS = ((320, 180, "400k"), (160, 90, "150k"))
MASTER_PLAYLIST = "master.m3u8"
DASH_MANIFEST = "manifest.mpd"
# Ids that are safe as file names; catalogue ids are narrower than this already, but a path is built from them.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@frozen
class MediaFiles:
    """The clip and the poster of one video."""

    clip: Path
    poster: Path
    adaptive: Path


def _ffmpeg_exe() -> str:
    # Imported here: finding the binary is I/O, and only a process that serves media needs it.
    import imageio_ffmpeg

    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as exc:
        raise Unavailable(f"No ffmpeg to make the media with: {exc}") from exc


def _hue_deg(video_id: str) -> int:
    """A hue shift of its own for each video, so that two clips are told apart at a glance."""
    return int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:2], "big") % 360


class MediaLibrary:
    """Finds, or makes once, the clip (`<id>.mp4`) and poster (`<id>.jpg`) of a video in one folder.

    Files are written under a temporary name and renamed into place, so that processes sharing the folder
    (or nginx serving it) never see half a file.
    """

    def __init__(self, folder: Path, *, ffmpeg: str | None = None) -> None:
        self.folder = folder
        self._ffmpeg = ffmpeg
        self._locks: dict[str, asyncio.Lock] = {}

    def files(self, video_id: str) -> MediaFiles:
        """Where the video's files live (made or not); NotFound for an id that cannot name a file."""
        if not _SAFE_ID.match(video_id):
            raise NotFound(f"No media for video {video_id!r}.")
        return MediaFiles(self.folder / f"{video_id}.mp4", self.folder / f"{video_id}.jpg", self.folder / video_id)

    async def ensure(self, video_id: str) -> MediaFiles:
        """The video's clip and poster, made first if missing."""
        files = self.files(video_id)
        if files.clip.exists() and files.poster.exists():
            return files
        async with self._locks.setdefault(video_id, asyncio.Lock()):
            if not files.clip.exists():
                await self._make_clip(video_id, files.clip)
            if not files.poster.exists():
                await self._make_poster(files.clip, files.poster)
        return files

    async def ensure_adaptive(self, video_id: str, source: str | None = None) -> Path:
        """The folder of the video's HLS and DASH renditions (`master.m3u8`, `manifest.mpd`): made first if
        missing, or, for a video with media of its own (`source`, a checked folder), a link to that folder.

        The link lives where a made set would (`<media dir>/<videoId>`), so a web server serving the media folder
        serves either alike; it follows the catalogue, so every process sharing the folder agrees."""
        folder = self.files(video_id).adaptive
        if _current(folder, source):
            return folder
        async with self._locks.setdefault(f"{video_id}/adaptive", asyncio.Lock()):
            if _current(folder, source):
                return folder
            if folder.is_symlink():
                folder.unlink()
            if source is not None:
                shutil.rmtree(folder, ignore_errors=True)  # a set made before the video had its own media
                link = folder.with_name(f".{folder.name}.{os.getpid()}.link")
                link.unlink(missing_ok=True)
                self.folder.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source, target_is_directory=True)
                link.replace(folder)
            else:
                await self._make_adaptive(video_id, folder)
        return folder

    def _complete(self, video_id: str) -> bool:
        files = self.files(video_id)
        return files.clip.exists() and files.poster.exists() and files.adaptive.exists()

    async def prepare(self, videos: Iterable[str | tuple[str, str | None]]) -> int:
        """Make whatever files of these videos (ids, or (id, source) pairs) are missing, one video at a time;
        how many videos needed it."""
        made = 0
        for video in videos:
            video_id, source = (video, None) if isinstance(video, str) else video
            if not _SAFE_ID.match(video_id):
                continue
            if self._complete(video_id) and _current(self.files(video_id).adaptive, source):
                continue
            await self.ensure(video_id)
            await self.ensure_adaptive(video_id, source)
            made += 1
        if made:
            log.info("made media for %d video(s) in %s", made, self.folder)
        return made

    async def _make_clip(self, video_id: str, target: Path) -> None:
        source = f"testsrc2=size={CLIP_SIZE}:rate={CLIP_FPS}:duration={CLIP_SECONDS}"
        await self._run(
            target,
            "-f", "lavfi", "-i", source,
            "-vf", f"hue=h={_hue_deg(video_id)}",
            # Baseline H.264 in yuv420p with the index up front: what every browser's <video> plays at once.
            "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "baseline", "-pix_fmt", "yuv420p",
            "-g", str(CLIP_FPS), "-an", "-movflags", "+faststart", "-f", "mp4",
        )  # fmt: skip

    async def _make_adaptive(self, video_id: str, folder: Path) -> None:
        """Both renditions in one ffmpeg run, written by its DASH muxer: the MPD, and (`hls_playlist`) a master
        playlist with one media playlist per rendition over the very same fMP4 segments. Made in a scratch folder
        renamed into place, so a reader (or nginx) sees the whole set or nothing."""
        scratch = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        source = f"testsrc2=size={RENDITIONS[0][0]}x{RENDITIONS[0][1]}:rate={CLIP_FPS}:duration={ADAPTIVE_SECONDS}"
        scaled = "".join(f"[v{i}]scale={w}:{h}[s{i}];" for i, (w, h, _) in enumerate(RENDITIONS))
        graph = f"[0:v]hue=h={_hue_deg(video_id)},split={len(RENDITIONS)}" + "".join(
            f"[v{i}]" for i in range(len(RENDITIONS))
        )
        maps = [arg for i in range(len(RENDITIONS)) for arg in ("-map", f"[s{i}]")]
        rates = [arg for i, (_, _, rate) in enumerate(RENDITIONS) for arg in (f"-b:v:{i}", rate)]
        gop = str(CLIP_FPS * SEGMENT_S)
        try:
            await self._run(
                scratch / DASH_MANIFEST,
                "-f", "lavfi", "-i", source,
                "-filter_complex", f"{graph};{scaled.rstrip(';')}", *maps,
                "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "baseline", "-pix_fmt", "yuv420p",
                "-g", gop, "-keyint_min", gop, "-sc_threshold", "0", *rates,
                "-f", "dash", "-seg_duration", str(SEGMENT_S), "-use_template", "1", "-use_timeline", "0",
                "-adaptation_sets", "id=0,streams=v", "-hls_playlist", "1", "-hls_master_name", MASTER_PLAYLIST,
                "-init_seg_name", "init-$RepresentationID$.m4s",
                "-media_seg_name", "chunk-$RepresentationID$-$Number%05d$.m4s",
                atomic=False,
            )  # fmt: skip
            try:
                scratch.rename(folder)
            except OSError:
                if not folder.is_dir():  # noqa: ASYNC240 (one stat, after a failed rename)
                    raise
                # Another process sharing the folder made the set first; theirs is as good as ours.
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _make_poster(self, clip: Path, target: Path) -> None:
        await self._run(target, "-ss", str(POSTER_AT_S), "-i", str(clip), "-frames:v", "1", "-q:v", "4", "-f", "image2")

    async def _run(self, target: Path, *args: str, atomic: bool = True) -> None:
        """Run ffmpeg writing `target` (atomically, unless it is in a scratch folder already); Unavailable with
        ffmpeg's own words if it fails."""
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial") if atomic else target
        exe = self._ffmpeg or _ffmpeg_exe()
        proc = await asyncio.create_subprocess_exec(
            exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args, str(partial),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # A session of its own: a Ctrl-C in the terminal stops PlayGate cleanly, not its ffmpeg mid-clip.
            start_new_session=True,
        )  # fmt: skip
        try:
            # asyncio.timeout, not wait_for: under Python 3.11's wait_for a stopping process's cancellation of the
            # media task was seen lost (the task went on to the next video's ffmpeg, cancelling() == 1).
            async with asyncio.timeout(FFMPEG_TIMEOUT_S):
                _, stderr = await proc.communicate()
        except TimeoutError:
            await _abandon(proc, partial)
            raise Unavailable(f"ffmpeg took over {FFMPEG_TIMEOUT_S:.0f}s making {target.name}") from None
        except asyncio.CancelledError:  # the process stops: no ffmpeg left running, no partial file left behind
            await _abandon(proc, partial)
            raise
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            words = stderr.decode(errors="replace").strip()[-500:]
            raise Unavailable(f"ffmpeg could not make {target.name} (exit {proc.returncode}): {words}")
        if atomic:
            partial.replace(target)


async def _abandon(proc: asyncio.subprocess.Process, partial: Path) -> None:
    """Kill an ffmpeg run and remove what it wrote."""
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    partial.unlink(missing_ok=True)  # noqa: ASYNC240 (one unlink, after ffmpeg ended)


def _current(folder: Path, source: str | None) -> bool:
    """True when the video's set is in place: its own media linked, or a made set (which appears whole)."""
    if source is not None:
        return folder.is_symlink() and os.readlink(folder) == source
    return folder.exists() and not folder.is_symlink()
