"""Signed, short-lived media links in nginx's `secure_link` format, for an edge that checks them without asking
PlayGate: `<prefix>/<md5>/<expires>/<streamId>/<videoId>/master.m3u8`, where md5 is the base64url MD5 (no padding)
of `"<expires>/<streamId>/<videoId> <secret>"`. The signature covers the folder, not one file, so every relative URI
of the playlists inherits it. Revocation waits for `expires`: that is the trade-off against auth_request."""

from __future__ import annotations

import base64
import hashlib

from playgate.media.clips import MASTER_PLAYLIST
from playgate.values import frozen


@frozen
class EdgeSigner:
    """Signs links to a stream's adaptive set for an nginx `secure_link` edge sharing `secret`."""

    secret: str
    link_ttl_s: int
    prefix: str = "/edge"

    def signature(self, *, expires_at: int, stream_id: str, video_id: str) -> str:
        """The `secure_link_md5` value nginx computes for this folder and expiry."""
        digest = hashlib.md5(
            f"{expires_at}/{stream_id}/{video_id} {self.secret}".encode(), usedforsecurity=False
        ).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def url(self, *, stream_id: str, video_id: str, now: float, file: str = MASTER_PLAYLIST) -> str:
        """A link to `file` of the stream's set, valid for link_ttl_s from `now`."""
        expires_at = int(now) + self.link_ttl_s
        md5 = self.signature(expires_at=expires_at, stream_id=stream_id, video_id=video_id)
        return f"{self.prefix}/{md5}/{expires_at}/{stream_id}/{video_id}/{file}"
