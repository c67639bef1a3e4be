"""The README's walk-through, run as written (against a server on a free port instead of 8080)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.servers import ServerProcess, playgate_env, start_playgate

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Walk-through", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the walk-through has a bash block"
    return match.group(1)


def test_the_walkthrough_works_as_written(tmp_path: Path) -> None:
    server: ServerProcess = start_playgate(tmp_path / "data")
    try:
        script = walkthrough().replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
        env = playgate_env(tmp_path / "data")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        server.stop()
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    decisions = re.findall(r"decision: \{'status': '(allowed|denied)'", out)
    assert decisions == ["allowed", "allowed", "allowed", "denied", "allowed", "allowed"], out
    assert "'active': 3, 'limit': 3, 'reason': 'limit_reached'" in out
    assert out.count("Streaming request created.") == 5
    assert '"status":"allowed"' in out  # the ?wait= answer
    assert out.count("204\n") == 2
