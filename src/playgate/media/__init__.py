"""Real media for every video and the content gate that serves it only to streams that are still active."""

from playgate.media.clips import MediaFiles, MediaLibrary
from playgate.media.gate import ContentGate, playback_url
from playgate.media.ranges import ByteRange, RangeNotSatisfiable, parse_range

__all__ = [
    "ByteRange",
    "ContentGate",
    "MediaFiles",
    "MediaLibrary",
    "RangeNotSatisfiable",
    "parse_range",
    "playback_url",
]
