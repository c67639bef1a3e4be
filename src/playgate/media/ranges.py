"""HTTP Range (RFC 9110 §14) for one byte range of a file: a pure parser, the file size passed in."""

from __future__ import annotations

import re

from playgate.errors import PlayGateError
from playgate.values import frozen

_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class RangeNotSatisfiable(PlayGateError):
    """The Range header asks for bytes the file does not have, or cannot be read as byte ranges (416)."""

    status = 416
    title = "Range not satisfiable"

    def __init__(self, detail: str, *, size_bytes: int) -> None:
        super().__init__(detail)
        self.size_bytes = size_bytes


@frozen
class ByteRange:
    """Bytes `start`..`end` of a file of `size_bytes`, both ends included (as Content-Range writes them)."""

    start: int
    end: int
    size_bytes: int

    @property
    def length_bytes(self) -> int:
        """How many bytes the range holds."""
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        """The Content-Range header value of a 206 answer."""
        return f"bytes {self.start}-{self.end}/{self.size_bytes}"


def parse_range(header: str | None, size_bytes: int) -> ByteRange | None:
    """The one range asked for by `header`; None for the whole file; RangeNotSatisfiable (416) otherwise.

    None when there is no header, when its unit is not `bytes` (RFC 9110 says ignore it) and when it asks for
    several ranges (answered with the whole file rather than a multipart body, as RFC 9110 allows). A `bytes`
    range that cannot be parsed, or that starts past the end of the file, is not satisfiable.
    """
    if header is None:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in specs:
        return None
    match = _SPEC.match(specs)
    if match is None or not (match[1] or match[2]):
        raise RangeNotSatisfiable(f"Range {header!r} is not a byte range.", size_bytes=size_bytes)
    first, last = match[1], match[2]
    if not first:
        suffix = int(last)
        if suffix == 0 or size_bytes == 0:
            raise RangeNotSatisfiable("A suffix range of 0 bytes asks for nothing.", size_bytes=size_bytes)
        return ByteRange(max(0, size_bytes - suffix), size_bytes - 1, size_bytes)
    start = int(first)
    end = int(last) if last else size_bytes - 1
    if start >= size_bytes:
        raise RangeNotSatisfiable(f"Range starts at byte {start}; the file has {size_bytes}.", size_bytes=size_bytes)
    if end < start:
        raise RangeNotSatisfiable(f"Range {header!r} ends before it starts.", size_bytes=size_bytes)
    return ByteRange(start, min(end, size_bytes - 1), size_bytes)
