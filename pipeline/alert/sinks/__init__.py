"""Notification targets: one module per service, one common contract in ``base``.

Adding a target means a config class in ``pipeline.config`` (joined to the
``Sink`` union), a module here with a class that has ``name`` and
``async send()``, and one branch in :func:`build_sink`.
"""

from __future__ import annotations

from rich.console import Console

from pipeline.alert.sinks.base import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    Sink,
    SinkResponse,
)
from pipeline.alert.sinks.console import RichConsoleSink
from pipeline.alert.sinks.slack import SlackWebhookSink
from pipeline.alert.sinks.webhook import AlertmanagerWebhookSink
from pipeline.config import ConsoleSink, SlackSink, WebhookSink

SinkConfig = ConsoleSink | WebhookSink | SlackSink

__all__ = [
    "AlertmanagerWebhookSink",
    "DeliveryError",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
    "RichConsoleSink",
    "Sink",
    "SinkConfig",
    "SinkResponse",
    "SlackWebhookSink",
    "build_sink",
]


def build_sink(entry: SinkConfig, *, console: Console | None = None) -> Sink:
    """The sink for one ``alerter.sinks`` entry.

    Secrets are read here, once, so a missing secret file stops the alerter
    at start-up instead of failing every delivery later. ``console`` lets
    tests and the demo choose where the console sink prints.
    """
    if isinstance(entry, ConsoleSink):
        return RichConsoleSink(entry.name, console)
    if isinstance(entry, WebhookSink):
        return AlertmanagerWebhookSink.from_config(entry)
    if isinstance(entry, SlackSink):
        return SlackWebhookSink.from_config(entry)
    raise TypeError(f"no sink implementation for {type(entry).__name__}")
