"""A stand-in for Jira: Cloud (REST v3, ADF) or Data Center (REST v2, wiki text).

Reference §2.3. What it holds sinks to:

* auth: Cloud takes Basic ``email:api_token``; Data Center a PAT as Bearer
  (Basic with a PAT is refused, as Jira does);
* search: Cloud only has ``/rest/api/3/search/jql`` (``/rest/api/{2,3}/search``
  answer 410 Gone, CHANGE-2046); Data Center has ``/rest/api/2/search``.
  JQL is parsed for the one shape our sink sends (project, label, status
  category); anything else is Jira's 400 "Error in the JQL Query". Cloud's
  search can be made eventually consistent (``search_lag``): a new issue
  shows up only after that many further searches;
* create: project, issue type, summary (≤ 255, one line), labels without
  spaces, description as an ADF document (Cloud) or a string (DC);
* comments (ADF or string), ``GET /issue/{key}`` and the transitions of a
  To Do → In Progress → Done workflow.

Issues live in memory with their comments and transition history.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pipeline.receivers.api import ApiReceiver, Call, Effect, RejectedError, json_reply
from pipeline.receivers.base import Problem, Received, Reply

EMAIL = "alerts@example.com"
API_TOKEN = "ATATT3xFfGF0-test-api-token"
PAT = "NDE0MjY4-test-personal-access-token"
PROJECTS = ("OPS",)
ISSUE_TYPES = ("Task", "Bug", "Incident")
MAX_SUMMARY = 255
MAX_LABEL = 255
STATUSES = {
    "To Do": "new",
    "In Progress": "indeterminate",
    "Done": "done",
}
#: (id, name, to-status), offered from every status but the target.
TRANSITIONS = (
    ("11", "To Do", "To Do"),
    ("21", "In Progress", "In Progress"),
    ("31", "Done", "Done"),
)
_JQL = re.compile(
    r'^project\s*=\s*"?(?P<project>[A-Z][A-Z0-9_]*)"?\s+AND\s+labels\s*=\s*"(?P<label>[^"\s]+)"'
    r"(?:\s+AND\s+statusCategory\s*!=\s*(?P<cat>Done|\"Done\"))?"
    r"(?:\s+ORDER\s+BY\s+[\w\s,]+)?$",
    re.IGNORECASE,
)

Edition = Literal["cloud", "dc"]


@dataclass
class JiraIssue:
    id: str
    key: str
    fields: dict[str, Any]
    status: str = "To Do"
    comments: list[Any] = field(default_factory=list)
    transitions: list[str] = field(default_factory=list)
    visible_after: int = 0  # search count at which Cloud's index has it


def is_adf(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("type") == "doc"
        and value.get("version") == 1
        and isinstance(value.get("content"), list)
    )


def adf_problems(doc: Any, where: str) -> list[str]:
    """Shallow ADF checks: a doc of block nodes whose text nodes are non-empty strings."""
    if not is_adf(doc):
        return [f"{where}: Operation value must be an Atlassian Document (type doc, version 1)"]
    errors: list[str] = []

    def walk(node: Any, at: str) -> None:
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            errors.append(f"{at}: not an ADF node")
            return
        if node["type"] == "text":
            if not isinstance(node.get("text"), str) or not node["text"]:
                errors.append(f"{at}: text nodes need non-empty text")
            for mark in node.get("marks", []):
                if mark.get("type") == "link" and not str(mark.get("attrs", {}).get("href", "")):
                    errors.append(f"{at}: link mark without href")
        for i, child in enumerate(node.get("content", []) or []):
            walk(child, f"{at}.content[{i}]")

    for i, block in enumerate(doc["content"]):
        walk(block, f"{where}.content[{i}]")
    return errors


class JiraReceiver(ApiReceiver):
    service: ClassVar[str] = "jira"

    def __init__(
        self,
        *,
        edition: Edition = "cloud",
        email: str = EMAIL,
        api_token: str = API_TOKEN,
        pat: str = PAT,
        search_lag: int = 0,
        **kwargs: Any,
    ) -> None:
        self.edition: Edition = edition
        self.email = email
        self.api_token = api_token
        self.pat = pat
        self.search_lag = search_lag
        self.issues: dict[str, JiraIssue] = {}
        self._searches = 0
        self._next_id = 10000
        super().__init__(**kwargs)

    @property
    def api(self) -> str:
        return f"/rest/api/{3 if self.edition == 'cloud' else 2}"

    def issues_with(self, label: str) -> list[JiraIssue]:
        return [i for i in self.issues.values() if label in i.fields.get("labels", [])]

    def add_issue(
        self, labels: list[str], status: str = "To Do", summary: str = "seeded"
    ) -> JiraIssue:
        """Put an issue in the store as if a person (or an earlier run) created it."""
        issue = self._new_issue(
            {
                "project": {"key": PROJECTS[0]},
                "summary": summary,
                "labels": labels,
                "issuetype": {"name": "Task"},
            }
        )
        issue.status = status
        issue.visible_after = 0
        return issue

    # -- answers ----------------------------------------------------------------------------

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        first = problems[0]
        status = first.status or 400
        if status == 401:
            return Reply(401, "Client must be authenticated to access this resource.")
        if first.code == "field":
            errors = {}
            for p in problems:
                name, _, text = p.detail.partition(": ")
                errors[name] = text
            return json_reply(status, {"errorMessages": [], "errors": errors})
        return json_reply(status, {"errorMessages": [p.detail for p in problems], "errors": {}})

    def not_found(self, method: str, path: str) -> Reply:
        return json_reply(404, {"errorMessages": ["Not found"], "errors": {}})

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        text = {429: "Rate limit exceeded.", 400: "Bad request"}.get(
            status, "Internal server error"
        )
        return json_reply(status, {"errorMessages": [text], "errors": {}}, headers)

    def summarize(self, record: Received) -> str:
        return f"#{record.seq} {record.route} -> {record.status}"

    # -- routes -----------------------------------------------------------------------------------

    def setup_routes(self) -> None:
        api = self.api
        key = r"(?P<key>[A-Z][A-Z0-9_]*-\d+)"
        if self.edition == "cloud":
            self.route("search", "POST", f"{api}/search/jql", self._search)
            for old in ("/rest/api/3/search", "/rest/api/2/search"):
                self.route("old_search", "POST", old, self._gone)
                self.route("old_search", "GET", old, self._gone, body="none")
        else:
            self.route("search", "POST", f"{api}/search", self._search)
        self.route("create", "POST", f"{api}/issue", self._create)
        self.route("get", "GET", f"{api}/issue/{key}", self._get, body="none")
        self.route("comment", "POST", f"{api}/issue/{key}/comment", self._comment)
        self.route(
            "transitions", "GET", f"{api}/issue/{key}/transitions", self._transitions, body="none"
        )
        self.route("transition", "POST", f"{api}/issue/{key}/transitions", self._transition)

    def authorize(self, call: Call) -> list[Problem]:
        auth = call.header("authorization") or ""
        scheme, _, value = auth.partition(" ")
        if self.edition == "cloud":
            expected = base64.b64encode(f"{self.email}:{self.api_token}".encode()).decode()
            ok = scheme.lower() == "basic" and value.strip() == expected
        else:
            ok = scheme.lower() == "bearer" and value.strip() == self.pat
        return [] if ok else [Problem("unauthorized", "bad or missing credentials", 401)]

    # -- handlers --------------------------------------------------------------------------------

    def _gone(self, call: Call) -> Effect:
        def effect() -> Reply:
            message = (
                "The requested API has been removed. Please migrate to the "
                "/rest/api/3/search/jql API. See CHANGE-2046."
            )
            return json_reply(410, {"errorMessages": [message], "errors": {}})

        return effect

    def _issue(self, call: Call) -> JiraIssue:
        issue = self.issues.get(call.params["key"])
        if issue is None:
            raise RejectedError(
                Problem(
                    "not_found",
                    "Issue does not exist or you do not have permission to see it.",
                    404,
                )
            )
        return issue

    def _issue_json(self, issue: JiraIssue, fields: Sequence[str] | None = None) -> dict[str, Any]:
        all_fields = {
            **issue.fields,
            "status": {"name": issue.status, "statusCategory": {"key": STATUSES[issue.status]}},
        }
        wanted = (
            all_fields if fields is None else {k: v for k, v in all_fields.items() if k in fields}
        )
        return {
            "id": issue.id,
            "key": issue.key,
            "self": f"{self.url}{self.api}/issue/{issue.id}",
            "fields": wanted,
        }

    def _search(self, call: Call) -> Effect:
        body = call.payload
        if not isinstance(body, dict) or not isinstance(body.get("jql"), str):
            raise RejectedError(Problem("jql", "jql: a JQL query is required"))
        match = _JQL.match(body["jql"].strip())
        if match is None:
            raise RejectedError(
                Problem("jql", f"Error in the JQL Query: cannot parse {body['jql']!r}")
            )
        if match["project"] not in PROJECTS:
            raise RejectedError(
                Problem(
                    "jql", f"The value '{match['project']}' does not exist for the field 'project'."
                )
            )
        fields = body.get("fields")
        limit = int(body.get("maxResults", 50))

        def effect() -> Reply:
            self._searches += 1
            found = [
                i
                for i in self.issues.values()
                if match["label"] in i.fields.get("labels", [])
                and i.fields["project"]["key"] == match["project"]
                and (match["cat"] is None or STATUSES[i.status] != "done")
                and (self.edition != "cloud" or i.visible_after <= self._searches)
            ]
            found.sort(key=lambda i: int(i.id), reverse=True)
            issues = [self._issue_json(i, fields) for i in found[:limit]]
            if self.edition == "cloud":
                return json_reply(200, {"issues": issues, "isLast": True})
            return json_reply(
                200, {"startAt": 0, "maxResults": limit, "total": len(found), "issues": issues}
            )

        return effect

    def _new_issue(self, fields: dict[str, Any]) -> JiraIssue:
        self._next_id += 1
        project = fields["project"]["key"]
        number = sum(1 for i in self.issues.values() if i.key.startswith(f"{project}-")) + 1
        issue = JiraIssue(str(self._next_id), f"{project}-{number}", dict(fields))
        issue.visible_after = self._searches + self.search_lag + 1
        self.issues[issue.key] = issue
        return issue

    def _create(self, call: Call) -> Effect:
        body = call.payload
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            raise RejectedError(Problem("field", "fields: required"))
        problems: list[Problem] = []
        project = (fields.get("project") or {}).get("key")
        if project not in PROJECTS:
            problems.append(Problem("field", "project: valid project is required"))
        if (fields.get("issuetype") or {}).get("name") not in ISSUE_TYPES:
            problems.append(Problem("field", "issuetype: valid issue type is required"))
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            problems.append(Problem("field", "summary: You must specify a summary of the issue."))
        elif len(summary) > MAX_SUMMARY:
            problems.append(Problem("field", "summary: Summary must be less than 255 characters."))
        elif "\n" in summary or "\r" in summary:
            problems.append(
                Problem(
                    "field",
                    "summary: The summary is invalid because it contains newline characters.",
                )
            )
        labels = fields.get("labels", [])
        if not isinstance(labels, list) or any(
            not isinstance(x, str) or not x or " " in x or len(x) > MAX_LABEL for x in labels
        ):
            problems.append(Problem("field", "labels: The label must not contain spaces."))
        if "description" in fields:
            desc = fields["description"]
            if self.edition == "cloud":
                problems += [
                    Problem("field", f"description: {e}") for e in adf_problems(desc, "description")
                ]
            elif not isinstance(desc, str):
                problems.append(Problem("field", "description: Operation value must be a string"))
        unknown = sorted(
            set(fields)
            - {
                "project",
                "issuetype",
                "summary",
                "labels",
                "description",
                "priority",
                "components",
                "assignee",
            }
            - {k for k in fields if k.startswith("customfield_")}
        )
        problems += [
            Problem(
                "field",
                f"{k}: Field '{k}' cannot be set. It is not on the appropriate screen, or unknown.",
            )
            for k in unknown
        ]
        if problems:
            raise RejectedError(*problems)

        def effect() -> Reply:
            issue = self._new_issue(fields)
            return json_reply(
                201,
                {
                    "id": issue.id,
                    "key": issue.key,
                    "self": f"{self.url}{self.api}/issue/{issue.id}",
                },
            )

        return effect

    def _get(self, call: Call) -> Effect:
        issue = self._issue(call)
        wanted = call.query.get("fields")
        fields = wanted.split(",") if wanted else None

        def effect() -> Reply:
            return json_reply(200, self._issue_json(issue, fields))

        return effect

    def _comment(self, call: Call) -> Effect:
        issue = self._issue(call)
        body = call.payload.get("body") if isinstance(call.payload, dict) else None
        if self.edition == "cloud":
            errors = adf_problems(body, "body")
        else:
            errors = (
                []
                if isinstance(body, str) and body.strip()
                else ["body: Comment body can not be empty!"]
            )
        if errors:
            raise RejectedError(*[Problem("field", e) for e in errors])

        def effect() -> Reply:
            issue.comments.append(body)
            cid = str(20000 + sum(len(i.comments) for i in self.issues.values()))
            return json_reply(
                201,
                {
                    "id": cid,
                    "body": body,
                    "self": f"{self.url}{self.api}/issue/{issue.id}/comment/{cid}",
                },
            )

        return effect

    def _available(self, issue: JiraIssue) -> list[dict[str, Any]]:
        return [
            {"id": tid, "name": name, "to": {"name": to, "statusCategory": {"key": STATUSES[to]}}}
            for tid, name, to in TRANSITIONS
            if to != issue.status
        ]

    def _transitions(self, call: Call) -> Effect:
        issue = self._issue(call)

        def effect() -> Reply:
            return json_reply(200, {"expand": "transitions", "transitions": self._available(issue)})

        return effect

    def _transition(self, call: Call) -> Effect:
        issue = self._issue(call)
        body = call.payload if isinstance(call.payload, dict) else {}
        tid = str((body.get("transition") or {}).get("id", ""))
        chosen = next((t for t in self._available(issue) if t["id"] == tid), None)
        if chosen is None:
            raise RejectedError(
                Problem("transition", f"Transition id '{tid}' is not valid for this issue.")
            )

        def effect() -> Reply:
            issue.status = chosen["to"]["name"]
            issue.transitions.append(chosen["name"])
            return Reply(204, "")

        return effect
