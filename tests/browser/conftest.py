"""Browser fixtures: Debian's chromium driven by Playwright, a PlayGate server per test module, console watches."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    ViewportSize,
    async_playwright,
)

from playgate.api.app import WEB_DIST
from tests.support.servers import ServerProcess, start_playgate

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPORTS = Path(__file__).resolve().parents[2] / "reports"
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 860}
# Short leases, so that a tab whose stream was stopped elsewhere learns it from its next heartbeat (every lease/3).
STREAM_TTL_S = 9


@dataclass
class ConsoleWatch:
    """Every console error and page error of a page; a test names the few HTTP errors it expects."""

    name: str
    errors: list[str] = field(default_factory=list)
    expected_statuses: list[int] = field(default_factory=list)

    failed_requests: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("response", self._response)

    def _response(self, response: Response) -> None:
        # Kept to say which request a "Failed to load resource" console error was about.
        if response.status >= 400:
            self.failed_requests.append(f"{response.status} {response.request.method} {response.url}")

    def expect_http_error(self, status: int) -> None:
        """The next console line "Failed to load resource ... status of <status>" is expected (once)."""
        self.expected_statuses.append(status)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        found = re.search(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
        if found and found.group(1) == "403" and "/v1/play/" in message.location.get("url", ""):
            return  # a media request of an ended stream refused: how a playing player learns it, and says so
        if found and int(found.group(1)) in self.expected_statuses:
            self.expected_statuses.remove(int(found.group(1)))
            return
        self.errors.append(f"console error: {message.text}")


@dataclass
class Browsing:
    """Opens pages, each in a browser context of its own (its own storage: another device), and checks them."""

    browser: Browser
    base_url: str
    contexts: list[BrowserContext] = field(default_factory=list)
    watches: list[ConsoleWatch] = field(default_factory=list)

    async def page(self, name: str, viewport: ViewportSize | None = None) -> tuple[Page, ConsoleWatch]:
        """A new page in a new context, its console watched."""
        context = await self.browser.new_context(base_url=self.base_url, viewport=viewport or DESKTOP)
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        page = await context.new_page()
        watch = ConsoleWatch(name)
        watch.attach(page)
        self.watches.append(watch)
        return page, watch

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()

    def problems(self) -> list[str]:
        """Every unexpected console or page error, with the failed requests of the pages that had one."""
        found = []
        for watch in self.watches:
            if watch.errors:
                found += [f"{watch.name}: {e}" for e in watch.errors]
                found += [f"{watch.name}: failed request {r}" for r in watch.failed_requests]
        return found


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A `playgate serve` of this module's own, with the demo catalogue and short stream leases."""
    if not (WEB_DIST / "index.html").is_file():
        raise RuntimeError(f"The web app is not built ({WEB_DIST}): run `make web` (make test does).")
    server = start_playgate(tmp_path_factory.mktemp("browser"), PLAYGATE_STREAM_TTL=str(STREAM_TTL_S))
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless (never a browser downloaded by Playwright)."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium (make test and .ci/run do).")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browsing(browser: Browser, web_server: ServerProcess) -> AsyncIterator[Browsing]:
    """Pages for one test; the test fails on any console error or page error it did not announce."""
    session = Browsing(browser, web_server.base_url)
    yield session
    await session.close()
    assert not session.problems(), "\n".join(session.problems())


@pytest.fixture(scope="session")
def screenshot() -> Callable[[Page, str], Awaitable[Path]]:
    """Save a full-page screenshot under reports/ and return its path."""
    REPORTS.mkdir(exist_ok=True)

    async def take(page: Page, name: str) -> Path:
        path = REPORTS / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path

    return take
