"""Adaptive-stream files behind a path token: which file of a rendition folder a URL names (never one outside it),
its content type, and playlists (HLS, DASH) with absolute URIs made relative, so that every request a player
makes stays under the tokened path."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from playgate.errors import NotFound

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".m4a": "audio/mp4",
    ".ts": "video/mp2t",
    ".aac": "audio/aac",
    ".vtt": "text/vtt",
    ".key": "application/octet-stream",
}
PLAYLIST_SUFFIXES = frozenset({".m3u8", ".mpd"})
MAX_PATH_CHARS = 512
# One path segment a media file may have: no leading dot (so no `..`, no hidden files), no separators.
_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
# HLS: a URI line (any line not starting with `#`) or a tag's URI="..." attribute.
_HLS_ATTRIBUTE_URI = re.compile(r'(URI=")([^"]*)(")')
# DASH: <BaseURL>...</BaseURL>, and the attributes that hold URLs.
_DASH_BASE_URL = re.compile(r"(<BaseURL[^>]*>)([^<]*)(</BaseURL>)")
_DASH_ATTRIBUTE_URI = re.compile(r'(\b(?:media|initialization|sourceURL|href)=")([^"]*)(")')


def safe_relative(relative: str) -> list[str] | None:
    """The segments of a relative media path when each is a plain name (no `..`, no hidden file, none empty)."""
    parts = relative.split("/")
    if len(relative) > MAX_PATH_CHARS or not all(_SEGMENT.match(part) for part in parts):
        return None
    return parts


def media_file(root: Path, relative: str) -> Path:
    """The file `relative` (a URL path, `/`-separated) names inside `root`; NotFound for any other path.

    Every segment must be a plain name (no `..`, no hidden file, no empty segment), the file must exist, and its
    real path (symbolic links followed) must still be inside `root`.
    """
    parts = safe_relative(relative)
    if parts is None:
        raise NotFound(f"No media file {relative!r}.")
    real_root = root.resolve()
    candidate = real_root.joinpath(*parts).resolve()
    if not candidate.is_relative_to(real_root) or not candidate.is_file():
        raise NotFound(f"No media file {relative!r}.")
    return candidate


def content_type(path: Path | str) -> str:
    """The media type a player expects for a file of this name."""
    return CONTENT_TYPES.get(PurePosixPath(str(path)).suffix.lower(), "application/octet-stream")


def is_playlist(path: Path | str) -> bool:
    """True for an HLS playlist or a DASH manifest (served rewritten, never cached)."""
    return PurePosixPath(str(path)).suffix.lower() in PLAYLIST_SUFFIXES


def rewrite_playlist(text: str, *, root: Path, playlist: Path) -> str:
    """The playlist with each absolute URI that names a file of `root` made relative to the playlist's folder.

    Relative URIs are left alone (they inherit the tokened path); an absolute URI naming no file of `root` (a key
    server, another CDN) is left alone too: it is outside what the gate serves.
    """
    folder = playlist.parent

    def relative(uri: str) -> str:
        return _relative_uri(uri, root=root, folder=folder)

    def sub(match: re.Match[str]) -> str:
        return f"{match[1]}{relative(match[2])}{match[3]}"

    if playlist.suffix.lower() == ".mpd":
        return _DASH_ATTRIBUTE_URI.sub(sub, _DASH_BASE_URL.sub(sub, text))
    lines = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        if body.startswith("#"):
            lines.append(_HLS_ATTRIBUTE_URI.sub(sub, line))
        elif body.strip():
            lines.append(relative(body.strip()) + line[len(body) :])
        else:
            lines.append(line)
    return "".join(lines)


def _relative_uri(uri: str, *, root: Path, folder: Path) -> str:
    """`uri` made relative to `folder` when it is absolute (a scheme, or a leading `/`) and its path ends in the
    path of a file under `root` (the longest such ending wins); else `uri` unchanged."""
    parts = urlsplit(uri)
    if not (parts.scheme or uri.startswith("/")):
        return uri
    segments = [s for s in parts.path.split("/") if s]
    for start in range(len(segments)):
        tail = "/".join(segments[start:])
        try:
            target = media_file(root, tail)
        except NotFound:
            continue
        rel = posixpath.relpath(target.as_posix(), folder.resolve().as_posix())
        return rel + (f"?{parts.query}" if parts.query else "")
    return uri
