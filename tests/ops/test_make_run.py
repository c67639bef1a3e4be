"""`make run` as a newcomer uses it: in a terminal, stopped with Ctrl-C or SIGTERM, it ends without an error line.

make runs in a pseudo-terminal, as in a shell; the installation and the web build are taken as done (`-o`), so
the test runs the recipe alone (`playgate serve` on a data dir and port of its own).
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.servers import free_port, playgate_env

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# An error line: a log line at level ERROR or CRITICAL, a traceback, make's "***" report, click's "Aborted!".
ERROR_LINE = re.compile(r"\s(ERROR|CRITICAL)\s|Traceback|\*\*\*|Aborted")


class Terminal:
    """`make run` in a pseudo-terminal: what it prints, and its exit code."""

    def __init__(self, data_dir: Path, port: int) -> None:
        env = playgate_env(data_dir, PLAYGATE_PORT=str(port), PLAYGATE_LOG_LEVEL="info", PLAYGATE_LOG_FORMAT="console")
        venv = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv"))
        argv = ["make", "-C", str(ROOT), f"VENV={venv}", "-o", "web", "-o", f"{venv}/.installed-run", "run"]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: make, with the pseudo-terminal as its controlling terminal
            os.execvpe("make", argv, env)
        self.output = b""
        self.port = port

    def read(self, timeout_s: float) -> None:
        """Collect output for up to timeout_s (less once the terminal closes)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    self.output += os.read(self.fd, 65536)
                except OSError:  # the other side closed: make has ended
                    return

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self.read(0.2)
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
        self.kill()
        pytest.fail(f"make run not ready after {START_TIMEOUT_S}s:\n{self.text}")

    def service(self) -> psutil.Process:
        """The `playgate serve` process below make."""
        below = psutil.Process(self.pid).children(recursive=True)
        return next(p for p in below if "serve" in p.cmdline() and "make" not in p.name())

    def exit_code(self) -> int:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            self.read(0.2)
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.read(0.5)
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        self.kill()
        pytest.fail(f"make run did not stop within {STOP_TIMEOUT_S}s:\n{self.text}")

    def kill(self) -> None:
        for proc in psutil.Process(self.pid).children(recursive=True):
            proc.kill()
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_make_run_stops_cleanly(tmp_path: Path, stop: str) -> None:
    terminal = Terminal(tmp_path, free_port())
    terminal.wait_ready()
    if stop == "ctrl-c":
        os.write(terminal.fd, b"\x03")  # what the terminal sends on Ctrl-C
    else:
        terminal.service().send_signal(signal.SIGTERM)
    code = terminal.exit_code()
    lines = [line for line in terminal.text.splitlines() if ERROR_LINE.search(line)]
    assert (code, lines) == (0, []), terminal.text
    assert "Application shutdown complete" in terminal.text
