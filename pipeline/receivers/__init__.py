"""Local HTTP receivers that behave like the services our sinks post to.

Used by the tests, ``meshwatch demo`` and ``meshwatch alert test`` checks.
Each one validates requests against the service's documented format,
records them, keeps server-side state where the service has some (messages,
tickets, alerts), and can be scripted to fail the way the real service fails.
"""

from __future__ import annotations

from pipeline.receivers.alertmanager import AlertmanagerReceiver, validate_alerts
from pipeline.receivers.api import ApiReceiver, Call, RejectedError
from pipeline.receivers.base import Problem, Received, Receiver, Reply
from pipeline.receivers.discord import DiscordReceiver, validate_discord
from pipeline.receivers.github import GitHubReceiver
from pipeline.receivers.google_chat import GoogleChatReceiver
from pipeline.receivers.jira import JiraReceiver
from pipeline.receivers.mattermost import MattermostReceiver, validate_mattermost
from pipeline.receivers.opsgenie import OpsgenieReceiver
from pipeline.receivers.pagerduty import PagerDutyReceiver, validate_event
from pipeline.receivers.servicenow import ServiceNowReceiver
from pipeline.receivers.slack import SlackReceiver, validate_slack
from pipeline.receivers.slack_api import SlackApiReceiver
from pipeline.receivers.teams import TeamsReceiver, validate_teams
from pipeline.receivers.threaded import ReceiverThread
from pipeline.receivers.webhook import WebhookReceiver, parse_rfc3339, validate_v4

__all__ = [
    "AlertmanagerReceiver",
    "ApiReceiver",
    "Call",
    "DiscordReceiver",
    "GitHubReceiver",
    "GoogleChatReceiver",
    "JiraReceiver",
    "MattermostReceiver",
    "OpsgenieReceiver",
    "PagerDutyReceiver",
    "Problem",
    "Received",
    "Receiver",
    "ReceiverThread",
    "RejectedError",
    "Reply",
    "ServiceNowReceiver",
    "SlackApiReceiver",
    "SlackReceiver",
    "TeamsReceiver",
    "WebhookReceiver",
    "parse_rfc3339",
    "validate_alerts",
    "validate_discord",
    "validate_event",
    "validate_mattermost",
    "validate_slack",
    "validate_teams",
    "validate_v4",
]
