"""The worker over every ledger: what it does with a request the queue gave up on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from playgate.bus.local import LocalFanout, LocalQueue
from playgate.domain import Admission, Decision, PlayRequest, Quota, Reason, Rules, Status
from playgate.ledger.protocol import Ledger
from playgate.metrics import Metrics
from playgate.worker import Worker
from tests.contract.conftest import LedgerFactory, Recorder
from tests.support.clock import Clock

LOST = "7531-lost"  # a request id naming its user u1, as the service's do (a cluster finds its decision so)


def _worker(ledger: Ledger, queue: LocalQueue, fanout: LocalFanout, clock: Clock) -> Worker:
    """A worker that gives up on a request after two deliveries (and never reaches the catalogue here)."""
    return Worker(
        queue=queue,
        ledger=ledger,
        fanout=fanout,
        catalog=None,  # type: ignore[arg-type]  # never reached: the only request is past max_attempts
        metrics=Metrics(),
        clock=clock,
        batch_size=10,
        sweep_interval_s=1.0,
        max_attempts=2,
    )


async def test_a_request_given_up_on_is_answered_and_kept_by_the_ledger(
    make_ledger: LedgerFactory, clock: Clock
) -> None:
    ledger = await make_ledger()
    queue = LocalQueue()
    recorder = Recorder()
    fanout = LocalFanout(recorder)
    worker = _worker(ledger, queue, fanout, clock)
    await queue.put(PlayRequest(LOST, "u1", "v1", "tv", accepted_at=clock.now))
    for _ in range(2):  # two deliveries that could not be decided
        await queue.release(await queue.take(1, wait_s=0))
    assert await worker.step(wait_s=0) == 1
    [(event, message, room)] = recorder.events
    assert (event, room, message["reason"]) == ("message", "user:u1", "error")
    kept = await ledger.decision(LOST)  # GET /v1/plays/{id} answers it in the embedded deployment too
    assert kept is not None
    assert (kept.status, kept.reason, kept.decided_at) == (Status.denied, Reason.error, clock.now)
    assert await queue.pending(LOST) is None
    await fanout.close()


async def test_a_request_decided_before_it_was_given_up_on_keeps_its_decision_on_the_socket(
    make_ledger: LedgerFactory, clock: Clock
) -> None:
    """An attempt decided the request but its answer was lost (a Redis primary killed after running the script);
    the later attempts failed, so the queue gives up on it: the player is told the decision the ledger holds."""
    ledger = await make_ledger()
    request = PlayRequest(LOST, "u1", "v1", "tv", accepted_at=clock.now)
    [outcome] = await ledger.decide([Admission(request, Quota(limit=1))])
    assert outcome.decision.status is Status.allowed
    queue = LocalQueue()
    recorder = Recorder()
    fanout = LocalFanout(recorder)
    worker = _worker(ledger, queue, fanout, clock)
    await queue.put(request)
    for _ in range(2):  # two deliveries whose answers were lost
        await queue.release(await queue.take(1, wait_s=0))
    assert await worker.step(wait_s=0) == 1
    [(event, message, room)] = recorder.events
    assert (event, room, message["status"], message["streamId"]) == (
        "message",
        "user:u1",
        "allowed",
        outcome.decision.stream_id,
    )
    assert await ledger.decision(LOST) == outcome.decision
    await fanout.close()


class _Plans:
    """The catalogue as the worker reads it: every user on a plan of 2 streams whose shadow rules allow 1; the
    shadow denials it is given to list."""

    def __init__(self) -> None:
        self.listed: list[str] = []

    async def quotas(self, user_ids: set[str]) -> dict[str, Quota]:
        return {user_id: Quota(limit=2, shadow=Rules(max_streams=1)) for user_id in user_ids}

    async def record_shadow_denials(self, decisions: Iterable[Decision]) -> int:
        found = [d.request_id for d in decisions if d.shadow_reason is not None]
        self.listed += found
        return len(found)


async def test_a_shadow_denial_delivered_again_is_listed_once(make_ledger: LedgerFactory, clock: Clock) -> None:
    """A worker that died before acknowledging leaves its batch to be delivered again: the decisions are told again
    (the players may not have heard them), the shadow's would-be denials not listed again."""
    ledger = await make_ledger()
    queue = LocalQueue()
    recorder = Recorder()
    fanout = LocalFanout(recorder)
    plans = _Plans()
    worker = _worker(ledger, queue, fanout, clock)
    worker._catalog = plans  # type: ignore[assignment]
    second = PlayRequest("7531-b", "u1", "v2", "phone", accepted_at=clock.now)
    for request in (PlayRequest("7531-a", "u1", "v1", "tv", accepted_at=clock.now), second):
        await queue.put(request)
    assert await worker.step(wait_s=0) == 2
    assert plans.listed == [second.request_id]
    await queue.put(second)  # delivered again
    assert await worker.step(wait_s=0) == 1
    assert plans.listed == [second.request_id]
    assert [m["requestId"] for _, m, _ in recorder.events] == ["7531-a", "7531-b", "7531-b"]
    await fanout.close()


async def _swept_ends(worker: Worker, recorder: Recorder, turns: int = 5) -> list[str]:
    """The stream ends the sweeper announced in a few of its turns (sweep_interval_s apart)."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.sweep_forever(stop))
    await asyncio.sleep(worker.sweep_interval_s * turns)
    stop.set()
    await task
    return [message["streamId"] for event, message, _ in recorder.events if event == "stream_ended"]


async def test_a_worker_started_with_an_outage_to_write_back_holds_its_sweeps(
    make_ledger: LedgerFactory, clock: Clock
) -> None:
    """Started while work taken back from an earlier process's outage is not yet written back (sweep_held), the
    sweeper leaves an expired lease alone until the store has answered for sweep_hold_s: the stream it names may be
    one that outage kept playing. Started without, it sweeps it at once."""
    ledger = await make_ledger(lease_s=1.0)
    request = PlayRequest("7531-held", "u1", "v1", "tv", accepted_at=clock.now)
    [outcome] = await ledger.decide([Admission(request, Quota(limit=1))])
    assert outcome.decision.status is Status.allowed
    clock.advance(2)  # its lease has run out
    recorder = Recorder()
    fanout = LocalFanout(recorder)
    held = Worker(
        queue=LocalQueue(),
        ledger=ledger,
        fanout=fanout,
        catalog=None,  # type: ignore[arg-type]  # the sweeper does not read it
        metrics=Metrics(),
        clock=clock,
        batch_size=10,
        sweep_interval_s=0.02,
        sweep_hold_s=60,
        sweep_held=True,
    )
    assert await _swept_ends(held, recorder) == []
    clock.advance(61)
    held.sweep_held = False  # a later start, with nothing left to write back
    assert await _swept_ends(held, recorder) == [outcome.decision.stream_id]
    await fanout.close()
