"""Short incidents: fired and resolved before any sink was told it fired.

When the alerter is down or behind for longer than an incident lasts, the
firing and resolved findings of that incident arrive in one poll batch. The
on-call must still hear of it: the firing notice first, told from the
finding that opened the incident (its observed value, band, start and
explanation), then the resolve after flap damping, each once. These run
against the real broker (outbox and incidents topic) and validating local
receivers, on a fake clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kafka import TopicPartition

from pipeline.alert.grouping import Grouper
from pipeline.alert.incidents import IncidentBook, due_action, needs
from pipeline.alert.matchers import Matcher
from pipeline.alert.routing import Router
from pipeline.alert.settings import GroupingConfig
from pipeline.alert.silences import new_silence, write_silence
from pipeline.alert.stage import AlerterProcessor
from pipeline.config import MeshwatchConfig
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.pagerduty import PagerDutyReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import Finding, Incident, decode, encode, fingerprint
from tests.test_alerter_support import (
    T0,
    FakeClock,
    configure,
    finding,
    ids,
    inbound,
    resolved,
    webhook,
)

ROUTES = [f"GET /r{i}" for i in range(8)]
#: Two workloads, four routes each: two groups of the default ``group_by``.
WORKLOADS = {r: ("web" if i < 4 else "api") for i, r in enumerate(ROUTES)}
DAMPING = 60.0


def firing_of(route: str) -> Finding:
    return finding(
        route,
        WORKLOADS[route],
        observed=900.0 + ROUTES.index(route),
        expected_low=40.0,
        expected_high=95.0,
        explanation=f"p99 of {route} far above its band",
    )


def resolve_of(route: str) -> Finding:
    return resolved(
        route, workload=WORKLOADS[route], expected_low=41.0, expected_high=96.0, explanation="calm"
    )


def short_batch() -> list[Finding]:
    """Every route fired and resolved, as one poll batch after an outage."""
    return [firing_of(r) for r in ROUTES] + [resolve_of(r) for r in ROUTES]


def alerter(cfg: MeshwatchConfig, clock: FakeClock) -> AlerterProcessor:
    return AlerterProcessor(cfg, clock=clock, sleep=clock.sleep)


def alert_events(rx: ReceiverThread[WebhookReceiver]) -> list[tuple[str, str, dict[str, Any]]]:
    """(route, status, alert) for every alert of every accepted notice, in arrival order."""
    out = []
    for record in rx.accepted():
        for alert in record.payload["alerts"]:
            out.append((alert["labels"]["route"], alert["status"], alert))
    return out


def assert_fired_then_resolved(rx: ReceiverThread[WebhookReceiver]) -> None:
    events = alert_events(rx)
    for route in ROUTES:
        mine = [(status, alert) for r, status, alert in events if r == route]
        assert [status for status, _ in mine] == ["firing", "resolved"], route
        fired, ended = (alert for _, alert in mine)
        # the firing notice describes the anomaly, not the calm resolve
        assert float(fired["annotations"]["observed"]) == 900.0 + ROUTES.index(route)
        assert float(fired["annotations"]["expected_high"]) == 95.0
        assert fired["annotations"]["explanation"] == f"p99 of {route} far above its band"
        assert float(ended["annotations"]["observed"]) == 60.0
        assert fired["startsAt"] == ended["startsAt"]  # one incident from start to end
    assert len(set(ids(rx.accepted()))) == len(rx.accepted())  # nothing twice
    assert rx.rejected() == ()


@pytest.fixture
def hook() -> Iterator[ReceiverThread[WebhookReceiver]]:
    with ReceiverThread(WebhookReceiver()) as rx:
        yield rx


def hook_cfg(kafka_cfg: MeshwatchConfig, url: str, **grouping: Any) -> MeshwatchConfig:
    return configure(
        kafka_cfg,
        [webhook("hook", url)],
        grouping={"group_wait_seconds": 0, "group_interval_seconds": 10, **grouping},
        flap_damping_seconds=DAMPING,
    )


# -- the book and the grouper, without I/O ------------------------------------------


def test_a_resolved_incident_never_told_is_owed_its_firing_then_its_resolve() -> None:
    book = IncidentBook(DAMPING)
    opened = book.apply(firing_of("GET /r0"), now=1000)
    assert opened is not None and opened.incident.opened_by == firing_of("GET /r0")
    book.apply(firing_of("GET /r0").model_copy(update={"id": "later", "observed": 1.0}), now=1000)
    c = book.apply(resolve_of("GET /r0"), now=1000)
    assert c is not None
    inc = c.incident
    assert due_action(inc, "s", 1000, DAMPING) == ("firing", None)
    assert needs(inc, "s") == "firing"
    told = book.record(inc.fingerprint, inc.first_seen, "s", "firing", 1000)
    assert told is not None
    assert due_action(told, "s", 1000, DAMPING) == (None, 1000 + DAMPING)
    assert due_action(told, "s", 1000 + DAMPING, DAMPING) == ("resolved", None)
    # a firing dead-lettered for good is not followed by a lone resolve
    failed = book.record(inc.fingerprint, inc.first_seen, "x", "failed:firing", 1000)
    assert failed is not None and due_action(failed, "x", 5000, DAMPING) == (None, None)
    # a record from before ``opened_by`` existed loads, and keeps the old behaviour
    legacy = inc.model_dump(by_alias=True, mode="json")
    del legacy["opened_by"]
    old = decode(Incident, encode(Incident.model_validate(legacy)))
    assert old.opened_by is None
    assert due_action(old, "s", 5000, DAMPING) == (None, None)


def test_a_refire_within_damping_after_a_short_incident_stays_one_incident() -> None:
    book = IncidentBook(DAMPING)
    book.apply(firing_of("GET /r0"), now=1000)
    c = book.apply(resolve_of("GET /r0"), now=1000)
    assert c is not None
    book.record(c.incident.fingerprint, c.incident.first_seen, "s", "firing", 1000)
    again = book.apply(
        firing_of("GET /r0").model_copy(update={"id": "again", "window_end": T0 + 30}), now=1030
    )
    assert again is not None and again.action is None and again.superseded is None
    assert again.incident.flaps == 1
    assert due_action(again.incident, "s", 1030, DAMPING) == (None, None)  # nothing to say


def test_a_short_incident_a_silence_covers_is_settled_untold() -> None:
    book = IncidentBook(0)
    grouping = GroupingConfig(group_wait_seconds=0, group_interval_seconds=0)
    grouper = Grouper(
        Router([], grouping, ["s"], group_interval=0),
        accepts_groups=lambda _: True,
        flap_damping=0,
        max_group_size=100,
    )
    for f in (firing_of("GET /r0"), resolve_of("GET /r0")):
        c = book.apply(f, now=0)
        assert c is not None
        grouper.place(c.incident, 0)
    muted = [("s1", (Matcher.parse("route=GET /r0"),))]
    out = [d for g in grouper.due_groups(0) for d in grouper.evaluate(g, book.incidents, muted, 0)]
    assert out == []
    fp = fingerprint(firing_of("GET /r0").route_key, "latency")
    assert grouper.hushed == {fp}
    assert book.settle_untold(fp)
    # the silence ends: nothing is owed any more
    grouper.touch_all()
    out = [d for g in grouper.due_groups(1) for d in grouper.evaluate(g, book.incidents, [], 1)]
    assert out == []


# -- the alerter at real receivers ---------------------------------------------------


@pytest.mark.integration
def test_fired_and_resolved_in_one_batch_are_both_told_in_order(
    kafka_cfg: MeshwatchConfig, hook: ReceiverThread[WebhookReceiver]
) -> None:
    cfg = hook_cfg(kafka_cfg, hook.url)
    clock = FakeClock()
    p = alerter(cfg, clock)
    try:
        p.process(inbound(short_batch()))
        # the firing notices go out at once (group_wait 0), one per workload group
        assert [r.payload["status"] for r in hook.accepted()] == ["firing", "firing"]
        assert {s for _, s, _ in alert_events(hook)} == {"firing"}
        clock.advance(DAMPING - 1)
        p.idle(0)
        assert len(hook.accepted()) == 2  # the resolve waits out flap damping
        clock.advance(1)
        p.idle(0)
        assert [r.payload["status"] for r in hook.accepted()] == ["firing"] * 2 + ["resolved"] * 2
        assert_fired_then_resolved(hook)
        clock.advance(3600)
        p.idle(0)
        assert len(hook.accepted()) == 4  # no reminder, no repeat
        assert p.pending() == 0
    finally:
        p.close()


@pytest.mark.integration
def test_a_short_incident_resolved_within_group_wait_is_told_too(
    kafka_cfg: MeshwatchConfig, hook: ReceiverThread[WebhookReceiver]
) -> None:
    cfg = hook_cfg(kafka_cfg, hook.url, group_wait_seconds=30)
    clock = FakeClock()
    p = alerter(cfg, clock)
    try:
        p.process(inbound([firing_of(r) for r in ROUTES]))
        clock.advance(10)
        p.process(inbound([resolve_of(r) for r in ROUTES]))
        assert hook.requests() == ()
        clock.advance(20)  # group_wait ends
        p.idle(0)
        assert [r.payload["status"] for r in hook.accepted()] == ["firing", "firing"]
        clock.advance(DAMPING)
        p.idle(0)
        assert_fired_then_resolved(hook)
    finally:
        p.close()


@pytest.mark.integration
@pytest.mark.parametrize("firing_delivered", [True, False], ids=["delivered", "in-outbox"])
def test_a_short_incident_survives_a_restart_between_firing_and_resolve(
    kafka_cfg: MeshwatchConfig, firing_delivered: bool
) -> None:
    receiver = WebhookReceiver()
    with ReceiverThread(receiver) as rx:
        if not firing_delivered:
            receiver.fail(503, times=10_000, retry_after=0.01)
        cfg = hook_cfg(kafka_cfg, rx.url)
        clock = FakeClock()
        first = alerter(cfg, clock)
        try:
            first.process(inbound(short_batch()))
            if firing_delivered:
                assert len(rx.accepted()) == 2
            else:
                assert rx.accepted() == () and first.pending() == 2
        finally:
            first.close()
        if not firing_delivered:
            receiver.clear()
        second = alerter(cfg, clock)
        try:
            second.on_assign([TopicPartition(cfg.topics.findings, 0)])
            assert len(second.book.incidents) == len(ROUTES)
            # the batch is read again (its offsets may not have been committed): no repeat
            second.process(inbound(short_batch()))
            clock.advance(1)  # past any backoff the first alerter left on its entries
            second.idle(0)
            assert [r.payload["status"] for r in rx.accepted()] == ["firing", "firing"]
            clock.advance(DAMPING)
            second.idle(0)
            statuses = [r.payload["status"] for r in rx.accepted()]
            assert statuses == ["firing"] * 2 + ["resolved"] * 2
            assert_fired_then_resolved(rx)
            assert second.pending() == 0
        finally:
            second.close()


@pytest.mark.integration
def test_pagerduty_triggers_then_resolves_each_short_incident(
    kafka_cfg: MeshwatchConfig,
) -> None:
    with ReceiverThread(PagerDutyReceiver()) as thread:
        pd = thread.receiver
        cfg = configure(
            kafka_cfg,
            [
                {
                    "type": "pagerduty",
                    "name": "pd",
                    "routing_key": pd.routing_keys[0],
                    "url": pd.enqueue_url,
                }
            ],
            grouping={"group_wait_seconds": 0, "group_interval_seconds": 10},
            flap_damping_seconds=DAMPING,
            rate_limits={"pd": {"per_second": 1000, "burst": 1000}},
        )
        clock = FakeClock()
        p = alerter(cfg, clock)
        try:
            p.process(inbound(short_batch()))
            assert [a.status for a in pd.alerts] == ["triggered"] * len(ROUTES)
            clock.advance(DAMPING)
            p.idle(0)
            assert pd.dropped == [] and thread.rejected() == ()
            for route in ROUTES:
                fp = fingerprint(firing_of(route).route_key, "latency")
                (alert,) = pd.alerts_for(fp)
                assert alert.status == "resolved"
                assert [e["event_action"] for e in alert.events] == ["trigger", "resolve"]
                details = alert.events[0]["payload"]["custom_details"]
                assert details["observed"] == 900.0 + ROUTES.index(route)
        finally:
            p.close()


@pytest.mark.integration
def test_a_short_incident_superseded_in_the_same_batch_is_told_before_the_new_one(
    kafka_cfg: MeshwatchConfig, hook: ReceiverThread[WebhookReceiver]
) -> None:
    """Without flap damping a re-fire in the batch is a new occurrence; the old one is told too."""
    cfg = configure(
        kafka_cfg,
        [webhook("hook", hook.url)],
        grouping={"group_by": ["..."], "group_wait_seconds": 0, "group_interval_seconds": 0},
        flap_damping_seconds=0,
    )
    clock = FakeClock()
    p = alerter(cfg, clock)
    try:
        again = firing_of("GET /r0").model_copy(
            update={"id": "again", "window_end": T0 + 110, "started_at": T0 + 100, "observed": 7.0}
        )
        p.process(inbound([firing_of("GET /r0"), resolve_of("GET /r0"), again]))
        got = [(r.payload["status"], r.payload["alerts"][0]) for r in hook.accepted()]
        assert [s for s, _ in got] == ["firing", "resolved", "firing"]
        assert [float(a["annotations"]["observed"]) for _, a in got] == [900.0, 60.0, 7.0]
        assert got[0][1]["startsAt"] == got[1][1]["startsAt"] != got[2][1]["startsAt"]
        assert len(set(ids(hook.accepted()))) == 3
    finally:
        p.close()


@pytest.mark.integration
def test_a_short_incident_under_a_silence_stays_untold_after_it_ends(
    kafka_cfg: MeshwatchConfig, hook: ReceiverThread[WebhookReceiver]
) -> None:
    cfg = configure(
        kafka_cfg,
        [webhook("hook", hook.url)],
        grouping={"group_by": ["..."], "group_wait_seconds": 0, "group_interval_seconds": 0},
        flap_damping_seconds=0,
        silence_refresh_seconds=1,
    )
    clock = FakeClock()
    write_silence(cfg, new_silence(["route=GET /r0"], starts_at=clock() - 1, ends_at=clock() + 600))
    p = alerter(cfg, clock)
    try:
        two = ["GET /r0", "GET /r1"]
        p.process(inbound([firing_of(r) for r in two] + [resolve_of(r) for r in two]))
        p.idle(0)
        clock.advance(601)  # the silence ends
        p.idle(0)
        p.idle(0)
        told = [(r, s) for r, s, _ in alert_events(hook)]
        assert told == [("GET /r1", "firing"), ("GET /r1", "resolved")]
        fp = fingerprint(firing_of("GET /r0").route_key, "latency")
        assert p.book.incidents[fp].opened_by is None  # settled, and so recorded
    finally:
        p.close()
