"""Real media for every video and the content gate that serves it only to streams that are still active."""

from playgate.media.clips import MediaFiles, MediaLibrary
from playgate.media.edge import EdgeSigner
from playgate.media.gate import ContentGate, PlaybackLinks, dash_url, play_url
from playgate.media.playlists import content_type, is_playlist, media_file, rewrite_playlist
from playgate.media.ranges import ByteRange, RangeNotSatisfiable, parse_range

__all__ = [
    "ByteRange",
    "ContentGate",
    "EdgeSigner",
    "MediaFiles",
    "MediaLibrary",
    "PlaybackLinks",
    "RangeNotSatisfiable",
    "content_type",
    "dash_url",
    "is_playlist",
    "media_file",
    "parse_range",
    "play_url",
    "rewrite_playlist",
]
