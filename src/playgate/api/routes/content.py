"""Media: a stream's video behind its playback token (HTTP Range), posters, and `auth_request` for web servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from playgate.api.deps import CatalogDep, ContentDep
from playgate.api.errors import problem, problem_responses
from playgate.media import RangeNotSatisfiable, content_type, is_playlist, parse_range, rewrite_playlist
from playgate.wire import Id, StreamId

router = APIRouter(tags=["content"])

CHUNK_BYTES = 64 * 1024
# A body up to this size (a segment, a clip's range) is read in one hop to a thread and sent as one piece: a 2 s
# segment costs one hop, not one per chunk.
WHOLE_BODY_BYTES = 1024 * 1024
TokenQuery = Annotated[str | None, Query(description="The playback token of the stream (from `playbackUrl`).")]
TokenHeader = Annotated[
    str | None, Header(alias="X-Playback-Token", description="The playback token, when not in the URL.")
]
GATE_ERRORS = problem_responses(
    {
        401: "No playback token, or a malformed, expired or forged one.",
        403: "The token is for another stream, or the stream has ended (stopped, expired, evicted, replaced): "
        "then `reason` says why, as recorded.",
    }
)
RANGE_ERRORS = problem_responses({416: "The Range cannot be served (`Content-Range: bytes */<size>` gives the size)."})


CONTENT_ROUTE = "/v1/streams/{streamId}/content"
CONTENT_DOC: dict[str, Any] = {
    "summary": "A stream's video (HTTP Range), opened by its playback token",
    "description": (
        "The `playbackUrl` of an allowed decision: `?token=<playback token>` (or header `X-Playback-Token`), "
        "so that a `<video src>` can carry it. The token is bound to the stream and its user, and works only "
        "while the stream is active: every request renews the stream's lease, and a stream that ended "
        "(stopped, expired, evicted, replaced, user disabled) is refused at once. Range: `bytes=a-b`, `bytes=a-` "
        "and `bytes=-n` → 206; several ranges → 200 with the whole file; unsatisfiable → 416."
    ),
    "response_class": Response,
    "responses": {
        200: {"content": {"video/mp4": {}}, "description": "The whole clip."},
        206: {"content": {"video/mp4": {}}, "description": "The range asked for."},
        **GATE_ERRORS,
        **RANGE_ERRORS,
    },
}


@router.get(CONTENT_ROUTE, operation_id="get_stream_content", **CONTENT_DOC)
@router.head(CONTENT_ROUTE, operation_id="head_stream_content", **CONTENT_DOC)
async def stream_content(
    request: Request,
    content: ContentDep,
    stream_id: Annotated[StreamId, Path(alias="streamId")],
    token: TokenQuery = None,
    header_token: TokenHeader = None,
) -> Response:
    """Serve the stream's clip to a holder of its playback token, renewing the lease."""
    _, files = await content.open(token or header_token, stream_id)
    return await _ranged(request, files.clip, "video/mp4")


PLAY_ROUTE = "/v1/play/{token}/{file:path}"
PLAY_DOC: dict[str, Any] = {
    "summary": "A file of a stream's adaptive set (HLS, DASH), the playback token in the path",
    "description": (
        "The `playbackUrl` of an allowed decision is `/v1/play/{token}/master.m3u8` (HLS; the DASH manifest is "
        "`manifest.mpd` beside it), so every relative URI in the playlists (variant playlists, init segments, "
        "segments) inherits the token and any player works unchanged. Playlists are served with absolute URIs "
        "made relative. Every request renews the stream's lease; a stream that ended (stopped, expired, evicted, "
        "replaced, user disabled) is refused at once with 403, its `reason` saying which. Segments serve HTTP "
        "Range as the content route does."
    ),
    "response_class": Response,
    "responses": {
        200: {
            "content": {"application/vnd.apple.mpegurl": {}, "application/dash+xml": {}, "video/iso.segment": {}},
            "description": "The playlist, manifest or segment.",
        },
        206: {"content": {"video/iso.segment": {}}, "description": "The range asked for."},
        **GATE_ERRORS,
        **problem_responses({404: "The stream's media has no such file."}),
        **RANGE_ERRORS,
    },
}


@router.get(PLAY_ROUTE, operation_id="get_stream_play_file", **PLAY_DOC)
@router.head(PLAY_ROUTE, operation_id="head_stream_play_file", **PLAY_DOC)
async def play_file(
    request: Request,
    content: ContentDep,
    token: Annotated[str, Path(description="The playback token of the stream (from `playbackUrl`).")],
    file: Annotated[str, Path(description="A file of the stream's media, e.g. `master.m3u8`.")],
) -> Response:
    """Serve a playlist (rewritten) or a segment of the stream's adaptive set, renewing the lease."""
    _, folder, path = await content.open_adaptive(token, file)
    if not is_playlist(path):
        return await _ranged(request, path, content_type(path))
    text = await anyio.Path(path).read_text(errors="replace")
    body = rewrite_playlist(text, root=folder, playlist=path)
    return Response(body, media_type=content_type(path), headers={"Cache-Control": "private, no-store"})


POSTER_ROUTE = "/videos/{videoId}/poster"
POSTER_DOC: dict[str, Any] = {
    "summary": "A video's poster image (anyone)",
    "response_class": FileResponse,
    "responses": {
        200: {"content": {"image/jpeg": {}}, "description": "The poster (JPEG)."},
        **problem_responses({404: "Unknown video."}),
    },
}


@router.get(POSTER_ROUTE, operation_id="get_video_poster", **POSTER_DOC)
@router.head(POSTER_ROUTE, operation_id="head_video_poster", **POSTER_DOC)
async def poster(
    catalog: CatalogDep, content: ContentDep, video_id: Annotated[Id, Path(alias="videoId")]
) -> FileResponse:
    """The poster of a catalogue video; 404 for an unknown one."""
    await catalog.get_video(video_id)
    files = await content.library.ensure(video_id)
    return FileResponse(files.poster, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=300"})


@router.get(
    "/v1/authorize",
    status_code=204,
    response_class=Response,
    summary="Authorize a media request for a web server's auth_request (nginx)",
    description=(
        "For media served by nginx or a CDN edge: nginx's `auth_request` sends the original URI in "
        "`X-Original-URI`. The playback token comes from that URI's `?token=`, or from `X-Playback-Token` "
        "(or `?token=` of this call). When the URI is given, its path must end in `/{streamId}/{videoId}.<ext>` "
        "of the token's stream. 204 (lease renewed; `X-Stream-Id`, `X-User-Id`, `X-Video-Id` tell whose), "
        "401 for a missing or bad token, 403 for another stream's token or an ended stream (`reason`: why it ended). "
        "`deploy/nginx/` holds a configuration."
    ),
    responses={204: {"description": "Allowed; the stream's lease was renewed."}, **GATE_ERRORS},
)
async def authorize(
    content: ContentDep,
    original_uri: Annotated[
        str | None, Header(alias="X-Original-URI", description="The URI nginx is asked for.")
    ] = None,
    header_token: TokenHeader = None,
    token: TokenQuery = None,
) -> Response:
    """204 when the token opens an active stream (renewing its lease); 401 or 403 otherwise."""
    stream = await content.authorize(original_uri, header_token or token)
    return Response(
        status_code=204,
        headers={"X-Stream-Id": stream.id, "X-User-Id": stream.user_id, "X-Video-Id": stream.video_id},
    )


async def _ranged(request: Request, path: FilePath, media_type: str) -> Response:
    """The file, or the one byte range asked for (206), or 416; HEAD gets the headers alone."""
    stat = await anyio.Path(path).stat()
    size_bytes = stat.st_size
    etag = f'"{size_bytes:x}-{stat.st_mtime_ns:x}"'
    header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != etag:
        header = None  # the client's copy is of another version: send the whole file
    try:
        byte_range = parse_range(header, size_bytes)
    except RangeNotSatisfiable as exc:
        answer = problem(exc.status, exc.title, exc.detail, field="Range")
        answer.headers["Content-Range"] = f"bytes */{exc.size_bytes}"
        return answer
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        # The URL carries a token: no shared cache may keep it.
        "Cache-Control": "private, no-store",
    }
    start, length_bytes, status = 0, size_bytes, 200
    if byte_range is not None:
        start, length_bytes, status = byte_range.start, byte_range.length_bytes, 206
        headers["Content-Range"] = byte_range.content_range
    headers["Content-Length"] = str(length_bytes)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    if length_bytes <= WHOLE_BODY_BYTES:
        body = await anyio.to_thread.run_sync(_read_at, path, start, length_bytes)
        return Response(body, status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        _read(path, start, length_bytes), status_code=status, headers=headers, media_type=media_type
    )


def _read_at(path: FilePath, start: int, length_bytes: int) -> bytes:
    """`length_bytes` bytes of the file from `start` (in a worker thread)."""
    with path.open("rb") as handle:
        handle.seek(start)
        return handle.read(length_bytes)


async def _read(path: FilePath, start: int, length_bytes: int) -> AsyncIterator[bytes]:
    """`length_bytes` bytes of the file from `start`, in chunks."""
    async with await anyio.open_file(path, "rb") as handle:
        await handle.seek(start)
        left = length_bytes
        while left > 0:
            chunk = await handle.read(min(CHUNK_BYTES, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
