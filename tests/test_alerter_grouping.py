"""Grouping, flap damping, reminders and routing, end to end at real receivers.

The alerter runs against the real broker (its outbox and incidents) and posts
to local receivers over HTTP; its clock is fake, so group waits, damping
and four-hour reminders take no time. ``process`` and ``idle`` deliver before
they return, so each assertion reads what the receivers already have.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.alert.stage import AlerterProcessor
from pipeline.config import MeshwatchConfig
from pipeline.receivers import SlackReceiver, WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import fingerprint
from tests.test_alerter_support import (
    NID,
    T0,
    FakeClock,
    configure,
    described_routes,
    finding,
    ids,
    inbound,
    resolved,
    webhook,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def hook() -> Iterator[ReceiverThread[WebhookReceiver]]:
    with ReceiverThread(WebhookReceiver()) as rx:
        yield rx


def alerter(cfg: MeshwatchConfig, clock: FakeClock) -> AlerterProcessor:
    return AlerterProcessor(cfg, clock=clock, sleep=clock.sleep)


def test_three_findings_of_a_workload_in_group_wait_make_one_notification_listing_three(
    kafka_cfg: MeshwatchConfig, hook: ReceiverThread[WebhookReceiver]
) -> None:
    with ReceiverThread(SlackReceiver()) as slack:
        cfg = configure(
            kafka_cfg,
            [
                webhook("hook", hook.url),
                {"type": "slack", "name": "slack", "webhook_url": slack.url},
            ],
            grouping={"group_wait_seconds": 30, "group_interval_seconds": 300},
        )
        clock = FakeClock()
        p = alerter(cfg, clock)
        try:
            # three routes of shop/deploy/web arrive in three batches within group_wait,
            # one route of another workload alongside
            p.process(inbound([finding("GET /a")]))
            clock.advance(10)
            p.process(inbound([finding("GET /b", severity="warning"), finding("GET /x", "api")]))
            clock.advance(10)
            p.process(inbound([finding("POST /c")]))
            clock.advance(9.9)
            p.idle(0)
            assert hook.requests() == () and slack.requests() == ()
            clock.advance(0.1)  # group_wait of the web group ends
            p.idle(0)
            web = hook.accepted()
            assert len(web) == 1 and len(slack.accepted()) == 1
            assert web[0].header(NID).startswith("group:")  # type: ignore[union-attr]
            assert described_routes(web[0]) == ["GET /a", "POST /c", "GET /b"]  # worst first
            body = web[0].payload
            # every member is an alert of its own, as Alertmanager would send the group
            assert body["groupLabels"] == {
                "namespace": "shop",
                "workload_kind": "deploy",
                "workload": "web",
            }
            assert {k: body["commonLabels"][k] for k in ("namespace", "workload")} == {
                "namespace": "shop",
                "workload": "web",
            }
            assert "route" not in body["commonLabels"]
            summaries = [a["annotations"]["summary"] for a in body["alerts"]]
            assert [s.split(" inbound ")[1].split(":")[0] for s in summaries] == [
                "GET /a",
                "POST /c",
                "GET /b",
            ]
            assert len({a["fingerprint"] for a in body["alerts"]}) == 3
            assert "3 alerts — shop/deploy/web" in slack.accepted()[0].payload["text"]
            clock.advance(10)  # the api group's own group_wait
            p.idle(0)
            assert len(hook.accepted()) == 2
            assert described_routes(hook.accepted()[1]) == []  # a single incident, no list
            assert hook.rejected() == () and slack.rejected() == ()
        finally:
            p.close()


def test_flap_damping_keeps_a_refire_in_the_same_incident(
    kafka_cfg: MeshwatchConfig, hook: ReceiverThread[WebhookReceiver]
) -> None:
    cfg = configure(
        kafka_cfg,
        [webhook("hook", hook.url)],
        grouping={"group_wait_seconds": 0, "group_interval_seconds": 0},
        flap_damping_seconds=120,
    )
    clock = FakeClock()
    p = alerter(cfg, clock)
    try:
        p.process(inbound([finding(window_end=T0 + 10)]))
        assert [r.payload["status"] for r in hook.accepted()] == ["firing"]
        # resolves, fires again 60 s later, resolves again: the route flaps
        for dt, f in (
            (10, resolved(window_end=T0 + 20)),
            (60, finding(window_end=T0 + 80)),
            (30, resolved(window_end=T0 + 110)),
        ):
            clock.advance(dt)
            p.process(inbound([f]))
            p.idle(0)
        assert len(hook.accepted()) == 1  # nothing said while it flaps
        inc = p.book.incidents[fingerprint(finding().route_key, "latency")]
        assert inc.flaps == 1 and inc.first_seen == T0
        clock.advance(119)
        p.idle(0)
        assert len(hook.accepted()) == 1
        clock.advance(1)  # 120 s after the last resolve
        p.idle(0)
        statuses = [r.payload["status"] for r in hook.accepted()]
        assert statuses == ["firing", "resolved"]
        first, last = (r.payload["alerts"][0] for r in hook.accepted())
        assert first["startsAt"] == last["startsAt"]  # one incident from start to end
        # a fire after the resolve went out is a new incident
        clock.advance(5)
        p.process(inbound([finding(window_end=T0 + 400, started_at=T0 + 390)]))
        assert [r.payload["status"] for r in hook.accepted()] == ["firing", "resolved", "firing"]
        assert len(set(ids(hook.accepted()))) == 3
    finally:
        p.close()


def test_repeat_reminders_for_a_long_incident(
    kafka_cfg: MeshwatchConfig, hook: ReceiverThread[WebhookReceiver]
) -> None:
    cfg = configure(
        kafka_cfg,
        [webhook("hook", hook.url)],
        grouping={
            "group_wait_seconds": 0,
            "group_interval_seconds": 60,
            "repeat_interval_seconds": 4 * 3600,
        },
        flap_damping_seconds=0,
    )
    clock = FakeClock()
    p = alerter(cfg, clock)
    try:
        p.process(inbound([finding("GET /a"), finding("GET /b")]))
        assert len(hook.accepted()) == 1
        for step in range(1, 17):  # 8 h; more findings of the same incidents keep arriving
            clock.advance(1800)
            p.process(inbound([finding("GET /a", window_end=T0 + 10 + step)]))
            p.idle(0)
        got = hook.accepted()
        assert len(got) == 3  # the first notice, then one reminder every 4 h
        for r in got[1:]:
            assert "Reminder: still firing." in r.payload["alerts"][0]["annotations"]["description"]
            assert r.payload["status"] == "firing"
            assert described_routes(r) == ["GET /a", "GET /b"]
        assert len(set(ids(got))) == 3
        assert got[2].at - got[1].at >= 0  # sanity: arrival order
        p.process(inbound([resolved("GET /a"), resolved("GET /b")]))
        clock.advance(60)
        p.idle(0)
        assert [r.payload["status"] for r in hook.accepted()][-1] == "resolved"
        clock.advance(5 * 3600)
        p.idle(0)
        assert len(hook.accepted()) == 4  # no reminder for a resolved group
    finally:
        p.close()


def test_routing_in_order_with_continue_and_a_default(kafka_cfg: MeshwatchConfig) -> None:
    with (
        ReceiverThread(WebhookReceiver()) as pager,
        ReceiverThread(WebhookReceiver()) as team,
        ReceiverThread(WebhookReceiver()) as other,
    ):
        cfg = configure(
            kafka_cfg,
            [webhook("pager", pager.url), webhook("team", team.url), webhook("other", other.url)],
            grouping={"group_by": ["..."], "group_wait_seconds": 0},
            routes=[
                {"match": ["severity=critical"], "sinks": ["pager"], "continue": True},
                {"match": ['namespace=~"shop|cart"'], "sinks": ["team"]},
                {"match": ["kind=error_rate"], "sinks": ["team", "other"]},
            ],
            default_sinks=["other"],
        )
        clock = FakeClock()
        p = alerter(cfg, clock)
        try:
            p.process(
                inbound(
                    [
                        finding("GET /1", severity="critical"),  # pager, then team; stop
                        finding("GET /2", severity="warning"),  # team
                        finding(
                            "GET /3", namespace="pay", severity="critical"
                        ),  # pager only: a match, so no default
                        finding("GET /4", namespace="pay", kind="error_rate", severity="warning"),
                        finding("GET /5", namespace="pay", severity="info"),  # default only
                    ]
                )
            )

            def routes(rx: ReceiverThread[WebhookReceiver]) -> list[str]:
                return sorted(r.payload["alerts"][0]["labels"]["route"] for r in rx.accepted())

            assert routes(pager) == ["GET /1", "GET /3"]
            assert routes(team) == ["GET /1", "GET /2", "GET /4"]
            assert routes(other) == ["GET /4", "GET /5"]
        finally:
            p.close()
