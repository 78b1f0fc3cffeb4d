"""The benches' reading of the host's CPU time (bench/procstat.py HostTicks)."""

from __future__ import annotations

from bench.procstat import HostTicks


def test_shares_of_busy_and_stolen_time() -> None:
    before = HostTicks(busy=1_000, steal=50, total=10_000)
    after = HostTicks(busy=1_600, steal=150, total=11_000)
    assert before.shares(after) == {"busy": 0.6, "steal": 0.1}


def test_the_host_now_adds_up() -> None:
    first = HostTicks.now()
    sum(range(200_000))  # some time passes
    second = HostTicks.now()
    assert 0 <= first.busy + first.steal <= first.total
    shares = first.shares(second)
    assert 0.0 <= shares["busy"] <= 1.0
    assert 0.0 <= shares["steal"] <= 1.0
