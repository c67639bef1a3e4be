"""Waiting in a test for something that happens in the background: bounded in time, failing with what it waited for."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(
    check: Callable[[], bool | Awaitable[bool]], what: str, *, timeout_s: float = 5.0, every_s: float = 0.01
) -> None:
    """Return once `check()` (a function, or a coroutine function) is true; AssertionError naming `what` if it is
    still false after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = check()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(every_s)
