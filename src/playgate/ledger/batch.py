"""Group commit: calls that arrive while the previous commit is under way are written together in the next one.

A caller is answered only once the commit that holds its item is done, so nothing it was told happened can be lost
on a crash; there is no timer: a lone call is committed at once, and a batch is whatever queued meanwhile. The
same shape serves reads made together (the service's look-ups of callers' users).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Feeds `commit` (items in, one result per item out, in order) with every item that queued meanwhile."""

    def __init__(self, commit: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]]) -> None:
        self._commit = commit
        self._queued: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        """`item`'s result, once the commit holding it is done; that commit's error otherwise."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain(), name="playgate-group-commit")
        return await future

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    results = await self._commit([item for item, _ in batch])
                except Exception as exc:  # each caller of the batch gets the error (Unavailable, say)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # a caller that went away meanwhile: its item is committed all the same
                        future.set_result(result)
        finally:
            self._draining = None
