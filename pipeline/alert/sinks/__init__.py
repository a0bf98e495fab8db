"""Notification targets: one module per service, one common contract in ``base``.

Adding a target means a config class in ``pipeline.config`` (joined to the
``Sink`` union), a module here with a class that has ``name`` and
``async send()``, and one branch in :func:`build_sink`.
"""

from __future__ import annotations

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


def build_sink(entry: SinkConfig, *, console: Console | None = None) -> Sink:
    """The sink for one ``alerter.sinks`` entry.

    Secrets are read here, once, so a missing secret file (or environment
    variable) stops the alerter at start-up instead of failing every delivery
    later. ``console`` lets tests and the demo choose where the console sink
    prints.
    """
    if isinstance(entry, ConsoleSink):
        return RichConsoleSink(entry.name, console)
    if isinstance(entry, WebhookSink):
        return AlertmanagerWebhookSink.from_config(entry)
    if isinstance(entry, SlackSink):
        return SlackWebhookSink.from_config(entry)
    if isinstance(entry, SlackBotSink):
        return SlackBotApiSink.from_config(entry)
    if isinstance(entry, TeamsSink):
        return TeamsWorkflowSink.from_config(entry)
    if isinstance(entry, MattermostSink):
        return MattermostWebhookSink.from_config(entry)
    if isinstance(entry, DiscordSink):
        return DiscordWebhookSink.from_config(entry)
    if isinstance(entry, GoogleChatSink):
        return GoogleChatWebhookSink.from_config(entry)
    if isinstance(entry, PagerDutySink):
        return PagerDutyEventsSink.from_config(entry)
    if isinstance(entry, JiraCloudSink | JiraDataCenterSink):
        return JiraIssueSink.from_config(entry)
    if isinstance(entry, GitHubSink):
        return GitHubIssueSink.from_config(entry)
    if isinstance(entry, ServiceNowSink):
        return ServiceNowIncidentSink.from_config(entry)
    if isinstance(entry, OpsgenieSink):
        return OpsgenieAlertSink.from_config(entry)
    if isinstance(entry, AlertmanagerSink):
        return AlertmanagerApiSink.from_config(entry)
    raise TypeError(f"no sink implementation for {type(entry).__name__}")
