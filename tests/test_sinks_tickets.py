"""Jira (Cloud and Data Center), GitHub Issues and ServiceNow: find-or-create and friends."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest

from pipeline.alert.sinks import GitHubIssueSink, JiraIssueSink, ServiceNowIncidentSink
from pipeline.alert.sinks.common import basic_auth, bearer_auth
from pipeline.config import RetryConfig, ServiceNowSink
from pipeline.receivers.github import GitHubReceiver
from pipeline.receivers.jira import JiraReceiver
from pipeline.receivers.servicenow import ServiceNowReceiver
from tests.sink_targets import LABEL, RecordingSleep, once, send_all, serve, with_refs
from tests.test_sinks_factories import make_notification

# -- Jira ----------------------------------------------------------------------------------------


def jira(rx: JiraReceiver, **kw: Any) -> JiraIssueSink:
    cloud = rx.edition == "cloud"
    auth = basic_auth(rx.email, rx.api_token) if cloud else bearer_auth(rx.pat)
    return JiraIssueSink(
        "jira", rx.url, edition=rx.edition, authorization=auth, project="OPS", **kw
    )


def test_jira_cloud_creates_with_adf_and_the_fingerprint_label() -> None:
    async def body(rx: JiraReceiver, client: httpx.AsyncClient) -> None:
        outcome = await once(jira(rx), make_notification(links={"grafana": "https://g/x"}), client)
        assert outcome.refs == {"issue_key": "OPS-1", "issue_url": f"{rx.url}/browse/OPS-1"}
        search, create = rx.requests()
        assert search.path == "/rest/api/3/search/jql"
        assert search.payload["jql"] == (
            f'project = "OPS" AND labels = "{LABEL}" AND statusCategory != Done '
            "ORDER BY created DESC"
        )
        fields = create.payload["fields"]
        assert fields["labels"] == ["meshwatch", LABEL]
        assert fields["summary"] == "[meshwatch] latency — shop/deploy/web inbound GET /api/users"
        assert fields["description"]["type"] == "doc"
        link = fields["description"]["content"][-1]["content"][0]
        assert link["marks"] == [{"type": "link", "attrs": {"href": "https://g/x"}}]
        expected = base64.b64encode(f"{rx.email}:{rx.api_token}".encode()).decode()
        assert create.header("Authorization") == f"Basic {expected}"

    serve(JiraReceiver(edition="cloud"), body)


def test_jira_data_center_uses_v2_search_wiki_text_and_a_bearer_pat() -> None:
    async def body(rx: JiraReceiver, client: httpx.AsyncClient) -> None:
        outcomes, _ = await send_all(jira(rx), client)
        assert all(o.delivered for o in outcomes), [o.error for o in outcomes]
        paths = [r.path for r in rx.requests()]
        assert paths[0] == "/rest/api/2/search"
        assert all(p.startswith("/rest/api/2/") for p in paths)
        (issue,) = rx.issues_with(LABEL)
        assert isinstance(issue.fields["description"], str)
        assert issue.fields["description"].startswith("*latency — shop/deploy/web")
        assert all(isinstance(c, str) for c in issue.comments)
        assert rx.requests()[0].header("Authorization") == f"Bearer {rx.pat}"

    serve(JiraReceiver(edition="dc"), body)


def test_jira_cloud_old_search_is_gone() -> None:
    async def body(rx: JiraReceiver, client: httpx.AsyncClient) -> None:
        auth = {"Authorization": basic_auth(rx.email, rx.api_token)}
        r = await client.post(f"{rx.url}/rest/api/3/search", json={"jql": "x"}, headers=auth)
        assert r.status_code == 410
        assert "CHANGE-2046" in r.text

    serve(JiraReceiver(edition="cloud"), body)


def test_jira_an_open_issue_for_the_fingerprint_gets_a_comment_not_a_twin() -> None:
    async def body(rx: JiraReceiver, client: httpx.AsyncClient) -> None:
        existing = rx.add_issue(["meshwatch", LABEL], status="In Progress")
        outcome = await once(jira(rx), make_notification(), client)
        assert outcome.refs["issue_key"] == existing.key
        assert len(rx.issues) == 1
        (comment,) = existing.comments
        assert comment["content"][0]["content"][0]["text"] == "Fired again"

    serve(JiraReceiver(), body)


def test_jira_a_done_issue_is_not_reused() -> None:
    async def body(rx: JiraReceiver, client: httpx.AsyncClient) -> None:
        rx.add_issue(["meshwatch", LABEL], status="Done")
        outcome = await once(jira(rx), make_notification(), client)
        assert outcome.refs["issue_key"] == "OPS-2"
        assert len(rx.issues_with(LABEL)) == 2

    serve(JiraReceiver(), body)


@pytest.mark.parametrize("transition", ["31", "done", "DONE"])
def test_jira_resolve_transition_by_id_or_name(transition: str) -> None:
    async def body(rx: JiraReceiver, client: httpx.AsyncClient) -> None:
        outcomes, _ = await send_all(jira(rx, resolve_transition=transition), client)
        assert outcomes[2].delivered, outcomes[2].error
        (issue,) = rx.issues_with(LABEL)
        assert issue.transitions == ["Done"]

    serve(JiraReceiver(), body)


def test_jira_unknown_transition_is_permanent_and_lists_the_choices() -> None:
    async def body(rx: JiraReceiver, client: httpx.AsyncClient) -> None:
        outcomes, _ = await send_all(jira(rx, resolve_transition="Closed"), client)
        resolved = outcomes[2]
        assert not resolved.delivered
        assert resolved.permanent
        assert resolved.error is not None
        assert "no transition 'Closed'" in resolved.error
        assert "Done (31)" in resolved.error

    serve(JiraReceiver(), body)


def test_jira_an_issue_closed_by_hand_is_not_transitioned_again() -> None:
    async def body(rx: JiraReceiver, client: httpx.AsyncClient) -> None:
        sink = jira(rx)
        _, refs = await send_all(sink, client, ["firing"])
        rx.issues[refs["issue_key"]].status = "Done"
        outcome = await once(sink, with_refs(make_notification("resolved"), "jira", refs), client)
        assert outcome.delivered
        assert rx.calls("transition") == ()

    serve(JiraReceiver(), body)


def test_jira_eventual_consistency_does_not_create_a_twin_on_retry() -> None:
    """Cloud's search lags; the sink remembers what it created instead of searching."""

    async def body(rx: JiraReceiver, client: httpx.AsyncClient) -> None:
        sink = jira(rx)
        await send_all(sink, client, ["firing"])
        # The refs of the firing were lost (say, the alerter could not store them)
        # and the search does not see the new issue yet: the sink remembers it.
        update = await once(sink, make_notification("update"), client)
        assert update.refs["issue_key"] == "OPS-1"
        rx.fail_on("transition", 503)  # the resolve fails after its comment, then succeeds
        resolved = await once(sink, make_notification("resolved"), client)
        assert resolved.delivered
        assert resolved.attempts == 2
        (issue,) = rx.issues_with(LABEL)
        assert len(issue.comments) == 2  # update and resolve, once each despite the retry
        assert issue.status == "Done"
        assert len(rx.calls("create")) == 1

    serve(JiraReceiver(search_lag=10), body)


def test_jira_a_deleted_issue_is_recreated_on_update() -> None:
    async def body(rx: JiraReceiver, client: httpx.AsyncClient) -> None:
        sink = jira(rx)
        _, refs = await send_all(sink, client, ["firing"])
        del rx.issues[refs["issue_key"]]
        outcome = await once(jira(rx), with_refs(make_notification("update"), "jira", refs), client)
        assert outcome.delivered
        assert outcome.refs["issue_key"] == "OPS-1"  # numbered anew in the emptied project
        assert len(rx.issues) == 1

    serve(JiraReceiver(), body)


# -- GitHub ------------------------------------------------------------------------------------


def gh(rx: GitHubReceiver, now: float | None = None) -> GitHubIssueSink:
    clock = (lambda: now) if now is not None else time.time
    return GitHubIssueSink("gh", rx.repository, rx.token, api_url=rx.url, now=clock)


def test_github_headers_labels_and_pull_requests_skipped() -> None:
    async def body(rx: GitHubReceiver, client: httpx.AsyncClient) -> None:
        rx.add_issue("a PR that carries the label", [LABEL], pull_request=True)
        outcome = await once(gh(rx), make_notification(), client)
        assert outcome.delivered
        listed, created = rx.requests()
        assert listed.query == {"state": "open", "labels": LABEL, "per_page": "10"}
        assert created.header("Accept") == "application/vnd.github+json"
        assert created.header("X-GitHub-Api-Version") == "2022-11-28"
        assert created.header("Authorization") == f"Bearer {rx.token}"
        assert created.payload["labels"] == ["meshwatch", LABEL]
        assert "| Fingerprint | `" in created.payload["body"]
        (issue,) = rx.with_label(LABEL)
        assert outcome.refs == {"issue_number": str(issue.number)}
        assert LABEL in rx.labels

    serve(GitHubReceiver(), body)


def test_github_an_open_issue_gets_a_comment() -> None:
    async def body(rx: GitHubReceiver, client: httpx.AsyncClient) -> None:
        existing = rx.add_issue("older", ["meshwatch", LABEL])
        outcome = await once(gh(rx), make_notification(), client)
        assert outcome.refs == {"issue_number": str(existing.number)}
        assert existing.comments[0].startswith("🔴 **Fired again**")
        assert len(rx.issues) == 1

    serve(GitHubReceiver(), body)


def test_github_rate_limits_wait_as_github_says() -> None:
    now = time.time()

    retry = RetryConfig(max_attempts=5, max_backoff_seconds=600)

    async def run(rx: GitHubReceiver, client: httpx.AsyncClient) -> None:
        sink = gh(rx, now=now)
        rx.primary_rate_limit(reset_in=120)
        rx.secondary_rate_limit(retry_after=45)
        rx.secondary_rate_limit(retry_after=None)
        sleep = RecordingSleep()
        outcome = await once(sink, make_notification(), client, sleep=sleep, retry=retry)
        assert outcome.delivered, outcome.error
        assert outcome.attempts == 4
        primary, secondary, bare = sleep.calls
        assert 115 <= primary <= 121
        assert (secondary, bare) == (45.0, 60.0)

    serve(GitHubReceiver(), run)


def test_github_a_plain_403_is_permanent() -> None:
    async def body(rx: GitHubReceiver, client: httpx.AsyncClient) -> None:
        rx.refuse(status=403)
        outcome = await once(gh(rx), make_notification(), client)
        assert (outcome.permanent, outcome.attempts, outcome.last_status) == (True, 1, 403)

    serve(GitHubReceiver(), body)


# -- ServiceNow -------------------------------------------------------------------------------------


def snow(rx: ServiceNowReceiver, *, token: bool = False, **cfg: Any) -> ServiceNowIncidentSink:
    entry = ServiceNowSink(name="snow", instance_url=rx.url, token_env="UNUSED", **cfg)
    auth = bearer_auth(rx.token) if token else basic_auth(rx.username, rx.password)
    return ServiceNowIncidentSink("snow", entry, auth)


def test_servicenow_creates_with_correlation_and_severity_mapping() -> None:
    async def body(rx: ServiceNowReceiver, client: httpx.AsyncClient) -> None:
        n = make_notification(severity="warning")
        outcome = await once(snow(rx, token=True, assignment_group="Platform"), n, client)
        lookup, create = rx.requests()
        assert lookup.query["sysparm_query"].startswith(
            f"correlation_id={n.fingerprint}^active=true"
        )
        fields = create.payload
        assert fields["correlation_id"] == n.fingerprint
        assert fields["correlation_display"] == "meshwatch"
        assert (fields["urgency"], fields["impact"]) == ("2", "2")
        assert fields["assignment_group"] == "Platform"
        assert len(fields["short_description"]) <= 160
        (record,) = rx.records.values()
        assert outcome.refs == {"sys_id": record.sys_id, "number": "INC0010001"}
        assert create.header("Authorization") == f"Bearer {rx.token}"

    serve(ServiceNowReceiver(), body)


def test_servicenow_an_active_incident_gets_a_work_note() -> None:
    async def body(rx: ServiceNowReceiver, client: httpx.AsyncClient) -> None:
        sink = snow(rx)
        await send_all(sink, client, ["firing"])
        other = snow(rx)  # a restarted alerter: no memory, no refs
        outcome = await once(other, make_notification(), client)
        (record,) = rx.records.values()
        assert outcome.refs["sys_id"] == record.sys_id
        assert record.work_notes[-1].startswith("[meshwatch] Fired again")

    serve(ServiceNowReceiver(), body)


def test_servicenow_resolve_needs_a_close_code() -> None:
    async def body(rx: ServiceNowReceiver, client: httpx.AsyncClient) -> None:
        outcomes, _ = await send_all(snow(rx, close_code=""), client, ["firing", "resolved"])
        resolved = outcomes[1]
        assert (resolved.permanent, resolved.last_status) == (True, 403)
        assert resolved.error is not None
        assert "Data Policy Exception" in resolved.error
        (record,) = rx.records.values()
        assert record.active

    serve(ServiceNowReceiver(), body)


def test_servicenow_a_deleted_record_is_recreated() -> None:
    async def body(rx: ServiceNowReceiver, client: httpx.AsyncClient) -> None:
        sink = snow(rx)
        _, refs = await send_all(sink, client, ["firing"])
        rx.delete(refs["sys_id"])
        outcome = await once(sink, with_refs(make_notification("update"), "snow", refs), client)
        assert outcome.delivered
        assert outcome.refs["sys_id"] != refs["sys_id"]
        assert len(rx.records) == 1

    serve(ServiceNowReceiver(), body)
