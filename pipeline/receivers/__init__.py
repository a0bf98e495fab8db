"""Local HTTP receivers that behave like the services our sinks post to.

Used by the tests and by ``meshwatch demo``. Each one validates requests
against the service's documented format, records them, and can be scripted
to fail the way the real service fails.
"""

from __future__ import annotations

from pipeline.receivers.base import Problem, Received, Receiver, Reply
from pipeline.receivers.slack import SlackReceiver, validate_slack
from pipeline.receivers.threaded import ReceiverThread
from pipeline.receivers.webhook import WebhookReceiver, parse_rfc3339, validate_v4

__all__ = [
    "Problem",
    "Received",
    "Receiver",
    "ReceiverThread",
    "Reply",
    "SlackReceiver",
    "WebhookReceiver",
    "parse_rfc3339",
    "validate_slack",
    "validate_v4",
]
