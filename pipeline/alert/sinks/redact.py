"""Keep webhook secrets out of logs, reprs and error texts.

A Slack (or Teams, Discord, Google Chat) webhook URL *is* the credential:
anyone who reads it can post to the channel. httpx logs every request URL at
INFO, and exception texts may quote it, so redaction has to happen both where
we build messages and on the way out of the ``httpx`` logger.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import urlsplit

import httpx

_SLACK_HOOK = re.compile(r"https?://hooks\.slack\.com/services/[^\s\"'<>]*", re.IGNORECASE)
_lock = threading.Lock()
_secrets: dict[str, str] = {}


def redact_url(url: str, *, keep_path: bool = False) -> str:
    """Scheme and host only (plus the first path segment, for orientation).

    ``keep_path`` is for URLs that are not secret in themselves (a generic
    webhook whose token travels in a header); user info and the query string
    are dropped either way because that is where tokens hide (``sig=``,
    ``token=``).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if parts.username or parts.password:
        host = f"***@{host}"
    if keep_path:
        path = parts.path
    else:
        first = parts.path.strip("/").split("/", 1)[0]
        path = f"/{first}/***" if first else "/***"
    query = "?***" if parts.query else ""
    return f"{parts.scheme}://{host}{path}{query}"


def register_secret(secret: str, replacement: str | None = None) -> None:
    """Remember a value that must never be printed, with what to print instead."""
    if not secret:
        return
    with _lock:
        _secrets[secret] = replacement if replacement is not None else "***"


def register_url(url: str) -> str:
    """Treat a whole URL as a secret; returns its printable (redacted) form.

    Both the URL as configured and as httpx prints it (lower-cased host,
    normalised escapes) are registered, since httpx logs its own rendering.
    """
    shown = redact_url(url)
    register_secret(url, shown)
    try:
        normalised = str(httpx.URL(url))
    except (httpx.InvalidURL, TypeError, ValueError):
        normalised = url
    if normalised != url:
        register_secret(normalised, shown)
    return shown


def redact_text(text: str) -> str:
    """Replace every registered secret and every Slack webhook URL in ``text``."""
    with _lock:
        known = sorted(_secrets.items(), key=lambda kv: len(kv[0]), reverse=True)
    for secret, replacement in known:
        if secret in text:
            text = text.replace(secret, replacement)
    return _SLACK_HOOK.sub(lambda m: redact_url(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with secrets removed before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's problem, not ours
            return True
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_installed: set[str] = set()


def install_log_redaction(*logger_names: str) -> None:
    """Attach the filter once to loggers that print URLs (``httpx`` by default).

    Filters on a logger apply only to records created by that very logger
    (not its children), so it is attached to each name; our own modules
    redact at the source instead.
    """
    names = logger_names or ("httpx",)
    with _lock:
        todo = [n for n in names if n not in _installed]
        _installed.update(todo)
    for name in todo:
        logging.getLogger(name).addFilter(RedactingFilter())
