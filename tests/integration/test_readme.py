"""The README's walk-through, run as written (against a server on a free port instead of 8080)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.servers import ServerProcess, free_port, playgate_env, start_playgate

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


def test_the_platform_example_works_as_written(tmp_path: Path) -> None:
    section = (ROOT / "README.md").read_text().split("## Plug into your platform", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the section has a bash block"
    port, idp_port = free_port(), free_port()
    script = match.group(1).replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("8090", str(idp_port))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=playgate_env(tmp_path / "data", PLAYGATE_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "users: 2 created, 0 updated, 0 unchanged, 1 refused" in out
    assert out.count('"status":"allowed"') == 2, out
    assert '"id":"auth0|dave","name":"auth0|dave","limit":4' in out
    assert '"plan":"family"' in out
    assert '"userId":"auth0|alice","videoId":"1"' in out
