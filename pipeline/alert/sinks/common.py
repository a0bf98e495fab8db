"""What the API sinks share beyond ``base``: any method, JSON answers, auth, memos.

``base.post_json`` covers webhooks (one POST, any 2xx). Chat and ticket APIs
need GET/PATCH/PUT, query parameters, multipart uploads, JSON answers with
ids in them, and credentials in headers. The error mapping is the same as
``base``: network trouble and timeouts are retryable, an unusable URL is
permanent, and every text is redacted before it leaves.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import httpx

from pipeline.alert.message import Notification
from pipeline.alert.sinks.base import (
    USER_AGENT,
    PermanentDeliveryError,
    RetryableDeliveryError,
    body_excerpt,
    parse_retry_after,
    send,
)
from pipeline.alert.sinks.redact import register_secret

K = TypeVar("K")
V = TypeVar("V")


async def call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    target: str,
    json_body: Any = None,
    content: bytes | None = None,
    data: Mapping[str, str] | None = None,
    files: Mapping[str, tuple[str, bytes, str]] | None = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """One HTTP request, network trouble turned into retryable errors.

    ``target`` names the destination in error texts instead of the URL, which
    may carry a credential.
    """
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    kwargs: dict[str, Any] = {"headers": all_headers}
    if params:
        kwargs["params"] = dict(params)
    if files:
        kwargs["files"] = dict(files)
        if data:
            kwargs["data"] = dict(data)
    elif data is not None:
        kwargs["data"] = dict(data)
    elif content is not None:
        kwargs["content"] = content
    elif json_body is not None:
        kwargs["content"] = json.dumps(json_body, ensure_ascii=False).encode()
        all_headers.setdefault("Content-Type", "application/json")
    return await send(client, method, url, target=target, **kwargs)


def json_of(response: httpx.Response, target: str) -> Any:
    """The JSON body of a success; anything else means the URL is not the service."""
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        raise PermanentDeliveryError(
            response.status_code,
            f"{target} answered {response.status_code} without JSON",
            body_excerpt(response),
        ) from None


def first_line(response: httpx.Response) -> str:
    body = body_excerpt(response).strip()
    return body.splitlines()[0][:200] if body else ""


def retryable(
    response: httpx.Response, target: str, *, default_wait: float | None = None
) -> RetryableDeliveryError:
    """A retryable error for this answer, waiting ``Retry-After`` or ``default_wait``."""
    wait = parse_retry_after(response.headers.get("Retry-After"))
    detail = f"{target} answered {response.status_code} {first_line(response)}".rstrip()
    return RetryableDeliveryError(
        wait if wait is not None else default_wait, response.status_code, detail
    )


def permanent(response: httpx.Response, target: str, what: str = "") -> PermanentDeliveryError:
    detail = f"{target} answered {response.status_code} {what or first_line(response)}".rstrip()
    return PermanentDeliveryError(response.status_code, detail, body_excerpt(response))


def basic_auth(user: str, secret: str) -> str:
    """An ``Authorization: Basic`` value; the secret and the encoded pair are redacted."""
    register_secret(secret)
    value = base64.b64encode(f"{user}:{secret}".encode()).decode()
    register_secret(value)
    return f"Basic {value}"


def bearer_auth(token: str) -> str:
    register_secret(token)
    return f"Bearer {token}"


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, marking a cut with an ellipsis."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def clip_bytes(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes, cut on a character boundary, with an ellipsis."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    cut = raw[: max(0, limit - 3)].decode("utf-8", "ignore")
    return cut + "…"


class Memo(Generic[K, V]):
    """A small bounded map of what this process already did for a notification.

    A send of several steps (post, then upload; create, then comment) that
    fails half-way is retried as a whole by ``deliver``. Remembering the
    steps that succeeded (keyed by notification id) keeps a retry from
    posting the message or creating the ticket a second time. It lives as
    long as the sink; what must survive a restart goes into ``refs``.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)


def occurrence(n: Notification) -> str:
    """Identifies one occurrence of an incident: fingerprint plus its start."""
    return f"{n.fingerprint}:{n.incident.first_seen:.3f}"


def fingerprint_label(fingerprint: str) -> str:
    """The label that marks a ticket as this incident's (Jira, GitHub): no spaces, ≤ 50."""
    return f"meshwatch-{fingerprint}"
