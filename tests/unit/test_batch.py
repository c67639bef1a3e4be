"""Group commit (ledger/batch.py): what queues during a commit goes in the next one, each caller gets its own
result only after its commit, and a failed commit fails each of its callers; what another writer takes is its to
commit and answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from playgate.batch import GroupCommit
from playgate.errors import Unavailable


class Recorder:
    """A commit that records its batches; it holds each commit until `release` is set, when asked to."""

    def __init__(self, *, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail = fail

    async def commit(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail:
            raise Unavailable("the database does not answer")
        return [item * 10 for item in items]


async def test_a_lone_call_is_committed_at_once() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.commit)
    assert await commit(1) == 10
    assert recorder.batches == [[1]]


async def test_calls_during_a_commit_share_the_next_one() -> None:
    recorder = Recorder()
    recorder.release.clear()
    commit = GroupCommit(recorder.commit)
    first = asyncio.create_task(commit(1))
    await asyncio.sleep(0)  # the first commit starts, and waits
    later = [asyncio.create_task(commit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    assert recorder.batches == [[1]]
    assert not first.done()  # answered only once its commit is done
    recorder.release.set()
    assert await first == 10
    assert [await task for task in later] == [20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]


async def test_a_failed_commit_fails_each_of_its_callers_and_the_next_commit_runs() -> None:
    recorder = Recorder(fail=True)
    commit = GroupCommit(recorder.commit)
    results = await asyncio.gather(commit(1), commit(2), return_exceptions=True)
    assert [type(r) for r in results] == [Unavailable, Unavailable]
    recorder.fail = False
    assert await commit(3) == 30


async def test_an_item_whose_caller_went_away_is_committed_all_the_same() -> None:
    recorder = Recorder()
    recorder.release.clear()
    commit = GroupCommit(recorder.commit)
    gone = asyncio.create_task(commit(1))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    recorder.release.set()
    assert await commit(2) == 20
    assert recorder.batches == [[1], [2]]


async def test_items_taken_by_another_writer_are_not_committed_again_and_are_answered_by_it() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.commit)
    queued = [asyncio.create_task(commit(n)) for n in (1, 2)]
    await asyncio.sleep(0)  # both queued; the commit that would hold them has not run
    taken = commit.take()
    assert [item for item, _ in taken] == [1, 2]
    await asyncio.sleep(0)
    assert recorder.batches == []  # nothing left for the group commit
    GroupCommit.settle(taken, [100, 200])
    assert [await task for task in queued] == [100, 200]
    failing = asyncio.create_task(commit(3))
    await asyncio.sleep(0)
    GroupCommit.settle(commit.take(), Unavailable("the database does not answer"))
    with pytest.raises(Unavailable):
        await failing
    assert await commit(4) == 40  # and the group commit goes on
    assert recorder.batches == [[4]]


async def test_a_lingering_batch_takes_the_calls_of_its_turns_and_leaves_a_batch_taken_meanwhile() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.commit, linger_turns=3)
    first = asyncio.create_task(commit(1))
    await asyncio.sleep(0)  # queued; its batch lingers
    second = asyncio.create_task(commit(2))
    assert [await first, await second] == [10, 20]
    assert recorder.batches == [[1, 2]]  # one commit, where a batch that does not linger makes two

    queued = asyncio.create_task(commit(3))
    await asyncio.sleep(0)
    taken = commit.take()  # another writer's transaction, in one of the turns
    GroupCommit.settle(taken, [300])
    assert await queued == 300
    await asyncio.sleep(0)
    assert recorder.batches == [[1, 2]]  # nothing committed twice
    assert await commit(4) == 40
