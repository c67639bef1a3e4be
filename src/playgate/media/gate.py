"""The content gate: a playback token opens a stream's media only while the ledger holds the stream active, and
every media request renews the stream's lease (so a player that stops fetching lets its slot go)."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from playgate.domain import Decision, Status, Stream
from playgate.errors import Forbidden, NotFound, Unauthorized
from playgate.media.clips import MediaFiles, MediaLibrary
from playgate.security import PlaybackClaims, PlaybackTokens
from playgate.service import PlayGate

# A media request rewrites a lease only once a tenth of it has passed (a 90 s lease: at most every 9 s), so a
# player fetching many ranges a second costs reads; its stream still ends within the lease after it goes silent.
MEDIA_RENEW_SLACK = 0.1
TOKEN_HEADER = "X-Playback-Token"  # noqa: S105 (a header name, not a secret)
# What a media URL behind a web server must end with, so that a token opens only its own stream's file.
_MEDIA_PATH = re.compile(r"/(?P<stream>[^/?#]+)/(?P<video>[^/?#.]+)\.[A-Za-z0-9]+$")


def content_url(stream_id: str, token: str) -> str:
    """The relative URL of a stream's media at PlayGate's own content gate."""
    return f"/v1/streams/{stream_id}/content?token={token}"


def playback_url(tokens: PlaybackTokens, decision: Decision, now: float) -> str | None:
    """The playback URL of an allowed decision (a fresh token for its stream); None for a denial."""
    if decision.status is not Status.allowed or decision.stream_id is None:
        return None
    token = tokens.issue(user_id=decision.user_id, stream_id=decision.stream_id, video_id=decision.video_id, now=now)
    return content_url(decision.stream_id, token)


class ContentGate:
    """Checks playback tokens against the ledger, renews leases, and finds the media of admitted streams."""

    def __init__(
        self, *, gate: PlayGate, tokens: PlaybackTokens, library: MediaLibrary, clock: Callable[[], float]
    ) -> None:
        self.gate = gate
        self.tokens = tokens
        self.library = library
        self._clock = clock

    def url_for(self, stream: Stream) -> str:
        """A fresh playback URL for an active stream (heartbeat answers carry one)."""
        token = self.tokens.issue(
            user_id=stream.user_id, stream_id=stream.id, video_id=stream.video_id, now=self._clock()
        )
        return content_url(stream.id, token)

    def url_for_decision(self, decision: Decision) -> str | None:
        """The playback URL of an allowed decision; None for a denial."""
        return playback_url(self.tokens, decision, self._clock())

    async def open(self, token: str | None, stream_id: str) -> tuple[Stream, MediaFiles]:
        """Admit one media request of `stream_id` (401 bad token, 403 other or ended stream); its files."""
        stream = await self._admit(self._claims(token), stream_id=stream_id)
        return stream, await self.library.ensure(stream.video_id)

    async def authorize(self, original_uri: str | None, header_token: str | None) -> Stream:
        """Answer a web server's `auth_request`: the token from the header or the original URI's `?token=`.

        When the original URI is given, its path must end in `/{streamId}/{videoId}.<ext>` of the token's stream.
        """
        token = header_token
        stream_id = video_id = None
        if original_uri:
            try:
                parts = urlsplit(original_uri)
            except ValueError:
                raise Forbidden("X-Original-URI is not a URI.") from None
            token = token or next(iter(parse_qs(parts.query).get("token", [])), None)
            match = _MEDIA_PATH.search(parts.path)
            if match is None:
                raise Forbidden("The media path must end in /{streamId}/{videoId}.mp4.")
            stream_id, video_id = unquote(match["stream"]), unquote(match["video"])
        claims = self._claims(token)
        return await self._admit(claims, stream_id=stream_id or claims.stream_id, video_id=video_id)

    def _claims(self, token: str | None) -> PlaybackClaims:
        if not token:
            raise Unauthorized(f"Send the playback token: ?token= or the {TOKEN_HEADER} header.")
        return self.tokens.check(token)

    async def _admit(self, claims: PlaybackClaims, *, stream_id: str, video_id: str | None = None) -> Stream:
        if claims.stream_id != stream_id or (video_id is not None and claims.video_id != video_id):
            raise Forbidden("This playback token is for another stream.")
        try:
            return await self.gate.renew(claims.stream_id, claims.user_id, slack=MEDIA_RENEW_SLACK)
        except NotFound:
            raise Forbidden(f"Stream {stream_id!r} has ended; ask to play the video again.") from None
