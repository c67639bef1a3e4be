"""playgate.values.frozen: value types hash as frozen dataclasses do, hold no __dict__, and mypy refuses an
assignment to one of their fields (the check that stands in for the frozen dataclass's run-time refusal)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from playgate.domain import Decision, Stream
from playgate.values import frozen

SRC = Path(__file__).resolve().parents[2] / "src"


@frozen
class Point:
    x: int
    y: int = 0


@frozen
class Keyed:
    key: str
    note: str

    def __hash__(self) -> int:
        return hash(self.key)


def test_equal_values_hash_alike_and_others_do_not_collide_as_keys() -> None:
    assert Point(1, 2) == Point(1, 2)
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert len({Point(1, 2), Point(1, 2), Point(2, 1), Point(1)}) == 3
    assert {Point(1): "a"}[Point(1, 0)] == "a"
    assert hash(Point(1, 2)) == hash(dataclasses.make_dataclass("P", ["x", "y"], frozen=True)(1, 2))


def test_a_hash_of_its_own_stays() -> None:
    assert hash(Keyed("k", "one")) == hash("k")
    assert Keyed("k", "one") != Keyed("k", "two")


def test_a_value_has_slots_and_replace_makes_a_new_one() -> None:
    point = Point(1, 2)
    assert not hasattr(point, "__dict__")
    moved = dataclasses.replace(point, y=5)
    assert (point, moved) == (Point(1, 2), Point(1, 5))
    assert dataclasses.is_dataclass(Decision)
    assert dataclasses.is_dataclass(Stream)


def test_mypy_refuses_an_assignment_to_a_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a frozen dataclass refuses at run time, mypy refuses in `make test`: an assignment to a field of a value
    type, here or from another module (PlayGate's own Stream)."""
    source = tmp_path / "mutates.py"
    source.write_text(
        textwrap.dedent(
            """
            from playgate.domain import Stream
            from playgate.values import frozen

            @frozen
            class Point:
                x: int

            def mutate(point: Point, stream: Stream) -> None:
                point.x = 2
                stream.expires_at = 0.0
            """
        )
    )
    monkeypatch.setenv("MYPYPATH", str(SRC))  # PlayGate's source, read as such (the installed package is not typed)
    out, _err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir=/dev/null", "--follow-imports=silent", str(source)]
    )
    assert status == 1, out
    refused = [line for line in out.splitlines() if "error:" in line]
    assert len(refused) == 2, out
    assert all("read-only" in line or "frozen" in line for line in refused), out
