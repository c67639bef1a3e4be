"""The admission rule: may this user start one more stream? A pure function; the clock is passed in."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from playgate.domain import Decision, EndedStream, PlayRequest, Policy, Quota, Reason, Status, Stream


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision and the user's streams after it: what the ledger must write."""

    decision: Decision
    streams: tuple[Stream, ...]
    ended: tuple[EndedStream, ...] = ()
    started: Stream | None = None
    renewed: Stream | None = None
    # When denied at the limit: the streams that hold it, oldest first (a player offers to stop one of them).
    conflicts: tuple[Stream, ...] = ()


def decide(
    request: PlayRequest,
    *,
    streams: Sequence[Stream],
    quota: Quota,
    now: float,
    lease_s: float,
    new_stream_id: str,
    prior: Decision | None = None,
    policy: Policy = Policy.deny,
) -> Verdict:
    """Decide `request` against the user's `streams` (expired ones included; they are dropped).

    A request already decided (`prior`) gets the same decision again and changes nothing.
    """
    live = tuple(s for s in streams if s.live(now))
    ended = tuple(EndedStream(s, Reason.expired) for s in streams if not s.live(now))
    if prior is not None:
        return Verdict(prior, live, ended)
    if not quota.exists:
        return Verdict(denied(request, Reason.unknown_user, len(live), 0, now), live, ended)
    if quota.disabled:
        return Verdict(denied(request, Reason.user_disabled, len(live), quota.limit, now), live, ended)

    same = next((s for s in live if s.device_id == request.device_id and s.video_id == request.video_id), None)
    if same is not None:
        renewed = replace(same, expires_at=now + lease_s)
        after = tuple(renewed if s.id == same.id else s for s in live)
        return Verdict(_allowed(request, renewed, len(after), quota.limit, now), after, ended, renewed=renewed)

    kept, freed = _make_room(request, live, quota.limit, policy)
    if len(kept) >= quota.limit:
        refusal = denied(request, Reason.limit_reached, len(live), quota.limit, now)
        return Verdict(refusal, live, ended, conflicts=tuple(by_age(live)))
    started = Stream(
        id=new_stream_id,
        user_id=request.user_id,
        video_id=request.video_id,
        device_id=request.device_id,
        started_at=now,
        expires_at=now + lease_s,
        device_name=request.device_name,
    )
    after = (*kept, started)
    decision = _allowed(request, started, len(after), quota.limit, now)
    return Verdict(decision, after, ended + freed, started=started)


def _make_room(
    request: PlayRequest, live: tuple[Stream, ...], limit: int, policy: Policy
) -> tuple[tuple[Stream, ...], tuple[EndedStream, ...]]:
    """The streams kept and those ended to make room: the device's own stream (one stream per device), the one
    named to replace, or the oldest on evict."""
    kept, freed = _replace_device_stream(request, live)
    if request.replace_stream_id is not None:
        target = next((s for s in kept if s.id == request.replace_stream_id), None)
        if target is not None:
            kept = tuple(s for s in kept if s.id != target.id)
            freed += (EndedStream(target, Reason.replaced),)
    if policy is Policy.evict_oldest and limit > 0 and len(kept) >= limit:
        surplus = by_age(kept)[: len(kept) - limit + 1]
        gone = {s.id for s in surplus}
        kept = tuple(s for s in kept if s.id not in gone)
        freed += tuple(EndedStream(s, Reason.evicted) for s in surplus)
    if len(kept) >= limit:
        # Nothing is ended when the request is denied anyway.
        return live, ()
    return kept, freed


def by_age(streams: Iterable[Stream]) -> list[Stream]:
    """Streams oldest first: by `started_at`, then by id (the order every ledger answers in)."""
    return sorted(streams, key=lambda s: (s.started_at, s.id))


def over_limit(streams: Sequence[Stream], limit: int, policy: Policy) -> set[str]:
    """The ids of the streams beyond a (lowered) `limit`: the newest under `deny` (first come keeps its slot),
    the oldest under `evict_oldest` (as a new request would have evicted them)."""
    ordered = by_age(streams)
    surplus = len(ordered) - max(limit, 0)
    if surplus <= 0:
        return set()
    ended = ordered[:surplus] if policy is Policy.evict_oldest else ordered[len(ordered) - surplus :]
    return {s.id for s in ended}


def _replace_device_stream(
    request: PlayRequest, live: tuple[Stream, ...]
) -> tuple[tuple[Stream, ...], tuple[EndedStream, ...]]:
    """One stream per device: the device's other streams (the episode before the next one) make way."""
    if not request.replace_device_stream:
        return live, ()
    own = tuple(s for s in live if s.device_id == request.device_id)
    return tuple(s for s in live if s.device_id != request.device_id), tuple(
        EndedStream(s, Reason.replaced) for s in own
    )


def _allowed(request: PlayRequest, stream: Stream, active: int, limit: int, now: float) -> Decision:
    return Decision(
        request_id=request.request_id,
        user_id=request.user_id,
        video_id=request.video_id,
        device_id=request.device_id,
        status=Status.allowed,
        active=active,
        limit=limit,
        decided_at=now,
        stream_id=stream.id,
        expires_at=stream.expires_at,
    )


def denied(request: PlayRequest, reason: Reason, active: int, limit: int, now: float) -> Decision:
    """`request` denied for `reason`: by the rule, or (reason `error`, active and limit 0) given up on."""
    return Decision(
        request_id=request.request_id,
        user_id=request.user_id,
        video_id=request.video_id,
        device_id=request.device_id,
        status=Status.denied,
        active=active,
        limit=limit,
        decided_at=now,
        reason=reason,
    )
