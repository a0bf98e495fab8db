"""Notification targets: one module per service, one common contract in ``base``.

Adding a target means a config class in ``pipeline.config`` (joined to the
``Sink`` union), a module here with a class that has ``name`` and
``async send()``, and one entry in ``_FROM_CONFIG``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console

from pipeline.alert.sinks.alertmanager import AlertmanagerApiSink
from pipeline.alert.sinks.base import (
    DeliveryError,
    PermanentDeliveryError,
    RefreshableSink,
    RetryableDeliveryError,
    Sink,
    SinkResponse,
)
from pipeline.alert.sinks.console import RichConsoleSink
from pipeline.alert.sinks.discord import DiscordWebhookSink
from pipeline.alert.sinks.github import GitHubIssueSink
from pipeline.alert.sinks.google_chat import GoogleChatWebhookSink
from pipeline.alert.sinks.jira import JiraIssueSink
from pipeline.alert.sinks.mattermost import MattermostWebhookSink
from pipeline.alert.sinks.opsgenie import OpsgenieAlertSink
from pipeline.alert.sinks.pagerduty import PagerDutyEventsSink
from pipeline.alert.sinks.servicenow import ServiceNowIncidentSink
from pipeline.alert.sinks.slack import SlackWebhookSink
from pipeline.alert.sinks.slack_bot import SlackBotApiSink
from pipeline.alert.sinks.teams import TeamsWorkflowSink
from pipeline.alert.sinks.webhook import AlertmanagerWebhookSink
from pipeline.config import (
    AlertmanagerSink,
    ConsoleSink,
    DiscordSink,
    GitHubSink,
    GoogleChatSink,
    JiraCloudSink,
    JiraDataCenterSink,
    MattermostSink,
    OpsgenieSink,
    PagerDutySink,
    ServiceNowSink,
    SinkConfig,
    SlackBotSink,
    SlackSink,
    TeamsSink,
    WebhookSink,
)

__all__ = [
    "AlertmanagerApiSink",
    "AlertmanagerWebhookSink",
    "DeliveryError",
    "DiscordWebhookSink",
    "GitHubIssueSink",
    "GoogleChatWebhookSink",
    "JiraIssueSink",
    "MattermostWebhookSink",
    "OpsgenieAlertSink",
    "PagerDutyEventsSink",
    "PermanentDeliveryError",
    "RefreshableSink",
    "RetryableDeliveryError",
    "RichConsoleSink",
    "ServiceNowIncidentSink",
    "Sink",
    "SinkConfig",
    "SinkResponse",
    "SlackBotApiSink",
    "SlackWebhookSink",
    "TeamsWorkflowSink",
    "build_sink",
]


#: Config class → how its sink is built (each sink reads its own secrets).
_FROM_CONFIG: dict[type[SinkConfig], Callable[[Any], Sink]] = {
    WebhookSink: AlertmanagerWebhookSink.from_config,
    SlackSink: SlackWebhookSink.from_config,
    SlackBotSink: SlackBotApiSink.from_config,
    TeamsSink: TeamsWorkflowSink.from_config,
    MattermostSink: MattermostWebhookSink.from_config,
    DiscordSink: DiscordWebhookSink.from_config,
    GoogleChatSink: GoogleChatWebhookSink.from_config,
    PagerDutySink: PagerDutyEventsSink.from_config,
    JiraCloudSink: JiraIssueSink.from_config,
    JiraDataCenterSink: JiraIssueSink.from_config,
    GitHubSink: GitHubIssueSink.from_config,
    ServiceNowSink: ServiceNowIncidentSink.from_config,
    OpsgenieSink: OpsgenieAlertSink.from_config,
    AlertmanagerSink: AlertmanagerApiSink.from_config,
}


def build_sink(entry: SinkConfig, *, console: Console | None = None) -> Sink:
    """The sink for one ``alerter.sinks`` entry.

    Secrets are read here, once, so a missing secret file (or environment
    variable) stops the alerter at start-up instead of failing every delivery
    later. ``console`` lets tests and the demo choose where the console sink
    prints.
    """
    if isinstance(entry, ConsoleSink):
        return RichConsoleSink(entry.name, console)
    make = _FROM_CONFIG.get(type(entry))
    if make is None:
        raise TypeError(f"no sink implementation for {type(entry).__name__}")
    return make(entry)
