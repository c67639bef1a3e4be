"""The content gate: a playback token opens a stream's media only while the ledger holds the stream active, and
every media request renews the stream's lease (so a player that stops fetching lets its slot go).

Two URL shapes carry the token. Adaptive streams put it in the path, `/v1/play/{token}/master.m3u8`, so that every
relative URI of the playlists (variants, init segments, segments) inherits it and any player works unchanged. A
single file keeps the query form, `/v1/streams/{streamId}/content?token=`."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from playgate.bus.protocol import Playback
from playgate.catalog.service import Catalog
from playgate.domain import Decision, Reason, Status, Stream
from playgate.errors import Forbidden, Invalid, NotFound, Unauthorized
from playgate.media.clips import DASH_MANIFEST, MASTER_PLAYLIST, MediaFiles, MediaLibrary
from playgate.media.edge import EdgeSigner
from playgate.media.playlists import media_file, safe_relative
from playgate.media.sources import check_source
from playgate.security import PlaybackClaims, PlaybackTokens
from playgate.service import PlayGate

# A media request rewrites a lease only once a tenth of it has passed (a 90 s lease: at most every 9 s), so a
# player fetching many ranges a second costs reads; its stream still ends within the lease after it goes silent.
MEDIA_RENEW_SLACK = 0.1
TOKEN_HEADER = "X-Playback-Token"  # noqa: S105 (a header name, not a secret)
# What a media URL behind a web server must end with, so that a token opens only its own stream's file.
_MEDIA_PATH = re.compile(r"/(?P<stream>[^/?#]+)/(?P<video>[^/?#.]+)\.[A-Za-z0-9]+$")
# An adaptive-stream URL: the token is the path segment after `/play/`, the file follows it.
PLAY_PREFIX = "/v1/play"
_PLAY_PATH = re.compile(r"/play/(?P<token>[A-Za-z0-9_.~-]+)/(?P<file>[^?#]+)$")


def content_url(stream_id: str, token: str) -> str:
    """The relative URL of a stream's media at PlayGate's own content gate."""
    return f"/v1/streams/{stream_id}/content?token={token}"


def play_url(token: str, file: str = MASTER_PLAYLIST) -> str:
    """The relative URL of a file of a stream's adaptive set (default its HLS master playlist), token in the path."""
    return f"{PLAY_PREFIX}/{token}/{file}"


def dash_url(playback: str) -> str:
    """The DASH manifest beside the master playlist of a `playbackUrl`."""
    return playback.rsplit("/", 1)[0] + f"/{DASH_MANIFEST}"


class PlaybackLinks:
    """The playback of a stream: its URL (its master playlist at the content gate, a fresh playback token in the
    path; or, with edge signing, a signed short-lived link that the edge checks alone) and its playback token."""

    def __init__(self, tokens: PlaybackTokens, signer: EdgeSigner | None = None) -> None:
        self.tokens = tokens
        self.signer = signer

    def for_stream(self, stream: Stream, now: float) -> Playback:
        """A fresh playback URL and token for one stream: the token the URL carries, or, with edge signing, one
        issued beside the edge's link (which carries none), for the heartbeats of an outage. The token names the
        stream's user, video, device, start and whether it plays away."""
        token = self.tokens.issue(stream, now=now)
        if self.signer is not None:
            return Playback(self.signer.url(stream_id=stream.id, video_id=stream.video_id, now=now), token)
        return Playback(play_url(token), token)

    def for_decision(self, decision: Decision, now: float) -> Playback | None:
        """The playback of an allowed decision, its token naming the stream as a heartbeat's would: its start (the
        decision's instant for a new stream, earlier when the device asked again for the stream it plays) and
        whether it plays away. A decision stored before decisions carried them names the decision's instant, at
        home. None for a denial."""
        if decision.status is not Status.allowed or decision.stream_id is None:
            return None
        expires_at = decision.decided_at if decision.expires_at is None else decision.expires_at
        started_at = decision.decided_at if decision.started_at is None else decision.started_at
        stream = Stream(
            decision.stream_id,
            decision.user_id,
            decision.video_id,
            decision.device_id,
            started_at,
            expires_at,
            away=decision.away,
        )
        return self.for_stream(stream, now)


class ContentGate:
    """Checks playback tokens against the ledger, renews leases, and finds the media of admitted streams."""

    def __init__(
        self,
        *,
        gate: PlayGate,
        catalog: Catalog,
        links: PlaybackLinks,
        library: MediaLibrary,
        media_roots: Sequence[Path],
        clock: Callable[[], float],
    ) -> None:
        self.gate = gate
        self._catalog = catalog
        self._media_roots = tuple(media_roots)
        self.links = links
        self.tokens = links.tokens
        self.library = library
        self._clock = clock

    def playback_for(self, stream: Stream) -> Playback:
        """A fresh playback URL and token for an active stream (heartbeat answers carry them: with edge signing,
        that is how a playing client gets a link that outlives the one it has)."""
        return self.links.for_stream(stream, self._clock())

    def playback_for_decision(self, decision: Decision) -> Playback | None:
        """The playback URL and token of an allowed decision; None for a denial."""
        return self.links.for_decision(decision, self._clock())

    def check_source(self, source: str | None) -> str | None:
        """A video's own media folder, checked against PLAYGATE_MEDIA_ROOTS (its real path); None stays None."""
        return None if source is None else check_source(source, self._media_roots)

    async def open(self, token: str | None, stream_id: str) -> tuple[Stream, MediaFiles]:
        """Admit one media request of `stream_id` (401 bad token, 403 other or ended stream); its files."""
        stream = await self._admit(self._claims(token), stream_id=stream_id)
        return stream, await self.library.ensure(stream.video_id)

    async def open_adaptive(self, token: str, relative: str) -> tuple[Stream, Path, Path]:
        """Admit one request of a stream's adaptive set (401 bad token, 403 ended stream); the rendition folder
        and the file `relative` names in it (404 for any path outside it)."""
        claims = self._claims(token)
        # The set first (made on the spot if the background task has not got to it): making it may take longer
        # than a short lease, which is renewed after. The catalogue says whether the video has media of its own.
        try:
            video = await self._catalog.get_video(claims.video_id)
        except NotFound:
            raise Forbidden(
                f"Video {claims.video_id!r} is no longer in the catalogue.", reason=Reason.video_deleted.value
            ) from None
        folder = await self.library.ensure_adaptive(claims.video_id, video.source)
        stream = await self._admit(claims, stream_id=claims.stream_id)
        return stream, folder, media_file(folder, relative)

    async def authorize(self, original_uri: str | None, header_token: str | None) -> Stream:
        """Answer a web server's `auth_request`: the token from the original URI's path (`/play/{token}/<file>`),
        the header, or the URI's `?token=`.

        A single-file URI's path must end in `/{streamId}/{videoId}.<ext>` of the token's stream; an adaptive
        URI's file must be a plain relative path (no `..`, no hidden file).
        """
        if not original_uri:
            claims = self._claims(header_token)
            return await self._admit(claims, stream_id=claims.stream_id)
        try:
            parts = urlsplit(original_uri)
        except ValueError:
            raise Forbidden("X-Original-URI is not a URI.") from None
        played = _PLAY_PATH.search(parts.path)
        if played is not None:
            if safe_relative(unquote(played["file"])) is None:
                raise Forbidden("The media path names no file of the stream.")
            claims = self._claims(played["token"])
            return await self._admit(claims, stream_id=claims.stream_id)
        token = header_token or next(iter(parse_qs(parts.query).get("token", [])), None)
        match = _MEDIA_PATH.search(parts.path)
        if match is None:
            raise Forbidden("The media path must end in /play/{token}/<file> or /{streamId}/{videoId}.mp4.")
        claims = self._claims(token)
        stream_id, video_id = unquote(match["stream"]), unquote(match["video"])
        return await self._admit(claims, stream_id=stream_id, video_id=video_id)

    def heartbeat_claims(
        self, token: str | None, stream_id: str, user_id: str | None, *, field: str
    ) -> PlaybackClaims | None:
        """The claims of the playback token a heartbeat carries (None without one): with them, while the ledger's
        store does not answer, a process that never saw the stream honours it (the outage policy). Invalid, naming
        `field`, for a token that is not valid, or is another stream's (or, `user_id` given, another user's)."""
        if token is None:
            return None
        try:
            claims = self.tokens.check(token)
        except Unauthorized as exc:
            raise Invalid(exc.detail, field=field) from None
        if claims.stream_id != stream_id or (user_id is not None and claims.user_id != user_id):
            raise Invalid("This playback token is for another stream.", field=field)
        return claims

    def _claims(self, token: str | None) -> PlaybackClaims:
        if not token:
            raise Unauthorized(f"Send the playback token: ?token= or the {TOKEN_HEADER} header.")
        return self.tokens.check(token)

    async def _admit(self, claims: PlaybackClaims, *, stream_id: str, video_id: str | None = None) -> Stream:
        if claims.stream_id != stream_id or (video_id is not None and claims.video_id != video_id):
            raise Forbidden("This playback token is for another stream.")
        try:
            # The token's claims let the outage policy honour the stream while the ledger is down.
            return await self.gate.renew(claims.stream_id, claims.user_id, slack=MEDIA_RENEW_SLACK, playback=claims)
        except NotFound as exc:
            reason = exc.extra.get("reason")  # why it ended, when known
            why = f" ({reason})" if reason is not None else ""
            raise Forbidden(
                f"Stream {stream_id!r} has ended{why}; ask to play the video again.", reason=reason
            ) from None
