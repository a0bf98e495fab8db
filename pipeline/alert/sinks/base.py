"""The contract between the delivery loop and every target.

A sink only knows how to say one thing to one service and how to read the
answer; it never retries, sleeps or logs failures. It tells the delivery loop
what happened by raising :class:`RetryableDeliveryError` (try again, maybe
after ``retry_after``) or :class:`PermanentDeliveryError` (trying again
cannot help). That split is what lets us do better than Alertmanager, which
neither retries 429 for chat targets nor stops re-sending a 400.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from pipeline import __version__
from pipeline.alert.message import Notification
from pipeline.alert.sinks.redact import redact_text

USER_AGENT = f"meshwatch/{__version__}"

#: How much of a response body to keep for people to read: enough for an
#: error message, not enough to flood a log or an incident record.
BODY_EXCERPT = 2048


@dataclass(frozen=True, slots=True)
class SinkResponse:
    """A target's acceptance; ``refs`` are ids it gave back (message ts, ticket key)."""

    refs: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    detail: str = ""


class DeliveryError(Exception):
    """A send that did not succeed; ``detail`` is already free of secrets."""

    def __init__(self, status: int | None, detail: str) -> None:
        self.status = status
        self.detail = redact_text(detail)
        super().__init__(self.detail)


class RetryableDeliveryError(DeliveryError):
    """The target may accept the same request later (429, 5xx, network)."""

    def __init__(self, retry_after: float | None, status: int | None, detail: str) -> None:
        super().__init__(status, detail)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """The target refused the request itself; repeating it cannot help."""

    def __init__(self, status: int | None, detail: str, response_body: str = "") -> None:
        super().__init__(status, detail)
        self.response_body = redact_text(response_body[:BODY_EXCERPT])


@runtime_checkable
class Sink(Protocol):
    """One configured target. ``name`` is the config entry's, unique per alerter."""

    name: str

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        """Deliver once; raise a :class:`DeliveryError` subclass on failure."""
        ...


@runtime_checkable
class RefreshableSink(Sink, Protocol):
    """A target whose firing alerts expire unless sent again (Alertmanager's API).

    The alerter calls ``refresh`` with a firing notification per open
    incident about every ``resend_interval_seconds``.
    """

    resend_interval_seconds: float

    async def refresh(
        self, notifications: Sequence[Notification], client: httpx.AsyncClient
    ) -> SinkResponse:
        """Post the still-open incidents again; raise a DeliveryError on failure."""
        ...


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    A malformed header is treated as absent rather than as an error: the
    normal backoff is a fine fallback and a bad header must not lose an alert.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means "-0000"
        return None
    reference = time.time() if now is None else now
    return max(0.0, when.timestamp() - reference)


def body_excerpt(response: httpx.Response) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        text = response.content.decode("utf-8", "replace")
    return text[:BODY_EXCERPT]


def raise_for_status(response: httpx.Response, target: str) -> None:
    """Classify a non-2xx answer the same way for every HTTP target.

    429 and 5xx are worth retrying (429 and 503 with the server's own
    ``Retry-After``); any other status, redirects included, means the request
    or the configuration is wrong and is permanent.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    body = body_excerpt(response)
    first_line = body.strip().splitlines()[0][:200] if body.strip() else ""
    detail = f"{target} answered {status} {first_line}".rstrip()
    if status == 429 or status >= 500:
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RetryableDeliveryError(retry_after, status, detail)
    raise PermanentDeliveryError(status, detail, body)


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    payload: Mapping[str, Any],
    *,
    target: str,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST JSON once, turning network trouble into retryable errors.

    ``target`` names the destination in error texts instead of the URL,
    which may be a credential.
    """
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    return await send(client, "POST", url, target=target, json=payload, headers=all_headers)


async def send(
    client: httpx.AsyncClient, method: str, url: str, *, target: str, **request: Any
) -> httpx.Response:
    """One request, with the error mapping every sink shares.

    Network trouble and timeouts are retryable; an unusable URL or header is
    permanent (no retry fixes that); error texts never carry the URL.
    """
    try:
        return await client.request(method, url, **request)
    except httpx.TimeoutException as exc:
        detail = f"{target}: timed out ({type(exc).__name__})"
        raise RetryableDeliveryError(None, None, detail) from None
    except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
        raise PermanentDeliveryError(None, f"{target}: {_reason(exc, url)}") from None
    except httpx.TransportError as exc:
        raise RetryableDeliveryError(None, None, f"{target}: {_reason(exc, url)}") from None


def _reason(exc: Exception, url: str) -> str:
    """An exception's text without the URL (chained tracebacks are dropped too)."""
    return redact_text(str(exc).replace(url, "<url>")) or type(exc).__name__
