"""The pytest-xdist work units of tests/conftest.py: tests sharing a fixture's processes run on one worker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import worker_group

TESTS = Path(__file__).resolve().parents[1]


def _uses_the_shared_deployment(path: Path) -> bool:
    """Whether a test of the file takes tests/distributed's package-scoped `cluster` fixture."""
    return re.search(r"^(?:async )?def test_\w+\(\s*cluster: Cluster\b", path.read_text(), re.M) is not None


def test_the_files_sharing_the_distributed_deployment_are_one_unit() -> None:
    """Split over the workers, or with other tests between them, they would start the deployment again."""
    sharing = [p for p in sorted((TESTS / "distributed").glob("test_*.py")) if _uses_the_shared_deployment(p)]
    assert len(sharing) >= 5, sharing
    groups = {worker_group(f"tests/distributed/{p.name}::test_x") for p in sharing}
    assert groups == {"distributed"}


@pytest.mark.parametrize(
    ("nodeid", "group"),
    [
        ("tests/distributed/test_redis_cluster.py::test_x", "tests/distributed/test_redis_cluster.py"),
        ("tests/lifecycle/test_media.py::test_x[embedded]", "lifecycle-embedded"),
        ("tests/compat/test_engineio3.py::test_x", "compat"),
        ("tests/integration/test_cli.py::test_x", "tests/integration/test_cli.py::test_x"),
        ("tests/integration/test_routes.py::test_x", "tests/integration/test_routes.py"),
    ],
)
def test_other_tests_go_with_their_deployment_their_file_or_alone(nodeid: str, group: str) -> None:
    assert worker_group(nodeid) == group
