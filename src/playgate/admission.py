"""The admission rule: may this user start one more stream? A pure function; the clock is passed in."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace

from playgate.domain import (
    Decision,
    EndedStream,
    PlayRequest,
    Policy,
    Quota,
    Reason,
    Rules,
    Status,
    Stream,
    reason_text,
)
from playgate.values import frozen


@frozen
class Verdict:
    """A decision and the user's streams after it: what the ledger must write."""

    decision: Decision
    streams: tuple[Stream, ...]
    ended: tuple[EndedStream, ...] = ()
    started: Stream | None = None
    renewed: Stream | None = None
    # When denied by a cap: the streams that hold it, oldest first (a player offers to stop one of them).
    conflicts: tuple[Stream, ...] = ()
    devices: Mapping[str, float] | None = None  # the user's devices after it, when they changed


def decide(
    request: PlayRequest,
    *,
    streams: Sequence[Stream],
    quota: Quota,
    now: float,
    lease_s: float,
    new_stream_id: str,
    prior: Decision | None = None,
    devices: Mapping[str, float] | None = None,
) -> Verdict:
    """Decide `request` against the user's `streams` (expired ones included; they are dropped) under the
    quota's rules, and beside them under its shadow rules (the decision names the shadow's would-be denial).

    `devices` maps the user's registered devices to when each last started a stream (for `maxDevices`).
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
        return Verdict(_allowed(request, renewed, len(after), quota.limit, now, None), after, ended, renewed=renewed)

    if superseded(request, live):
        return Verdict(denied(request, Reason.superseded, len(live), quota.limit, now), live, ended)
    known = devices or {}
    # One pass for both rule sets: the streams that make way (the device's own, the one named to replace) are
    # the same under the shadow as under the enforced rules, so they are worked out once.
    way = _make_way(request, live)
    shadow = None
    if quota.shadow is not None:
        shadow_limit = quota.shadow.max_streams if quota.shadow.max_streams is not None else quota.limit
        shadow = _fit(request, live, way, quota.shadow, shadow_limit, known, now, conflicts=False).denial
    room = _fit(request, live, way, quota.rules, quota.limit, known, now)
    if room.denial is not None:
        refusal = denied(
            request,
            room.denial.reason,
            len(live),
            quota.limit,
            now,
            tag=room.denial.tag,
            shadow=shadow.text if shadow is not None else None,
        )
        return Verdict(refusal, live, ended, conflicts=room.conflicts)
    started = Stream(
        id=new_stream_id,
        user_id=request.user_id,
        video_id=request.video_id,
        device_id=request.device_id,
        started_at=now,
        expires_at=now + lease_s,
        device_name=request.device_name,
        kinds=request.kinds,
        away=request.away,
    )
    after = (*room.kept, started)
    decision = _allowed(request, started, len(after), quota.limit, now, shadow)
    return Verdict(decision, after, ended + room.freed, started=started, devices=_seen(request, known, quota, now))


# A device's stream started later than this after a request of that device was accepted came from a later
# request of the device, decided first: the clocks of the accepting and deciding processes may differ by less.
SUPERSEDED_AFTER_S = 1.0


def superseded(request: PlayRequest, live: Sequence[Stream]) -> bool:
    """One stream per device, and the device already plays a stream started by a later request of it (this one was
    decided late): it would replace the newer stream by an older wish, so it is denied instead (`superseded`)."""
    if not request.replace_device_stream:
        return False
    latest = request.accepted_at + SUPERSEDED_AFTER_S
    return any(s.device_id == request.device_id and s.started_at > latest for s in live)


def device_window_s(quota: Quota) -> float | None:
    """How long the ledger keeps the user's devices: the longest window of the rules (enforced or shadow) that
    cap devices; None when none does (then no device is registered)."""
    windows = [r.device_window_s for r in (quota.rules, quota.shadow) if r is not None and r.max_devices is not None]
    return max(windows) if windows else None


def _seen(request: PlayRequest, known: Mapping[str, float], quota: Quota, now: float) -> dict[str, float] | None:
    """The user's devices once this request's device started a stream (those past the window dropped), or None
    when no rule caps devices (then none are kept)."""
    window_s = device_window_s(quota)
    if window_s is None:
        return None
    kept = {d: seen_at for d, seen_at in known.items() if seen_at > now - window_s and d != request.device_id}
    kept[request.device_id] = now
    return kept


@frozen
class Check:
    """A rule that denies: its reason, and the kind tag for `kind_limit`."""

    reason: Reason
    tag: str | None = None

    @property
    def text(self) -> str:
        """As the wire shows it: `kind_limit:uhd`, `title_limit`, ..."""
        return reason_text(self.reason, self.tag)


@frozen
class Room:
    """Whether a new stream fits: the streams kept and those ended to make room, or the rule that denies."""

    kept: tuple[Stream, ...]
    freed: tuple[EndedStream, ...] = ()
    denial: Check | None = None
    conflicts: tuple[Stream, ...] = ()  # when denied: the live streams the denying cap counts, oldest first


def admit(
    request: PlayRequest,
    live: tuple[Stream, ...],
    rules: Rules,
    limit: int,
    devices: Mapping[str, float],
    now: float,
) -> Room:
    """Whether one more stream fits under `rules` (total `limit`), and what is ended to make room.

    The device's own stream (one stream per device) and the streams named to replace ("Watch here": these ids, or
    all the user's others) go first. Then a new device
    past `max_devices` is denied (eviction frees no device). Then the caps that count streams, in order (total,
    each kind tag of the video, the title, away from the household): under `deny` the first full one denies (its
    conflicts: the live streams it counts); under an eviction policy it ends the oldest stream it counts (the
    asking device's oldest first under `evict_oldest_on_same_device_first`), until all fit. A cap of 0 denies
    whatever the policy. Nothing is ended when the request is denied.
    """
    return _fit(request, live, _make_way(request, live), rules, limit, devices, now)


def _make_way(request: PlayRequest, live: tuple[Stream, ...]) -> tuple[tuple[Stream, ...], tuple[EndedStream, ...]]:
    """The streams kept and those ended before any cap is looked at: the device's own stream (one stream per
    device) and the stream named to replace."""
    kept, freed = _replace_device_stream(request, live)
    kept, named = _replace_named(request, kept)
    freed += named
    return kept, freed


def _fit(
    request: PlayRequest,
    live: tuple[Stream, ...],
    way: tuple[tuple[Stream, ...], tuple[EndedStream, ...]],
    rules: Rules,
    limit: int,
    devices: Mapping[str, float],
    now: float,
    *,
    conflicts: bool = True,
) -> Room:
    """admit() once the way is made (`way`: the streams kept and ended by _make_way); without `conflicts` a
    denial does not list them (the shadow's would-be denial names its rule only)."""
    kept, freed = way
    if rules.max_devices is not None and _new_device_over_cap(request.device_id, devices, rules, now):
        return Room(live, denial=Check(Reason.device_limit))
    policy = rules.on_limit or Policy.deny
    for _ in range(len(kept) + 1):
        full = _first_full(request, kept, rules, limit)
        if full is None:
            return Room(kept, freed)
        check, cap, counts = full
        if policy is Policy.deny or cap <= 0:
            holding = tuple(by_age(s for s in live if counts(s))) if conflicts else ()
            return Room(live, denial=check, conflicts=holding)
        victim = _oldest(tuple(s for s in kept if counts(s)), request.device_id, policy)
        kept = tuple(s for s in kept if s.id != victim.id)
        freed += (EndedStream(victim, Reason.evicted),)
    raise AssertionError("every eviction ends a stream, so the caps fit before the streams run out")


def _new_device_over_cap(device_id: str, devices: Mapping[str, float], rules: Rules, now: float) -> bool:
    """True when `device_id` is not among the devices seen within the window and those fill `max_devices`."""
    since = now - rules.device_window_s
    recent = {d for d, seen_at in devices.items() if seen_at > since}
    return device_id not in recent and len(recent) >= (rules.max_devices or 0)


def _first_full(
    request: PlayRequest, kept: tuple[Stream, ...], rules: Rules, limit: int
) -> tuple[Check, int, Callable[[Stream], bool]] | None:
    """The first cap the new stream would break: its check, the cap, and which streams it counts."""
    if len(kept) >= limit:
        return Check(Reason.limit_reached), limit, _every
    for tag, cap in rules.kind_limits:
        if tag in request.kinds and sum(tag in s.kinds for s in kept) >= cap:
            return Check(Reason.kind_limit, tag), cap, lambda s, tag=tag: tag in s.kinds
    title = rules.max_per_title
    if title is not None and sum(s.video_id == request.video_id for s in kept) >= title:
        return Check(Reason.title_limit), title, lambda s: s.video_id == request.video_id
    away = rules.max_away_streams
    if request.away and away is not None and sum(s.away for s in kept) >= away:
        return Check(Reason.household_limit), away, lambda s: s.away
    return None


def _every(_: Stream) -> bool:
    return True


def by_age(streams: Iterable[Stream]) -> list[Stream]:
    """Streams oldest first: by `started_at`, then by id (the order every ledger answers in)."""
    return sorted(streams, key=lambda s: (s.started_at, s.id))


def over_limit(streams: Sequence[Stream], limit: int, policy: Policy) -> set[str]:
    """The ids of the streams beyond a (lowered) `limit`: the newest under `deny` (first come keeps its slot),
    the oldest under an eviction policy (as a new request would have evicted them)."""
    return set(over_rules(streams, limit, Rules(on_limit=policy)))


def over_rules(
    streams: Sequence[Stream], limit: int, rules: Rules, registered: Collection[str] | None = None
) -> dict[str, Check]:
    """The streams beyond any cap of `rules` (lowered since they started), by id, each with the cap it breaks.

    Caps in the order admission looks at them: the total `limit`, each kind tag's, each title's, the away
    streams', then the devices (the streams of the devices beyond `max_devices`, counted among the streams' devices
    that are `registered`, when given: a device the account removed no longer counts, as on admission; the caller
    gives None when none is registered, the cap being new). In
    each, the newest streams (or devices) beyond the cap go under `deny` (first come keeps its slot), the oldest
    under an eviction policy (as a new request would have evicted them); a stream gone for one cap is not counted
    by the next.
    """
    keep = by_age(streams)
    if len(keep) <= limit and not _capped_beyond_total(rules, len(keep)):
        return {}
    newest_go = (rules.on_limit or Policy.deny) is Policy.deny
    over: dict[str, Check] = {}
    for scope, cap, check in _stream_caps(keep, limit, rules):  # lazily: each scope counts what is kept by then
        surplus = len(scope) - max(cap, 0)
        if surplus > 0:
            for s in scope[len(scope) - surplus :] if newest_go else scope[:surplus]:
                over[s.id] = check
            keep[:] = [s for s in keep if s.id not in over]
    if rules.max_devices is not None:
        devices = [d for d in dict.fromkeys(s.device_id for s in keep) if registered is None or d in registered]
        surplus = len(devices) - max(rules.max_devices, 0)
        if surplus > 0:
            gone = set(devices[len(devices) - surplus :] if newest_go else devices[:surplus])
            over.update((s.id, Check(Reason.device_limit)) for s in keep if s.device_id in gone)
    return over


def _stream_caps(keep: list[Stream], limit: int, rules: Rules) -> Iterator[tuple[list[Stream], int, Check]]:
    """The caps that count streams, in admission's order: the streams of `keep` each counts (read when the cap's
    turn comes), the cap, and its check."""
    yield list(keep), limit, Check(Reason.limit_reached)
    for tag, cap in rules.kind_limits:
        yield [s for s in keep if tag in s.kinds], cap, Check(Reason.kind_limit, tag)
    if rules.max_per_title is not None:
        for video_id in dict.fromkeys(s.video_id for s in keep):
            yield [s for s in keep if s.video_id == video_id], rules.max_per_title, Check(Reason.title_limit)
    if rules.max_away_streams is not None:
        yield [s for s in keep if s.away], rules.max_away_streams, Check(Reason.household_limit)


def _capped_beyond_total(rules: Rules, count: int) -> bool:
    """Whether a cap besides the total could hold `count` streams to fewer (False: only the total matters)."""
    caps = [cap for _, cap in rules.kind_limits]
    caps += [c for c in (rules.max_per_title, rules.max_away_streams, rules.max_devices) if c is not None]
    return any(cap < count for cap in caps)


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


def _replace_named(
    request: PlayRequest, kept: tuple[Stream, ...]
) -> tuple[tuple[Stream, ...], tuple[EndedStream, ...]]:
    """Watch here: the streams the request names (or, with `replace_others`, every one) make way; ids that name no
    live stream of the user are passed over."""
    if request.replace_others:
        return (), tuple(EndedStream(s, Reason.replaced) for s in kept)
    if not request.replace_stream_ids:
        return kept, ()
    named = set(request.replace_stream_ids)
    return tuple(s for s in kept if s.id not in named), tuple(
        EndedStream(s, Reason.replaced) for s in kept if s.id in named
    )


def _oldest(scope: tuple[Stream, ...], device_id: str, policy: Policy) -> Stream:
    """The stream to evict from `scope`: the oldest, or the asking device's oldest first if the policy says so."""
    if policy is Policy.evict_oldest_on_same_device_first:
        mine = tuple(s for s in scope if s.device_id == device_id)
        scope = mine or scope
    return min(scope, key=lambda s: (s.started_at, s.id))


def _decision(
    request: PlayRequest,
    status: Status,
    active: int,
    limit: int,
    now: float,
    *,
    stream: Stream | None = None,
    reason: Reason | None = None,
    tag: str | None = None,
    shadow: str | None = None,
) -> Decision:
    """The one builder of a decision on `request`: allowed with its `stream` (its id, lease, start and away flag),
    or denied for `reason`."""
    return Decision(
        request_id=request.request_id,
        user_id=request.user_id,
        video_id=request.video_id,
        device_id=request.device_id,
        status=status,
        active=active,
        limit=limit,
        decided_at=now,
        stream_id=stream.id if stream is not None else None,
        expires_at=stream.expires_at if stream is not None else None,
        reason=reason,
        reason_tag=tag,
        shadow_reason=shadow,
        started_at=stream.started_at if stream is not None else None,
        away=stream.away if stream is not None else False,
    )


def _allowed(
    request: PlayRequest, stream: Stream, active: int, limit: int, now: float, shadow: Check | None
) -> Decision:
    return _decision(
        request, Status.allowed, active, limit, now, stream=stream, shadow=shadow.text if shadow is not None else None
    )


def denied(
    request: PlayRequest,
    reason: Reason,
    active: int,
    limit: int,
    now: float,
    *,
    tag: str | None = None,
    shadow: str | None = None,
) -> Decision:
    """`request` denied for `reason` (with its kind `tag`, and the shadow's would-be denial): by the rule, or
    (reason `error`, active and limit 0) given up on."""
    return _decision(request, Status.denied, active, limit, now, reason=reason, tag=tag, shadow=shadow)
