"""Grouped notifications carry every member, at every sink the alerter hands groups to.

Each sink sends a real request to its validating receiver (which checks the
documented format and size limits); the tests then look for every member in
what arrived, or for the ``+N more`` count where a limit forced a cut.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from rich.console import Console

from pipeline.alert.message import Action, Member, Notification, fit_lines, member_line
from pipeline.alert.sinks import (
    AlertmanagerWebhookSink,
    MattermostWebhookSink,
    RichConsoleSink,
    Sink,
    SlackWebhookSink,
    TeamsWorkflowSink,
)
from pipeline.alert.stage import GROUPED_TYPES
from pipeline.receivers import Receiver, SlackReceiver, WebhookReceiver
from pipeline.receivers.mattermost import MattermostReceiver
from pipeline.receivers.teams import TeamsReceiver
from tests.test_sinks_factories import make_notification

GROUP = {"namespace": "shop", "workload_kind": "deploy", "workload": "web"}


def group(size: int, action: Action = "firing", route_len: int = 12) -> Notification:
    """``size`` incidents of shop/deploy/web, each its own route, as the alerter groups them."""
    members = []
    for i in range(size):
        route = f"GET /r{i:03d}/" + "x" * max(0, route_len - 9)
        n = make_notification(
            action,
            route=route,
            route_key=f"shop/deploy/web/inbound/{route}",
            observed=100.0 + i,
            links={"dashboard": f"https://grafana.example/d/{i}"},
        )
        members.append(Member(n.incident, n.finding, action, dict(n.links)))
    lead = members[0]
    return Notification(
        lead.incident,
        lead.finding,
        action,
        links=dict(lead.links),
        members=tuple(members),
        group_labels=dict(GROUP),
    )


def deliver(receiver: Receiver, make: Any, n: Notification) -> Any:
    """Send ``n`` once through the sink ``make(url)`` builds; the accepted payload."""

    async def main() -> Any:
        async with receiver as rx, httpx.AsyncClient(timeout=5) as client:
            sink: Sink = make(rx.url)
            await sink.send(n, client)
            assert rx.rejected() == (), rx.rejected()[0].reason
            (record,) = rx.accepted()
            return record.payload

    return asyncio.run(main())


def routes_named(text: str, n: Notification) -> list[str]:
    return [m.finding.route for m in n.members if m.finding.route in text]


# -- the generic webhook (Alertmanager v4) --------------------------------------------


@pytest.mark.parametrize("action", ["firing", "resolved"])
def test_webhook_group_has_one_alert_per_member_with_its_own_facts(action: Action) -> None:
    n = group(4, action)
    body = deliver(WebhookReceiver(), lambda url: AlertmanagerWebhookSink("hook", url), n)
    alerts = body["alerts"]
    assert [a["labels"]["route"] for a in alerts] == [m.finding.route for m in n.members]
    assert body["status"] == action and {a["status"] for a in alerts} == {action}
    assert len({a["fingerprint"] for a in alerts}) == 4
    assert all(re.fullmatch(r"[0-9a-f]{16}", a["fingerprint"]) for a in alerts)
    for a, m in zip(alerts, n.members, strict=True):
        assert a["annotations"]["observed"] == repr(m.finding.observed)
        assert m.finding.route in a["annotations"]["summary"]
        assert a["generatorURL"] == m.links["dashboard"]  # its own link, not the lead's
        assert a["startsAt"].startswith("2023-11-14T22:13:20")
        if action == "resolved":
            assert a["endsAt"] != "0001-01-01T00:00:00Z"
        else:
            assert a["endsAt"] == "0001-01-01T00:00:00Z"
    assert body["groupLabels"] == GROUP
    # Alertmanager's common*: what every alert shares, nothing that differs
    assert body["commonLabels"]["workload"] == "web" and "route" not in body["commonLabels"]
    assert "summary" not in body["commonAnnotations"]
    assert body["commonAnnotations"]["model"] == "baseline 3"


def test_webhook_single_notification_is_unchanged_one_alert() -> None:
    n = make_notification()
    body = deliver(WebhookReceiver(), lambda url: AlertmanagerWebhookSink("hook", url), n)
    assert len(body["alerts"]) == 1
    assert body["commonLabels"] == body["alerts"][0]["labels"]
    assert body["commonAnnotations"] == body["alerts"][0]["annotations"]


# -- chat: every member listed, or counted within the target's limits ---------------


def slack_text(payload: dict[str, Any]) -> str:
    return json.dumps(payload["blocks"], ensure_ascii=False)


def test_slack_small_group_lists_every_route_with_observed_and_expected() -> None:
    n = group(3)
    payload = deliver(SlackReceiver(), lambda url: SlackWebhookSink("slack", url), n)
    text = slack_text(payload)
    assert routes_named(text, n) == [m.finding.route for m in n.members]
    assert text.count("expected 40–95 ms") == 3  # each member's own band
    assert "p99 101 ms" in text and "p99 102 ms" in text
    assert re.search(r"\+\d+ more", text) is None  # nothing needed cutting
    assert "3 alerts — shop/deploy/web" in payload["text"]


def test_slack_large_group_is_cut_with_a_count_inside_block_kit_limits() -> None:
    n = group(50, route_len=200)
    payload = deliver(SlackReceiver(), lambda url: SlackWebhookSink("slack", url), n)
    text = slack_text(payload)
    named = routes_named(text, n)
    more = re.search(r"\+(\d+) more", text)
    assert more is not None and named, text[:500]
    assert len(named) + int(more.group(1)) == 50
    assert named == [m.finding.route for m in n.members[: len(named)]]  # worst first, in order


def test_mattermost_group_lists_members_within_its_budget() -> None:
    small, large = group(3), group(50, route_len=300)
    sink = lambda url: MattermostWebhookSink("mm", url)  # noqa: E731
    for n in (small, large):
        payload = deliver(MattermostReceiver(), sink, n)
        text = payload["attachments"][0]["text"]
        named = routes_named(text.replace("\\", ""), n)
        more = re.search(r"\+(\d+) more", text)
        assert len(named) + (int(more.group(1)) if more else 0) == len(n.members)
        assert len(text) <= 6000
    assert more is not None  # the large one needed the count


def test_teams_large_group_is_counted_and_the_card_fits() -> None:
    n = group(50, route_len=400)
    payload = deliver(TeamsReceiver(), lambda url: TeamsWorkflowSink("teams", url), n)
    text = json.dumps(payload, ensure_ascii=False)
    named = routes_named(text, n)
    more = re.search(r"\+(\d+) more", text)
    assert more is not None and len(named) + int(more.group(1)) == 50
    assert len(text.encode()) <= 28 * 1024


def test_console_group_names_each_member() -> None:
    console = Console(record=True, width=400)
    n = group(5)
    asyncio.run(RichConsoleSink("console", console).send(n, httpx.AsyncClient()))
    out = console.export_text()
    assert routes_named(out, n) == [m.finding.route for m in n.members]


def test_only_sinks_that_render_groups_are_handed_groups() -> None:
    """The per-incident targets (threads, tickets, PagerDuty) never get a group."""
    assert {"console", "webhook", "slack", "teams", "mattermost"} == GROUPED_TYPES


# -- the shared helper ------------------------------------------------------------------


def test_fit_lines_never_exceeds_the_budget_and_counts_the_rest() -> None:
    lines = [f"line {i} " + "y" * i for i in range(40)]
    for budget in (30, 100, 333, 1000, 10_000):
        out = fit_lines(lines, budget)
        assert len("\n".join(out)) <= budget
        listed = [x for x in out if not re.fullmatch(r"\+\d+ more", x)]
        assert listed == lines[: len(listed)]
        hidden = 40 - len(listed)
        assert (out[-1] == f"+{hidden} more") if hidden else out == lines
    m = group(2).members[1]
    assert "GET /r001/" in member_line(m) and "p99 101 ms" in member_line(m)
