"""GitHub Issues: one open issue per incident, found by a fingerprint label.

Reference §2.4: the open issue is looked up with the issues *list* filtered
by the label (the Search API has far tighter limits), pull requests in the
answer are skipped; a recurrence or an update is a comment; the resolve is
a comment and ``PATCH state=closed, state_reason=completed``. Labels that do
not exist yet are created by GitHub with the issue.

Rate limits are the part to get right: GitHub answers 403 *or* 429 when a
limit is hit. A ``retry-after`` header says how long to wait; otherwise
``x-ratelimit-remaining: 0`` with ``x-ratelimit-reset`` (epoch seconds)
means the primary limit; a "secondary rate limit" message without headers
means wait at least a minute. Any other 403 is a permission problem and is
permanent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from pipeline.alert.message import (
    Notification,
    body_lines,
    format_number,
    format_utc,
    headline,
    subject,
)
from pipeline.alert.sinks.base import PermanentDeliveryError, RetryableDeliveryError, SinkResponse
from pipeline.alert.sinks.common import (
    Memo,
    bearer_auth,
    call,
    clip,
    fingerprint_label,
    first_line,
    json_of,
    occurrence,
    permanent,
    retryable,
)
from pipeline.config import GitHubSink, read_secret

API_VERSION = "2022-11-28"
MAX_TITLE = 256
MAX_BODY = 65_536
SECONDARY_WAIT = 60.0


def title_of(n: Notification) -> str:
    text = f"[meshwatch] {subject(n.finding)}"
    return clip(f"[TEST] {text}" if n.test else text, MAX_TITLE)


def md_escape(text: str) -> str:
    for ch in ("\\", "`", "*", "_", "[", "]", "<", ">", "|", "#"):
        text = text.replace(ch, "\\" + ch)
    return text


def _links(n: Notification) -> str:
    return " · ".join(
        f"[{md_escape(name)}]({url})"
        for name, url in n.links.items()
        if url.startswith(("https://", "http://")) and ")" not in url
    )


def issue_body(n: Notification) -> str:
    f = n.finding
    lines = [f"**{md_escape(headline(n))}**", ""]
    lines += [md_escape(line) for line in body_lines(n)]
    lines += [
        "",
        "| | |",
        "|---|---|",
        f"| Namespace | {md_escape(f.namespace)} |",
        f"| Workload | {md_escape(f.workload_kind)}/{md_escape(f.workload)} |",
        f"| Route | {f.direction} {md_escape(f.route)} |",
        f"| Severity | {n.incident.severity} |",
        f"| Score | {format_number(f.score)} |",
        f"| Window | {format_utc(f.window_end)} |",
        f"| Fingerprint | `{n.fingerprint}` |",
    ]
    links = _links(n)
    if links:
        lines += ["", links]
    lines += ["", "_Opened by meshwatch; it comments on changes and closes this issue on resolve._"]
    return clip("\n".join(lines), MAX_BODY)


def comment_body(n: Notification, *, recurrence: bool = False) -> str:
    if n.resolved:
        head = "✅ **Resolved**"
    elif n.action == "update":
        head = (
            f"🟠 **Update**: severity {n.incident.severity}, {n.incident.count} anomalous windows"
        )
    else:
        head = "🔴 **Fired again**" if recurrence else "🔴 **Firing**"
    lines = [head, ""] + [md_escape(line) for line in body_lines(n)]
    links = _links(n)
    if links:
        lines += ["", links]
    return clip("\n".join(lines), MAX_BODY)


def rate_limit_error(
    response: httpx.Response, target: str, *, now: Callable[[], float] = time.time
) -> RetryableDeliveryError | None:
    """The retryable error for a 403/429 that is a rate limit; None for other refusals."""
    if response.status_code not in (403, 429):
        return None
    headers = response.headers
    detail = f"{target} answered {response.status_code} {first_line(response)}".rstrip()
    wait: float | None = None
    if headers.get("retry-after") is not None:
        error = retryable(response, target)
        return error
    if (
        headers.get("x-ratelimit-remaining") == "0"
        and headers.get("x-ratelimit-reset", "").isdigit()
    ):
        wait = max(0.0, float(headers["x-ratelimit-reset"]) - now())
        return RetryableDeliveryError(wait, response.status_code, detail)
    if "rate limit" in response.text.lower() or response.status_code == 429:
        return RetryableDeliveryError(SECONDARY_WAIT, response.status_code, detail)
    return None


class GitHubIssueSink:
    """Find-or-create by label, comment, close; the token is the secret."""

    def __init__(
        self,
        name: str,
        repository: str,
        token: str,
        *,
        api_url: str = "https://api.github.com",
        labels: list[str] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.repository = repository
        self.api = f"{api_url.rstrip('/')}/repos/{repository}"
        self.labels = list(labels if labels is not None else ["meshwatch"])
        self._headers = {
            "Authorization": bearer_auth(token),
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
        }
        self._now = now
        self._target = f"github {name!r}"
        self._issues: Memo[str, str] = Memo()
        self._steps: Memo[tuple[str, str], str] = Memo()

    @classmethod
    def from_config(cls, cfg: GitHubSink) -> GitHubIssueSink:
        token = read_secret(cfg.token, cfg.token_file, cfg.token_env)
        if not token:
            raise ValueError(f"github sink {cfg.name!r}: the token is empty")
        return cls(cfg.name, cfg.repository, token, api_url=cfg.api_url, labels=cfg.labels)

    def __repr__(self) -> str:
        return f"GitHubIssueSink(name={self.name!r}, repository={self.repository!r})"

    async def _call(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        what: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        target = f"{self._target} {what}"
        response = await call(
            client,
            method,
            f"{self.api}{path}",
            target=target,
            json_body=body,
            params=params,
            headers=self._headers,
        )
        if response.status_code >= 500:
            raise retryable(response, target)
        limited = rate_limit_error(response, target, now=self._now)
        if limited is not None:
            raise limited
        if not 200 <= response.status_code < 300:
            raise permanent(response, target)
        return json_of(response, target)

    def label(self, n: Notification) -> str:
        return fingerprint_label(n.fingerprint)

    async def find_open(self, n: Notification, client: httpx.AsyncClient) -> str | None:
        items = await self._call(
            client,
            "GET",
            "/issues",
            "list issues",
            params={"state": "open", "labels": self.label(n), "per_page": "10"},
        )
        if not isinstance(items, list):
            raise PermanentDeliveryError(200, f"{self._target}: the issue list is not a list")
        for item in items:
            if isinstance(item, dict) and "pull_request" not in item:
                return str(item["number"])
        return None

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        nid = n.notification_id
        refs = n.incident.sink_refs.get(self.name, {})
        number = refs.get("issue_number") or self._issues.get(occurrence(n))
        created = found = False
        if number is None:
            number = await self.find_open(n, client)
            found = number is not None
            if number is None and n.resolved:
                return SinkResponse(refs={}, status=200, detail="no open issue to close")
            if number is None:
                number = self._steps.get((nid, "create"))
                if number is None:
                    issue = await self._call(
                        client,
                        "POST",
                        "/issues",
                        "create issue",
                        body={
                            "title": title_of(n),
                            "body": issue_body(n),
                            "labels": [*self.labels, self.label(n)],
                        },
                    )
                    number = str(issue["number"])
                    self._steps.put((nid, "create"), number)
                created = True
            self._issues.put(occurrence(n), number)
        if not created and self._steps.get((nid, "comment")) is None:
            await self._call(
                client,
                "POST",
                f"/issues/{number}/comments",
                "comment",
                body={"body": comment_body(n, recurrence=found)},
            )
            self._steps.put((nid, "comment"), number)
        detail = "created" if created else "commented"
        if n.resolved:
            await self._call(
                client,
                "PATCH",
                f"/issues/{number}",
                "close issue",
                body={"state": "closed", "state_reason": "completed"},
            )
            self._issues.pop(occurrence(n))
            detail += "; closed"
        for step in ("create", "comment"):
            self._steps.pop((nid, step))
        return SinkResponse(refs={"issue_number": number}, status=200, detail=detail)
