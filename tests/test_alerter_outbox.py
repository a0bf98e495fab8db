"""The outbox: nothing acknowledged to Kafka is lost, a batch never waits on a dead
destination, notices arrive in order once it is back, and rate limits hold.

These run the alerter as a real stage (consumer group, commits, restarts)
against the real broker; receivers are real HTTP servers, stopped or scripted
to fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from pipeline.alert.outbox import OUTBOX_PREFIX
from pipeline.config import MeshwatchConfig
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import Finding, encode
from tests.kafka_helpers import produce, read_records, wait_until
from tests.test_alerter_support import (
    NID,
    T0,
    FakeClock,
    RunningAlerter,
    configure,
    counts,
    finding,
    ids,
    inbound,
    resolved,
    webhook,
)
from tests.test_sinks_factories import unused_port

pytestmark = pytest.mark.integration


def per_incident(cfg: MeshwatchConfig, url: str, **alerter: object) -> MeshwatchConfig:
    """Every incident its own group, told at once: one notice per change, easy to order."""
    alerter.setdefault("rate_limits", {"hook": {"per_second": 1000, "burst": 1000}})
    return configure(
        cfg,
        [webhook("hook", url)],
        grouping={"group_by": ["..."], "group_wait_seconds": 0, "group_interval_seconds": 0},
        flap_damping_seconds=0,
        **alerter,
    )


def send(cfg: MeshwatchConfig, *findings: Finding) -> None:
    produce(cfg, cfg.topics.findings, [(f.workload_key.encode(), encode(f)) for f in findings])


def outbox_keys(cfg: MeshwatchConfig, n: int) -> set[str]:
    """Outbox keys on the incidents topic that have no tombstone (read, not trusted offsets)."""
    live: dict[str, bool] = {}

    def enough(records: list[object]) -> bool:
        live.clear()
        for r in records:
            key = (r.key or b"").decode()  # type: ignore[attr-defined]
            if key.startswith(OUTBOX_PREFIX):
                live[key] = r.value is not None  # type: ignore[attr-defined]
        return sum(live.values()) >= n

    read_records(cfg, cfg.topics.incidents, enough, timeout=30)
    return {k for k, alive in live.items() if alive}


@pytest.mark.parametrize("outage", ["stopped", "503"])
def test_a_destination_down_for_the_whole_run_gets_everything_in_order_once_back(
    kafka_cfg: MeshwatchConfig, outage: str
) -> None:
    port = unused_port()
    url = f"http://127.0.0.1:{port}/alert"
    receiver = WebhookReceiver(port=port)
    rx = ReceiverThread(receiver)
    if outage == "503":
        rx.start()
        receiver.fail(503, times=10_000, retry_after=0.05)
    cfg = per_incident(kafka_cfg, url)
    alerter = RunningAlerter(cfg)
    expected: list[str] = []
    try:
        # fire A..E then resolve C and A, each decided before the next is sent,
        # so the decision order is known: that is the order they must arrive in
        routes = [f"GET /{c}" for c in "ABCDE"]
        steps = [finding(r) for r in routes] + [resolved("GET /C"), resolved("GET /A")]
        for i, f in enumerate(steps, start=1):
            send(cfg, f)
            wait_until(lambda i=i: alerter.processor.stats.decided >= i, 30, f"decision {i}")
        expected = [e.notification_id for q in alerter.processor._queues.values() for e in q]
        assert len(expected) == 7 and alerter.processor.pending() == 7
        # the findings were committed while the destination was down, and no
        # batch waited for it (budget 2 s; each attempt fails fast)
        wait_until(lambda: alerter.runner.stats.consumed == 7, 30, "all committed")
        assert alerter.runner.stats.last_batch_seconds < 2.5
        assert len(outbox_keys(cfg, 7)) == 7
    finally:
        alerter.stop()

    # a restart while it is still down loses nothing: the outbox comes back
    again = RunningAlerter(cfg)
    try:
        wait_until(lambda: again.processor.pending() == 7, 30, "outbox restored")
        restored = [e.notification_id for q in again.processor._queues.values() for e in q]
        assert restored == expected
        if outage == "503":
            receiver.clear()  # the refusals are spent; it answers normally now
        else:
            rx.start()  # the same port comes back
        rx.wait_for_count(7, timeout=30)
        wait_until(lambda: again.processor.pending() == 0, 30, "outbox drained")
        got = rx.accepted()
        assert ids(got) == expected  # in decision order, each once
        assert [r.payload["status"] for r in got] == ["firing"] * 5 + ["resolved"] * 2
        assert [r.payload["alerts"][0]["labels"]["route"] for r in got[5:]] == ["GET /C", "GET /A"]
        assert outbox_keys(cfg, 0) == set()  # every entry has its tombstone
    finally:
        again.stop()
        rx.stop()


def test_a_hanging_destination_holds_no_batch_longer_than_the_budget(
    kafka_cfg: MeshwatchConfig,
) -> None:
    receiver = WebhookReceiver()
    with ReceiverThread(receiver) as rx:
        receiver.fail(500, times=10_000)
        cfg = per_incident(kafka_cfg, rx.url, delivery_budget_seconds=0.5)
        clock = FakeClock()  # backoff sleeps advance it: the budget is spent at once
        from pipeline.alert.stage import AlerterProcessor

        p = AlerterProcessor(cfg, clock=clock, sleep=clock.sleep)
        try:
            started = time.monotonic()
            p.process(inbound([finding(f"GET /{i}") for i in range(20)]))
            assert time.monotonic() - started < 5
            assert p.pending() == 20 and len(rx.requests()) >= 1
            head = p._queues["hook"].head()
            assert head is not None and head.attempts >= 1 and head.last_error
            assert "500" in head.last_error
        finally:
            p.close()


def test_per_destination_rate_limit_is_respected(kafka_cfg: MeshwatchConfig) -> None:
    with ReceiverThread(WebhookReceiver()) as rx:
        cfg = per_incident(kafka_cfg, rx.url, rate_limits={"hook": {"per_second": 10, "burst": 2}})
        alerter = RunningAlerter(cfg)
        try:
            send(cfg, *(finding(f"GET /{i}") for i in range(12)))
            got = rx.wait_for_count(12, timeout=30)
        finally:
            alerter.stop()
        t = sorted(r.at for r in got)
        # a bucket of 2 refilled at 10/s: the n-th send (n >= 2) no earlier than (n - 1) / 10 s
        for n in range(2, 12):
            assert t[n] - t[0] >= (n - 1) / 10 - 0.02, (n, t[n] - t[0])
        assert t[-1] - t[0] < 3  # limited, not stalled


class Crash(BaseException):
    """What the alerter sees of a SIGKILL: nothing after this point runs."""


def crash_at(point: str, nth: int = 1) -> Callable[[str], None]:
    seen = [0]

    def checkpoint(at: str) -> None:
        if at == point:
            seen[0] += 1
            if seen[0] == nth:
                raise Crash(point)

    return checkpoint


@pytest.mark.parametrize(
    ("point", "copies"),
    [
        ("decided", 1),  # in the outbox, nothing sent yet: sent once after the restart
        ("persisted", 1),  # sent and recorded, offsets not committed: the replay sends nothing
        ("sent", 2),  # answered 200 but killed before the tombstone: the one duplicate window
    ],
)
def test_crash_between_delivery_and_commit(
    kafka_cfg: MeshwatchConfig, point: str, copies: int
) -> None:
    with ReceiverThread(WebhookReceiver()) as rx:
        cfg = per_incident(kafka_cfg, rx.url)
        crashing = RunningAlerter(cfg, checkpoint=crash_at(point))
        send(cfg, finding("GET /a"), finding("GET /b"))
        crashing.wait_dead()
        assert isinstance(crashing.error, Crash)
        assert crashing.runner.stats.consumed == 0  # never committed
        restarted = RunningAlerter(cfg)
        try:
            wait_until(lambda: restarted.runner.stats.consumed >= 2, 30, "replay consumed")
            wait_until(lambda: restarted.processor.pending() == 0, 30, "outbox drained")
            rx.wait_for_count(2, timeout=10)
        finally:
            restarted.stop()
        seen = counts(rx.accepted())
        assert len(seen) == 2, seen
        if copies == 1:
            assert set(seen.values()) == {1}, seen
        else:
            # only the notice that was answered in the instant before the crash
            assert sorted(seen.values()) == [1, 2], seen
            first = rx.accepted()[0].header(NID)
            assert seen[first or ""] == 2


def test_an_undeliverable_notice_is_dead_lettered_after_max_age(
    kafka_cfg: MeshwatchConfig,
) -> None:
    port = unused_port()
    cfg = per_incident(kafka_cfg, f"http://127.0.0.1:{port}/alert", outbox={"max_age_seconds": 60})
    clock = FakeClock()
    from pipeline.alert.stage import AlerterProcessor

    p = AlerterProcessor(cfg, clock=clock, sleep=clock.sleep)
    try:
        p.process(inbound([finding()]))
        assert p.pending() == 1
        clock.advance(61)
        p.idle(0)
        assert p.pending() == 0
        dlq = read_records(cfg, cfg.topics.dlq, lambda r: len(r) >= 1)
        assert dlq[0].headers[0] == ("meshwatch-reason", b"sink unreachable")
        assert next(iter(p.book.incidents.values())).notified == {"hook": "failed:firing"}
    finally:
        p.close()


def test_group_notices_survive_a_restart_with_the_members_told(
    kafka_cfg: MeshwatchConfig,
) -> None:
    """A grouped notice waiting in the outbox is not decided a second time after a restart."""
    port = unused_port()
    cfg = configure(
        kafka_cfg,
        [webhook("hook", f"http://127.0.0.1:{port}/alert")],
        grouping={"group_wait_seconds": 0, "group_interval_seconds": 0},
    )
    first = RunningAlerter(cfg)
    try:
        send(cfg, finding("GET /a"), finding("GET /b"), finding("GET /c"))
        wait_until(lambda: first.runner.stats.consumed == 3, 30, "consumed")
        wait_until(lambda: first.processor.pending() >= 1, 30, "decided")
        pending = first.processor.pending()
    finally:
        first.stop()
    receiver = WebhookReceiver(port=port)
    with ReceiverThread(receiver) as rx:
        again = RunningAlerter(cfg)
        try:
            rx.wait_for_count(pending, timeout=30)
            wait_until(lambda: again.processor.pending() == 0, 30, "drained")
            send(cfg, finding("GET /a", window_end=T0 + 30))  # one more finding: no new notice
            wait_until(lambda: again.runner.stats.consumed == 1, 30, "consumed")
        finally:
            again.stop()
        assert len(rx.accepted()) == pending
        routes = sorted(
            line
            for r in rx.accepted()
            for line in r.payload["alerts"][0]["annotations"]["description"].splitlines()
            if line.startswith("- ")
        )
        assert len(routes) in (0, 3)  # one group of three (or three singles if split by batch)


class _Unacknowledged:
    """A producer whose records never get an acknowledgement."""

    def send(self, *args: object, **kw: object) -> _Unacknowledged:
        return self

    def get(self, timeout: float | None = None) -> None:
        from kafka.errors import KafkaTimeoutError

        raise KafkaTimeoutError("no acknowledgement")

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


def test_state_the_broker_did_not_take_stops_the_stage_without_a_commit(
    kafka_cfg: MeshwatchConfig,
) -> None:
    from pipeline.alert.stage import StateNotSaved

    with ReceiverThread(WebhookReceiver()) as rx:
        cfg = per_incident(kafka_cfg, rx.url)
        broken = RunningAlerter(cfg)
        broken.processor._journal = _Unacknowledged()  # type: ignore[assignment]
        send(cfg, finding("GET /a"), finding("GET /b"))
        broken.wait_dead()
        assert isinstance(broken.error, StateNotSaved)
        assert broken.runner.stats.consumed == 0 and broken.runner.stats.dead_lettered == 0
        assert rx.requests() == ()  # nothing was attempted on the strength of unsaved state
        # a healthy restart takes it from the top
        again = RunningAlerter(cfg)
        try:
            rx.wait_for_count(2, timeout=30)
            wait_until(lambda: again.runner.stats.consumed == 2, 30, "consumed")
        finally:
            again.stop()
        assert set(counts(rx.accepted()).values()) == {1}
