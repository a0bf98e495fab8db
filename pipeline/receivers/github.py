"""A stand-in for GitHub's Issues REST API (one repository).

Reference §2.4. Routes: list issues (``state``, ``labels`` comma-separated,
all must match; pull requests are listed too, with a ``pull_request`` key,
as on GitHub), create (``title`` ≤ 256, ``body`` ≤ 65,536, label names
≤ 50, unknown labels created), comment, and update (``state``,
``state_reason``). Requests need a token (``Bearer`` or ``token``) and a
``User-Agent``; an ``X-GitHub-Api-Version`` must be one GitHub knows.

Every answer carries the ``x-ratelimit-*`` headers; ``primary_rate_limit``
and ``secondary_rate_limit`` script GitHub's two kinds of 403, with the
headers each comes with.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.receivers.api import ApiReceiver, Call, Effect, RejectedError, json_reply
from pipeline.receivers.base import Problem, Received, Reply

TOKEN = "ghp_testtoken0123456789abcdefABCDEF0123"
OWNER, REPO = "acme", "mesh-alerts"
API_VERSIONS = ("2022-11-28", "2026-03-10")
MAX_TITLE = 256
MAX_BODY = 65_536
MAX_LABEL = 50
DOCS = "https://docs.github.com/rest"


@dataclass
class GitHubIssue:
    number: int
    title: str
    body: str
    labels: list[str]
    state: str = "open"
    state_reason: str | None = None
    comments: list[str] = field(default_factory=list)
    pull_request: bool = False


class GitHubReceiver(ApiReceiver):
    service: ClassVar[str] = "github"

    def __init__(self, *, token: str = TOKEN, **kwargs: Any) -> None:
        self.token = token
        self.issues: dict[int, GitHubIssue] = {}
        self.labels: set[str] = set()
        self.remaining = 5000
        super().__init__(**kwargs)

    @property
    def repository(self) -> str:
        return f"{OWNER}/{REPO}"

    def add_issue(
        self, title: str, labels: list[str], *, state: str = "open", pull_request: bool = False
    ) -> GitHubIssue:
        number = len(self.issues) + 1
        issue = GitHubIssue(number, title, "", list(labels), state=state, pull_request=pull_request)
        self.issues[number] = issue
        return issue

    def with_label(self, label: str) -> list[GitHubIssue]:
        return [i for i in self.issues.values() if label in i.labels and not i.pull_request]

    # -- rate limits -----------------------------------------------------------------------

    def _limit_headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-used": str(5000 - self.remaining),
            "x-ratelimit-resource": "core",
        }

    def primary_rate_limit(self, reset_in: int = 120, times: int = 1) -> None:
        headers = {
            **self._limit_headers(),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": str(int(time.time()) + reset_in),
        }
        body = {"message": "API rate limit exceeded for user ID 1.", "documentation_url": DOCS}
        self.script(*[json_reply(403, body, headers)] * times)

    def secondary_rate_limit(self, retry_after: int | None = 60, times: int = 1) -> None:
        headers = self._limit_headers()
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        body = {
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes "
            "before you try again.",
            "documentation_url": DOCS,
        }
        self.script(*[json_reply(403, body, headers)] * times)

    # -- answers -------------------------------------------------------------------------------

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        first = problems[0]
        status = first.status or 422
        if first.code in ("invalid_content_type", "invalid_payload"):
            status = 400
        if first.code == "invalid_method":
            return self.not_found("", "")
        if status == 422:
            body: dict[str, Any] = {
                "message": "Validation Failed",
                "errors": [
                    {"resource": "Issue", "code": p.code, "message": p.detail} for p in problems
                ],
                "documentation_url": DOCS,
            }
        else:
            body = {"message": first.detail, "documentation_url": DOCS}
        return json_reply(status, body, self._limit_headers())

    def not_found(self, method: str, path: str) -> Reply:
        return json_reply(404, {"message": "Not Found", "documentation_url": DOCS})

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        message = {429: "API rate limit exceeded", 400: "Problems parsing JSON"}.get(
            status, "Server Error"
        )
        return json_reply(status, {"message": message}, {**self._limit_headers(), **headers})

    def summarize(self, record: Received) -> str:
        return f"#{record.seq} {record.route} -> {record.status}"

    # -- routes ----------------------------------------------------------------------

    def setup_routes(self) -> None:
        base = f"/repos/{OWNER}/{REPO}/issues"
        self.route("list", "GET", base, self._list, body="none")
        self.route("create", "POST", base, self._create)
        self.route("comment", "POST", base + r"/(?P<number>\d+)/comments", self._comment)
        self.route("update", "PATCH", base + r"/(?P<number>\d+)", self._update)

    def authorize(self, call: Call) -> list[Problem]:
        if not call.header("user-agent"):
            return [
                Problem(
                    "forbidden",
                    "Request forbidden by administrative rules. Please make "
                    "sure your request has a User-Agent header.",
                    403,
                )
            ]
        version = call.header("x-github-api-version")
        if version is not None and version not in API_VERSIONS:
            return [Problem("bad_version", f"API version {version!r} is not supported.", 400)]
        auth = call.header("authorization") or ""
        scheme, _, value = auth.partition(" ")
        if not auth:
            return [Problem("unauthorized", "Requires authentication", 401)]
        if scheme.lower() not in ("bearer", "token") or value.strip() != self.token:
            return [Problem("unauthorized", "Bad credentials", 401)]
        return []

    def _issue(self, call: Call) -> GitHubIssue:
        issue = self.issues.get(int(call.params["number"]))
        if issue is None:
            raise RejectedError(Problem("not_found", "Not Found", 404))
        return issue

    def _json(self, issue: GitHubIssue) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": 900_000 + issue.number,
            "number": issue.number,
            "title": issue.title,
            "body": issue.body,
            "state": issue.state,
            "state_reason": issue.state_reason,
            "labels": [{"name": name} for name in issue.labels],
            "comments": len(issue.comments),
            "html_url": f"https://github.com/{OWNER}/{REPO}/issues/{issue.number}",
        }
        if issue.pull_request:
            out["pull_request"] = {"url": f"https://api.github.com/repos/{OWNER}/{REPO}/pulls/1"}
        return out

    def _reply(self, status: int, data: Any) -> Reply:
        self.remaining = max(0, self.remaining - 1)
        return json_reply(status, data, self._limit_headers())

    def _list(self, call: Call) -> Effect:
        state = call.query.get("state", "open")
        if state not in ("open", "closed", "all"):
            raise RejectedError(Problem("invalid", f"state: {state!r}"))
        wanted = [x for x in call.query.get("labels", "").split(",") if x]
        per_page = min(100, int(call.query.get("per_page", "30")))

        def effect() -> Reply:
            items = [
                i
                for i in sorted(self.issues.values(), key=lambda i: -i.number)
                if (state == "all" or i.state == state) and all(w in i.labels for w in wanted)
            ]
            return self._reply(200, [self._json(i) for i in items[:per_page]])

        return effect

    def _create(self, call: Call) -> Effect:
        body = call.payload if isinstance(call.payload, dict) else None
        if body is None:
            raise RejectedError(Problem("invalid_payload", "Problems parsing JSON"))
        problems = []
        raw_title = body.get("title")
        title = raw_title if isinstance(raw_title, str) else ""
        if not title.strip():
            problems.append(Problem("missing_field", "title is missing"))
        elif len(title) > MAX_TITLE:
            problems.append(Problem("invalid", f"title is too long (maximum is {MAX_TITLE})"))
        text = body.get("body", "")
        if not isinstance(text, str) or len(text) > MAX_BODY:
            problems.append(Problem("invalid", f"body is too long (maximum is {MAX_BODY})"))
        labels = body.get("labels", [])
        if not isinstance(labels, list) or any(
            not isinstance(x, str) or not x or len(x) > MAX_LABEL for x in labels
        ):
            problems.append(Problem("invalid", f"label names must be 1..{MAX_LABEL} characters"))
        if problems:
            raise RejectedError(*problems)

        def effect() -> Reply:
            self.labels.update(labels)  # created on the fly, as GitHub does for writers
            issue = self.add_issue(title, labels)
            issue.body = text
            return self._reply(201, self._json(issue))

        return effect

    def _comment(self, call: Call) -> Effect:
        issue = self._issue(call)
        text = call.payload.get("body") if isinstance(call.payload, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_BODY:
            raise RejectedError(Problem("invalid", "body is missing or too long"))

        def effect() -> Reply:
            issue.comments.append(text)
            return self._reply(201, {"id": 700_000 + len(issue.comments), "body": text})

        return effect

    def _update(self, call: Call) -> Effect:
        issue = self._issue(call)
        body = call.payload if isinstance(call.payload, dict) else {}
        state = body.get("state", issue.state)
        reason = body.get("state_reason")
        if state not in ("open", "closed"):
            raise RejectedError(Problem("invalid", f"state: {state!r}"))
        if reason not in (None, "completed", "not_planned", "reopened"):
            raise RejectedError(Problem("invalid", f"state_reason: {reason!r}"))

        def effect() -> Reply:
            issue.state = state
            issue.state_reason = reason
            return self._reply(200, self._json(issue))

        return effect
