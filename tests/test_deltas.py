"""Counter deltas: resets, vanished and new series, restarts, new pods."""

from __future__ import annotations

from pipeline.collect.deltas import DeltaTracker
from pipeline.collect.extract import PodCounters, RouteCounters

R = ("inbound", "*")


def pod(
    values: dict[str, float],
    start: float = 100.0,
    buckets: list[float] | None = None,
    extra: dict[tuple[str, str], dict[str, float]] | None = None,
) -> PodCounters:
    p = PodCounters(start_time=start)
    p.routes[R] = RouteCounters(values=dict(values), buckets=buckets)
    for rid, v in (extra or {}).items():
        p.routes[rid] = RouteCounters(values=dict(v))
    return p


def test_first_scrape_of_an_old_pod_is_a_baseline() -> None:
    t = DeltaTracker()
    assert t.update("a", pod({"successes": 50}), now=1000) is None


def test_plain_delta_and_counter_reset() -> None:
    t = DeltaTracker()
    t.update("a", pod({"successes": 50, "failures": 5}), now=1000)
    d = t.update("a", pod({"successes": 80, "failures": 5}), now=1010)
    assert d is not None
    assert d.routes[R].values == {"successes": 30, "failures": 0}
    # the series restarted from zero (e.g. idle expiry): delta is the new value
    d = t.update("a", pod({"successes": 7, "failures": 6}), now=1020)
    assert d is not None
    assert d.routes[R].values == {"successes": 7, "failures": 1}


def test_new_series_counts_in_full_and_vanished_series_yield_nothing() -> None:
    t = DeltaTracker()
    t.update("a", pod({"successes": 10}, extra={("outbound", "x"): {"successes": 4}}), now=1000)
    d = t.update("a", pod({"successes": 12}, extra={("outbound", "y"): {"successes": 3}}), now=1010)
    assert d is not None
    assert ("outbound", "x") not in d.routes
    assert d.routes[("outbound", "y")].values == {"successes": 3}
    assert d.routes[R].values == {"successes": 2}


def test_restart_detected_by_start_time_even_when_counters_grew() -> None:
    t = DeltaTracker()
    t.update("a", pod({"successes": 10}, start=100.0), now=1000)
    d = t.update("a", pod({"successes": 25}, start=1005.0), now=1010)
    assert d is not None
    assert d.routes[R].values == {"successes": 25}


def test_histogram_reset_as_a_whole() -> None:
    t = DeltaTracker()
    t.update("a", pod({}, buckets=[5, 10, 10]), now=1000)
    d = t.update("a", pod({}, buckets=[6, 12, 13]), now=1010)
    assert d is not None and d.routes[R].buckets == [1, 2, 3]
    d = t.update("a", pod({}, buckets=[1, 1, 2]), now=1020)
    assert d is not None and d.routes[R].buckets == [1, 1, 2]


def test_pod_started_after_the_first_cycle_counts_in_full() -> None:
    t = DeltaTracker()
    t.update("a", pod({"successes": 10}), now=1000)
    d = t.update("b", pod({"successes": 9}, start=1003.0), now=1010)
    assert d is not None and d.routes[R].values == {"successes": 9}


def test_no_negative_deltas_ever() -> None:
    import random

    rng = random.Random(3)
    t = DeltaTracker()
    cur = 0.0
    start = 100.0
    for i in range(500):
        if rng.random() < 0.05:
            cur = 0.0  # reset
            if rng.random() < 0.5:
                start = 1000.0 + i
        cur += rng.randint(0, 20)
        d = t.update("a", pod({"successes": cur}, start=start), now=1000.0 + i)
        if d is not None:
            assert all(v >= 0 for r in d.routes.values() for v in r.values.values())


def test_stale_pods_are_forgotten() -> None:
    t = DeltaTracker(forget_after_seconds=60)
    t.update("a", pod({"successes": 1}), now=1000)
    t.update("b", pod({"successes": 1}), now=1050)
    assert t.forget_stale(now=1070) == ["a"]
    assert len(t) == 1
