"""Jira issues for incidents: Cloud (REST v3, ADF) and Data Center (REST v2, wiki text).

One open issue per incident, found by a label carrying the fingerprint
(the pattern of Alertmanager's Jira notifier, reference §2.3):

* firing: search the project for an open issue with the label; comment on it
  if there is one (a recurrence, or a restart that lost the key), otherwise
  create one. Cloud searches with ``/rest/api/3/search/jql`` (the old
  ``/search`` answers 410 there); Data Center with ``/rest/api/2/search``;
* update: comment on the issue from the refs (or the one the search finds);
* resolve: comment, then apply the configured transition (by id or by name,
  any case) unless the issue is already in a done status.

Cloud's search is eventually consistent: an issue created a moment ago may
not be found yet. So the key goes into the refs as soon as we have it, and a
retry within this process remembers the issue it created (and the comment it
posted) instead of searching again.

Auth: Cloud uses Basic with the account e-mail and an API token; Data Center
a personal access token as Bearer (PATs do not work with Basic).
"""

from __future__ import annotations

from typing import Any, Literal

import httpx

from pipeline.alert.message import (
    Notification,
    body_lines,
    format_number,
    format_utc,
    headline,
    subject,
)
from pipeline.alert.sinks.base import SinkResponse
from pipeline.alert.sinks.common import (
    Memo,
    basic_auth,
    bearer_auth,
    call,
    clip,
    fingerprint_label,
    json_of,
    occurrence,
    permanent,
    retryable,
)
from pipeline.config import JiraCloudSink, JiraDataCenterSink, read_secret

Edition = Literal["cloud", "dc"]
MAX_SUMMARY = 255
MAX_TEXT = 30_000
SEARCH_FIELDS = ["summary", "status", "labels"]


class IssueGoneError(Exception):
    """The issue named in the refs no longer exists (404)."""


# -- content ------------------------------------------------------------------------------


def summary(n: Notification) -> str:
    text = f"[meshwatch] {subject(n.finding)}"
    if n.test:
        text = f"[TEST] {text}"
    return clip(" ".join(text.split()), MAX_SUMMARY)


def _facts(n: Notification) -> list[tuple[str, str]]:
    f = n.finding
    return [
        ("Namespace", f.namespace),
        ("Workload", f"{f.workload_kind}/{f.workload}"),
        ("Route", f"{f.direction} {f.route}"),
        ("Kind", f.kind),
        ("Severity", n.incident.severity),
        ("Score", format_number(f.score)),
        ("Window", format_utc(f.window_end)),
        ("Fingerprint", n.fingerprint),
    ]


def _comment_head(n: Notification, reopened: bool) -> str:
    if n.resolved:
        return "Resolved"
    if n.action == "update":
        return f"Update: severity {n.incident.severity}, {n.incident.count} anomalous windows"
    return "Fired again" if reopened else "Firing"


# Atlassian Document Format (Cloud v3).


def _t(text: str, *marks: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "text", "text": text}
    if marks:
        node["marks"] = list(marks)
    return node


def _para(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"type": "paragraph", "content": list(nodes)}


def _links_adf(n: Notification) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for name, url in n.links.items():
        if url.startswith(("https://", "http://")):
            if nodes:
                nodes.append(_t(" · "))
            nodes.append(_t(name or url, {"type": "link", "attrs": {"href": url}}))
    return [_para(*nodes)] if nodes else []


def adf_description(n: Notification) -> dict[str, Any]:
    content: list[dict[str, Any]] = [_para(_t(clip(headline(n), MAX_TEXT), {"type": "strong"}))]
    content += [_para(_t(clip(line, MAX_TEXT))) for line in body_lines(n) if line]
    content.append(
        {
            "type": "bulletList",
            "content": [
                {"type": "listItem", "content": [_para(_t(f"{k}: ", {"type": "strong"}), _t(v))]}
                for k, v in _facts(n)
                if v
            ],
        }
    )
    content += _links_adf(n)
    return {"type": "doc", "version": 1, "content": content}


def adf_comment(n: Notification, reopened: bool = False) -> dict[str, Any]:
    content = [_para(_t(_comment_head(n, reopened), {"type": "strong"}))]
    content += [_para(_t(clip(line, MAX_TEXT))) for line in body_lines(n) if line]
    content += _links_adf(n)
    return {"type": "doc", "version": 1, "content": content}


# Wiki markup (Data Center v2).


def wiki_escape(text: str) -> str:
    for ch in ("\\", "[", "]", "{", "}", "*", "_", "|", "^", "~", "+", "-", "#"):
        text = text.replace(ch, "\\" + ch)
    return text


def _links_wiki(n: Notification) -> list[str]:
    return [
        f"[{wiki_escape(name)}|{url}]"
        for name, url in n.links.items()
        if url.startswith(("https://", "http://")) and "|" not in url and "]" not in url
    ]


def wiki_description(n: Notification) -> str:
    lines = [f"*{wiki_escape(headline(n))}*", ""]
    lines += [wiki_escape(line) for line in body_lines(n)]
    lines.append("")
    lines += [f"* *{k}:* {wiki_escape(v)}" for k, v in _facts(n) if v]
    links = _links_wiki(n)
    if links:
        lines += ["", " · ".join(links)]
    return clip("\n".join(lines), MAX_TEXT)


def wiki_comment(n: Notification, reopened: bool = False) -> str:
    lines = [f"*{_comment_head(n, reopened)}*"] + [wiki_escape(line) for line in body_lines(n)]
    links = _links_wiki(n)
    if links:
        lines.append(" · ".join(links))
    return clip("\n".join(lines), MAX_TEXT)


def jql_for(project: str, label: str) -> str:
    return (
        f'project = "{project}" AND labels = "{label}" AND statusCategory != Done '
        "ORDER BY created DESC"
    )


# -- the sink ---------------------------------------------------------------------------------


class JiraIssueSink:
    """Find-or-create, comment, transition; ``edition`` picks the API flavour."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        edition: Edition,
        authorization: str,
        project: str,
        issue_type: str = "Task",
        labels: list[str] | None = None,
        resolve_transition: str = "Done",
        extra_fields: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.edition: Edition = edition
        self.api = f"{self.url}/rest/api/{3 if edition == 'cloud' else 2}"
        self._headers = {"Authorization": authorization, "Accept": "application/json"}
        self.project = project
        self.issue_type = issue_type
        self.labels = list(labels if labels is not None else ["meshwatch"])
        self.resolve_transition = resolve_transition
        self.extra_fields = dict(extra_fields or {})
        self._target = f"jira {name!r}"
        self._issues: Memo[str, str] = Memo()  # occurrence -> issue key we created
        self._steps: Memo[tuple[str, str], str] = Memo()  # (notification id, step)

    @classmethod
    def from_config(cls, cfg: JiraCloudSink | JiraDataCenterSink) -> JiraIssueSink:
        if isinstance(cfg, JiraCloudSink):
            token = read_secret(cfg.api_token, cfg.api_token_file, cfg.api_token_env)
            if not token:
                raise ValueError(f"jira_cloud sink {cfg.name!r}: the API token is empty")
            auth = basic_auth(cfg.email, token)
            edition: Edition = "cloud"
        else:
            token = read_secret(cfg.token, cfg.token_file, cfg.token_env)
            if not token:
                raise ValueError(f"jira_dc sink {cfg.name!r}: the token is empty")
            auth, edition = bearer_auth(token), "dc"
        return cls(
            cfg.name,
            cfg.url,
            edition=edition,
            authorization=auth,
            project=cfg.project,
            issue_type=cfg.issue_type,
            labels=cfg.labels,
            resolve_transition=cfg.resolve_transition,
            extra_fields=cfg.extra_fields,
        )

    def __repr__(self) -> str:
        return f"JiraIssueSink(name={self.name!r}, url={self.url!r}, edition={self.edition!r})"

    # -- HTTP -------------------------------------------------------------------------------

    async def _call(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        what: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        issue: bool = False,
    ) -> httpx.Response:
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
        status = response.status_code
        if status == 429 or status >= 500:
            raise retryable(response, target)
        if status == 404 and issue:
            raise IssueGoneError(path)
        if not 200 <= status < 300:
            raise permanent(response, target, _jira_errors(response))
        return response

    # -- operations ---------------------------------------------------------------------------

    def label(self, n: Notification) -> str:
        return fingerprint_label(n.fingerprint)

    async def find_open(self, n: Notification, client: httpx.AsyncClient) -> str | None:
        body = {
            "jql": jql_for(self.project, self.label(n)),
            "fields": SEARCH_FIELDS,
            "maxResults": 5,
        }
        path = "/search/jql" if self.edition == "cloud" else "/search"
        response = await self._call(client, "POST", path, "search", body=body)
        data = json_of(response, self._target)
        issues = data.get("issues") if isinstance(data, dict) else None
        if not issues:
            return None
        return str(issues[0]["key"])

    async def create(self, n: Notification, client: httpx.AsyncClient) -> str:
        description: Any = adf_description(n) if self.edition == "cloud" else wiki_description(n)
        fields: dict[str, Any] = {
            "project": {"key": self.project},
            "issuetype": {"name": self.issue_type},
            "summary": summary(n),
            "labels": [*self.labels, self.label(n)],
            "description": description,
            **self.extra_fields,
        }
        response = await self._call(client, "POST", "/issue", "create", body={"fields": fields})
        data = json_of(response, self._target)
        return str(data["key"])

    async def comment(
        self, key: str, n: Notification, client: httpx.AsyncClient, *, reopened: bool = False
    ) -> None:
        body: Any = (
            adf_comment(n, reopened) if self.edition == "cloud" else wiki_comment(n, reopened)
        )
        await self._call(
            client, "POST", f"/issue/{key}/comment", "comment", body={"body": body}, issue=True
        )

    async def resolve(self, key: str, client: httpx.AsyncClient) -> str:
        """Apply the resolve transition; returns what was done."""
        response = await self._call(
            client, "GET", f"/issue/{key}", "read issue", params={"fields": "status"}, issue=True
        )
        data = json_of(response, self._target)
        category = (
            data.get("fields", {}).get("status", {}).get("statusCategory", {}).get("key")
            if isinstance(data, dict)
            else None
        )
        if category == "done":
            return "already done"
        response = await self._call(
            client, "GET", f"/issue/{key}/transitions", "transitions", issue=True
        )
        transitions = json_of(response, self._target).get("transitions", [])
        wanted = self.resolve_transition.strip()
        chosen = next(
            (t for t in transitions if str(t.get("id")) == wanted),
            next(
                (t for t in transitions if str(t.get("name", "")).lower() == wanted.lower()), None
            ),
        )
        if chosen is None:
            names = ", ".join(f"{t.get('name')} ({t.get('id')})" for t in transitions) or "none"
            raise permanent(
                response,
                f"{self._target} transition",
                f"no transition {wanted!r} from the issue's status; available: {names}",
            )
        await self._call(
            client,
            "POST",
            f"/issue/{key}/transitions",
            "transition",
            body={"transition": {"id": str(chosen["id"])}},
            issue=True,
        )
        return f"transitioned ({chosen.get('name')})"

    # -- send -----------------------------------------------------------------------------------

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        refs = n.incident.sink_refs.get(self.name, {})
        key = refs.get("issue_key") or self._issues.get(occurrence(n))
        try:
            return await self._send(n, client, key)
        except IssueGoneError:
            # Deleted (or moved out of reach) since we stored it: start over.
            self._issues.pop(occurrence(n))
            return await self._send(n, client, None)

    async def _send(
        self, n: Notification, client: httpx.AsyncClient, key: str | None
    ) -> SinkResponse:
        nid = n.notification_id
        created = found = False
        if key is None:
            key = await self.find_open(n, client)
            found = key is not None
            if key is None and n.resolved:
                return SinkResponse(refs={}, status=200, detail="no open issue to resolve")
            if key is None:
                key = self._steps.get((nid, "create")) or await self.create(n, client)
                self._steps.put((nid, "create"), key)
                created = True
            self._issues.put(occurrence(n), key)
        if not created and self._steps.get((nid, "comment")) is None:
            await self.comment(key, n, client, reopened=found and n.action == "firing")
            self._steps.put((nid, "comment"), key)
        detail = "created" if created else "commented"
        if n.resolved:
            detail += "; " + await self.resolve(key, client)
            self._issues.pop(occurrence(n))
        for step in ("create", "comment"):
            self._steps.pop((nid, step))
        return SinkResponse(
            refs={"issue_key": key, "issue_url": f"{self.url}/browse/{key}"},
            status=200,
            detail=detail,
        )


def _jira_errors(response: httpx.Response) -> str:
    """Jira's ``errorMessages`` and ``errors`` in one line."""
    try:
        data = response.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [str(m) for m in data.get("errorMessages", []) or []]
    errors = data.get("errors") or {}
    if isinstance(errors, dict):
        parts += [f"{k}: {v}" for k, v in errors.items()]
    return "; ".join(parts)[:300]
