"""The simulation's evening: its arrival rate surges in the middle third (prime time)."""

from __future__ import annotations

from playgate.bench.simulate import SimulationSpec, plays_per_s


def test_the_rate_surges_in_the_middle_third_only() -> None:
    spec = SimulationSpec(virtual_s=90, base_plays_per_s=10, surge_plays_per_s=50)
    rates = [plays_per_s(spec, second) for second in range(90)]
    assert rates[:30] == [10] * 30
    assert rates[30:60] == [50] * 30
    assert rates[60:] == [10] * 30
