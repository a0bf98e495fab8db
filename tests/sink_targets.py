"""Every API target as data: its receiver, its sink, its secrets, its lifecycle checks.

``tests/test_sinks_targets.py`` runs the same contract over each entry
(payload accepted by the receiver, refs round trip, 429/500/400/timeout,
secrets); the per-target test files check what is particular to one service.
No tests here.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.alert.delivery import DeliveryOutcome, deliver, make_client
from pipeline.alert.message import Action, Notification
from pipeline.alert.sinks import (
    AlertmanagerApiSink,
    DiscordWebhookSink,
    GitHubIssueSink,
    GoogleChatWebhookSink,
    JiraIssueSink,
    MattermostWebhookSink,
    OpsgenieAlertSink,
    PagerDutyEventsSink,
    ServiceNowIncidentSink,
    Sink,
    SlackBotApiSink,
    TeamsWorkflowSink,
)
from pipeline.alert.sinks.common import basic_auth, bearer_auth, fingerprint_label
from pipeline.config import RetryConfig, ServiceNowSink
from pipeline.receivers import AlertmanagerReceiver, Receiver
from pipeline.receivers.discord import DiscordReceiver
from pipeline.receivers.github import GitHubReceiver
from pipeline.receivers.google_chat import GoogleChatReceiver
from pipeline.receivers.jira import JiraReceiver
from pipeline.receivers.mattermost import MattermostReceiver
from pipeline.receivers.opsgenie import OpsgenieReceiver
from pipeline.receivers.pagerduty import PagerDutyReceiver
from pipeline.receivers.servicenow import ServiceNowReceiver
from pipeline.receivers.slack_api import SlackApiReceiver
from pipeline.receivers.teams import TeamsReceiver
from tests.test_sinks_factories import make_notification

RETRY = RetryConfig(
    max_attempts=4, initial_backoff_seconds=0.5, max_backoff_seconds=30, timeout_seconds=5
)


class RecordingSleep:
    """Stands in for ``asyncio.sleep``: remembers each wait, returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def with_refs(n: Notification, sink: str, refs: dict[str, str]) -> Notification:
    """The notification as the alerter would build it after earlier deliveries."""
    incident = n.incident.model_copy(update={"sink_refs": {sink: dict(refs)}})
    return Notification(incident, n.finding, n.action, test=n.test, links=dict(n.links))


async def send_all(
    sink: Sink,
    client: httpx.AsyncClient,
    actions: Sequence[Action] = ("firing", "update", "resolved"),
    *,
    retry: RetryConfig = RETRY,
    sleep: RecordingSleep | None = None,
    refs: dict[str, str] | None = None,
    **overrides: Any,
) -> tuple[list[DeliveryOutcome], dict[str, str]]:
    """Deliver an incident's life, carrying refs from one notice to the next."""
    kept = dict(refs or {})
    outcomes = []
    for action in actions:
        n = with_refs(make_notification(action, **overrides), sink.name, kept)
        outcome = await deliver(
            sink, n, client, retry, sleep=sleep or RecordingSleep(), rng=random.Random(7)
        )
        outcomes.append(outcome)
        if outcome.delivered:
            kept.update(outcome.refs)
    return outcomes, kept


@dataclass
class Target:
    id: str
    receiver: Callable[[], Receiver]
    sink: Callable[[Any], Sink]
    secrets: Callable[[Any], list[str]]
    #: Assertions on the receiver's state after firing, update, resolve.
    check: Callable[[Any, list[DeliveryOutcome]], None]

    def run(
        self,
        body: Callable[[Any, Sink, httpx.AsyncClient], Awaitable[Any]],
        *,
        timeout: float = 5.0,
    ) -> Any:
        async def main() -> Any:
            async with self.receiver() as rx, make_client(timeout) as client:
                return await body(rx, self.sink(rx), client)

        return asyncio.run(main())


FP = make_notification().fingerprint
LABEL = fingerprint_label(FP)


def accepted(rx: Any, route: str) -> list[Any]:
    return [r for r in rx.accepted() if r.route == route]


def same(values: list[str | None]) -> bool:
    return len(set(values)) == 1 and values[0] is not None


# -- checks per target ----------------------------------------------------------------------


def check_slack(rx: SlackApiReceiver, outcomes: list[DeliveryOutcome]) -> None:
    (parent,) = rx.top_level("C0ALERTS01")
    assert same([o.refs.get("ts") for o in outcomes])
    assert outcomes[0].refs == {"channel": "C0ALERTS01", "ts": parent.ts}
    assert len(parent.edits) == 2  # the update and the resolve edited it
    assert parent.text.startswith("✅ [RESOLVED]")
    replies = rx.thread("C0ALERTS01", parent.ts)
    assert [r.reply_broadcast for r in replies] == [False, True]
    assert sum(1 for r in rx.accepted() if r.route == "chat.postMessage") == 3


def check_teams(rx: TeamsReceiver, outcomes: list[DeliveryOutcome]) -> None:
    cards = [r.payload["attachments"][0]["content"] for r in rx.accepted()]
    titles = [c["body"][0]["items"][0]["text"] for c in cards]
    assert [t.split("]")[0] for t in titles] == ["[FIRING", "[UPDATE", "[RESOLVED"]
    assert all(o.last_status == 202 for o in outcomes)


def check_mattermost(rx: MattermostReceiver, outcomes: list[DeliveryOutcome]) -> None:
    texts = [r.payload["text"] for r in rx.accepted()]
    assert len(texts) == 3
    assert "[RESOLVED]" in texts[2]
    assert all(o.refs == {} for o in outcomes)


def check_discord(rx: DiscordReceiver, outcomes: list[DeliveryOutcome]) -> None:
    (message,) = rx.messages.values()
    assert same([o.refs.get("message_id") for o in outcomes])
    assert outcomes[0].refs["message_id"] == message.id
    assert message.edits == 2
    assert "[RESOLVED]" in message.content
    assert [r.method for r in rx.accepted()] == ["POST", "PATCH", "PATCH"]
    assert rx.accepted()[0].query == {"wait": "true"}


def check_google_chat(rx: GoogleChatReceiver, outcomes: list[DeliveryOutcome]) -> None:
    threads = {m.thread for m in rx.messages}
    assert len(rx.messages) == 3
    assert len(threads) == 1
    assert same([o.refs.get("thread") for o in outcomes])
    assert outcomes[0].refs["message"] == rx.messages[0].name


def check_pagerduty(rx: PagerDutyReceiver, outcomes: list[DeliveryOutcome]) -> None:
    (alert,) = rx.alerts
    assert alert.dedup_key == FP
    assert alert.status == "resolved"
    assert [e["event_action"] for e in alert.events] == ["trigger", "trigger", "resolve"]
    assert all(o.refs == {"dedup_key": FP} for o in outcomes)
    assert rx.dropped == []


def check_jira(rx: JiraReceiver, outcomes: list[DeliveryOutcome]) -> None:
    (issue,) = rx.issues_with(LABEL)
    assert issue.status == "Done"
    assert len(issue.comments) == 2
    assert same([o.refs.get("issue_key") for o in outcomes])
    assert outcomes[0].refs["issue_key"] == issue.key
    assert len(accepted(rx, "search")) == 1  # update and resolve used the stored key


def check_github(rx: GitHubReceiver, outcomes: list[DeliveryOutcome]) -> None:
    (issue,) = rx.with_label(LABEL)
    assert (issue.state, issue.state_reason) == ("closed", "completed")
    assert len(issue.comments) == 2
    assert same([o.refs.get("issue_number") for o in outcomes])
    assert len(accepted(rx, "list")) == 1


def check_servicenow(rx: ServiceNowReceiver, outcomes: list[DeliveryOutcome]) -> None:
    (record,) = rx.with_correlation(FP)
    assert record.fields["state"] == "6"
    assert not record.active
    assert record.fields["close_code"] == "Solution provided"
    assert len(record.work_notes) == 2
    assert same([o.refs.get("sys_id") for o in outcomes])
    assert len(accepted(rx, "query")) == 1


def check_opsgenie(rx: OpsgenieReceiver, outcomes: list[DeliveryOutcome]) -> None:
    (alert,) = rx.alerts
    assert alert.alias == FP
    assert alert.status == "closed"
    assert len(alert.notes) == 2
    assert all(o.refs["alias"] == FP for o in outcomes)
    assert len({o.refs["request_id"] for o in outcomes}) == 3


def check_alertmanager(rx: AlertmanagerReceiver, outcomes: list[DeliveryOutcome]) -> None:
    assert rx.active() == []
    (alert,) = [a for a in rx.alerts.values() if a.labels["severity"] == "critical"]
    assert alert.posts == 3
    assert alert.labels["alertname"] == "MeshwatchLatency"
    assert alert.labels["route_key"] == make_notification().finding.route_key
    assert all(o.refs == {"severity": "critical"} for o in outcomes)


# -- sinks on receivers ------------------------------------------------------------------------


def snow_sink(rx: ServiceNowReceiver) -> Sink:
    cfg = ServiceNowSink(
        name="snow", instance_url=rx.url, username=rx.username, password_env="UNUSED"
    )
    return ServiceNowIncidentSink("snow", cfg, basic_auth(rx.username, rx.password))


def jira_cloud_sink(rx: JiraReceiver) -> Sink:
    return JiraIssueSink(
        "jira",
        rx.url,
        edition="cloud",
        project="OPS",
        authorization=basic_auth(rx.email, rx.api_token),
    )


def jira_dc_sink(rx: JiraReceiver) -> Sink:
    return JiraIssueSink(
        "jira", rx.url, edition="dc", project="OPS", authorization=bearer_auth(rx.pat)
    )


def url_secret(url: str) -> list[str]:
    """The credential part of a webhook URL: path and query after the host."""
    rest = url.split("//", 1)[1].split("/", 1)[1]
    return [rest.split("?", 1)[1] if "?" in rest else rest]


TARGETS = [
    Target(
        "slack_bot",
        lambda: SlackApiReceiver(),
        lambda rx: SlackBotApiSink("slack", rx.token, "#alerts", api_url=rx.api_url),
        lambda rx: [rx.token],
        check_slack,
    ),
    Target(
        "teams",
        lambda: TeamsReceiver(),
        lambda rx: TeamsWorkflowSink("teams", rx.url),
        lambda rx: [rx.sig],
        check_teams,
    ),
    Target(
        "mattermost",
        lambda: MattermostReceiver(),
        lambda rx: MattermostWebhookSink("mm", rx.url),
        lambda rx: ["xxxmeshwatchtestwebhookxx"],
        check_mattermost,
    ),
    Target(
        "discord",
        lambda: DiscordReceiver(),
        lambda rx: DiscordWebhookSink("discord", rx.webhook_url),
        lambda rx: [rx.token],
        check_discord,
    ),
    Target(
        "google_chat",
        lambda: GoogleChatReceiver(),
        lambda rx: GoogleChatWebhookSink("gchat", rx.webhook_url),
        lambda rx: [rx.key, rx.token],
        check_google_chat,
    ),
    Target(
        "pagerduty",
        lambda: PagerDutyReceiver(),
        lambda rx: PagerDutyEventsSink("pd", rx.routing_keys[0], url=rx.enqueue_url),
        lambda rx: [rx.routing_keys[0]],
        check_pagerduty,
    ),
    Target(
        "jira_cloud",
        lambda: JiraReceiver(edition="cloud"),
        jira_cloud_sink,
        lambda rx: [rx.api_token],
        check_jira,
    ),
    Target(
        "jira_dc",
        lambda: JiraReceiver(edition="dc"),
        jira_dc_sink,
        lambda rx: [rx.pat],
        check_jira,
    ),
    Target(
        "github",
        lambda: GitHubReceiver(),
        lambda rx: GitHubIssueSink("gh", rx.repository, rx.token, api_url=rx.url),
        lambda rx: [rx.token],
        check_github,
    ),
    Target(
        "servicenow",
        lambda: ServiceNowReceiver(),
        snow_sink,
        lambda rx: [rx.password],
        check_servicenow,
    ),
    Target(
        "opsgenie",
        lambda: OpsgenieReceiver(),
        lambda rx: OpsgenieAlertSink("og", rx.api_key, api_url=rx.url),
        lambda rx: [rx.api_key],
        check_opsgenie,
    ),
    Target(
        "alertmanager",
        lambda: AlertmanagerReceiver(),
        lambda rx: AlertmanagerApiSink("am", rx.base_url, bearer_token="am-proxy-token-SECRET"),
        lambda rx: ["am-proxy-token-SECRET"],
        check_alertmanager,
    ),
]
BY_ID = {t.id: t for t in TARGETS}


def serve(
    rx: Receiver, body: Callable[[Any, httpx.AsyncClient], Awaitable[Any]], timeout: float = 5.0
) -> Any:
    """Start ``rx``, run ``body(rx, client)``, stop it; returns what body returned."""

    async def main() -> Any:
        async with rx, make_client(timeout) as client:
            return await body(rx, client)

    return asyncio.run(main())


async def once(
    sink: Sink,
    n: Notification,
    client: httpx.AsyncClient,
    *,
    retry: RetryConfig = RETRY,
    sleep: RecordingSleep | None = None,
) -> DeliveryOutcome:
    return await deliver(
        sink, n, client, retry, sleep=sleep or RecordingSleep(), rng=random.Random(7)
    )
