"""The real socket.io-client 2 and 4, run by Node (tests/compat/*.js), as seen from a test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

COMPAT_DIR = Path(__file__).resolve().parent
EVENT_TIMEOUT_S = 15.0


def require_node_clients() -> None:
    """Skip without Node.js; fail when its client packages were not installed (`make test` runs `npm ci`)."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (the web app build needs it too: Node.js 20)")
    if not (COMPAT_DIR / "node_modules" / "socket.io-client" / "package.json").is_file():
        pytest.fail("the Node test clients are missing: run `make test`, or `npm ci` in tests/compat")


@dataclass
class NodeSocket:
    """A `listen.js` process: one Socket.IO client that reports each event as a JSON line."""

    proc: asyncio.subprocess.Process
    version: str

    @classmethod
    async def open(cls, version: str, url: str, transports: str = "polling,websocket", origin: str = "") -> NodeSocket:
        """Start a client (`v2` or `v4`) for `url` (query included) on these transports."""
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(COMPAT_DIR / "listen.js"),
            version,
            url,
            transports,
            *([origin] if origin else []),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc, version)

    async def next(self, timeout_s: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        """The next event, `{"event", "data"}`."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        assert line, f"the {self.version} client exited ({await self.proc.wait()})"
        event: dict[str, Any] = json.loads(line)
        return event

    async def connected(self) -> str:
        """Wait for `connect`; its transport."""
        event = await self.next()
        assert event["event"] == "connect", event
        return str(event["data"]["transport"])

    async def messages(self, count: int, name: str = "message") -> list[dict[str, Any]]:
        """The next `count` events called `name` (other events in between are skipped)."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            event = await self.next()
            if event["event"] == name:
                found.append(event["data"])
        return found

    async def quiet(self, wait_s: float = 0.5) -> list[dict[str, Any]]:
        """The `message` and `stream_ended` events that arrive within wait_s (none, when the socket was not meant
        to get any)."""
        found: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                while True:
                    event = await self.next()
                    if event["event"] in ("message", "stream_ended"):
                        found.append(event)
        return found

    async def call(self, event: str, data: Any) -> Any:
        """Emit `event` with `data` and an ack callback; the ack (other events in between are skipped)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"emit": event, "data": data}).encode() + b"\n")
        await self.proc.stdin.drain()
        [ack] = await self.messages(1, "ack")
        return ack

    async def close(self) -> None:
        """Close its stdin (it disconnects and exits), then reap it."""
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def run_original_ui(api_url: str, origin: str) -> dict[str, Any]:
    """Run `original_ui.js` against the server; its transcript (calls, feedback shown, socket transport)."""
    proc = await asyncio.create_subprocess_exec(
        "node", str(COMPAT_DIR / "original_ui.js"), api_url, origin, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    transcript: dict[str, Any] = json.loads(out)
    assert proc.returncode == 0, transcript.get("error")
    return transcript
