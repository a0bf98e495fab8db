"""Slack Web API with a bot token: one message per incident, kept current.

The first notice is ``chat.postMessage``; Slack answers with the channel ID
and the message ``ts``, which become this sink's refs. Later notices edit that
message with ``chat.update`` (so the channel shows the incident's state, not
a trail of posts) and add a reply in its thread with ``thread_ts`` (so the
history is there and people are notified); the resolve reply is also shown
in the channel (``reply_broadcast``). Reference §1.2.

The Web API's errors are HTTP 200 with ``{"ok": false, "error": "..."}``;
only a few error strings are worth retrying. A rate limit is HTTP 429 with
``Retry-After`` (or, rarely, ``ok:false`` ``ratelimited``).

Posts are made at most once per notification id, even across a crash.
Each post carries message metadata (``event_type`` ``meshwatch_incident``,
with the notification id in ``event_payload``). Before a post whose outcome
is unknown — an earlier attempt timed out or failed with 5xx, or the notice
was restored from the outbox after a restart (the crash may have come after
Slack's answer) — the sink looks for a message carrying that id:
``conversations.history`` for the incident's message, ``conversations.replies``
for a thread reply, both with ``include_all_metadata``. Found means done.
This needs the ``channels:history`` (``groups:history`` for a private
channel) scope and a channel *ID* in the config; without them the lookup is
skipped with a warning and the notice may repeat once, as with a webhook.
Edits (``chat.update``) are idempotent by nature.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from pipeline.alert.message import Notification, since_line, summary_line, title
from pipeline.alert.sinks import chart
from pipeline.alert.sinks.base import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SinkResponse,
    parse_retry_after,
)
from pipeline.alert.sinks.common import Memo, bearer_auth, call, json_of, permanent, retryable
from pipeline.alert.sinks.redact import redact_text
from pipeline.alert.sinks.slack import MAX_TEXT, TEXT_BUDGET, build_payload, clip_mrkdwn, emoji
from pipeline.config import SlackBotSink, read_secret

log = logging.getLogger(__name__)

#: ``ok:false`` errors that a later attempt may not meet (Slack's own list of
#: transient errors for every method, plus the rate limit).
RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
#: ``chat.update`` errors after which the old message is gone: post a new one.
MESSAGE_GONE = frozenset({"message_not_found", "channel_not_found"})
#: ``chat.update`` errors after which the message stays as it is: reply only.
NOT_EDITABLE = frozenset({"cant_update_message", "edit_window_closed"})
JSON_UTF8 = "application/json; charset=utf-8"
METADATA_EVENT = "meshwatch_incident"
#: How far back the lookup reads the channel: the newest messages, in pages.
LOOKUP_PAGE = 200
LOOKUP_PAGES = 3
#: Lookup errors that mean "cannot look" (scope, channel name) rather than "try later".
CANNOT_LOOK = frozenset(
    {"missing_scope", "channel_not_found", "not_in_channel", "not_allowed_token_type"}
)


class SlackApiError(PermanentDeliveryError):
    """An ``ok:false`` answer; ``code`` is Slack's error string."""

    def __init__(self, code: str, detail: str, body: str) -> None:
        super().__init__(200, detail, body)
        self.code = code


def reply_text(n: Notification) -> str:
    """The thread reply: what changed, in two or three lines of mrkdwn."""
    lines = [f"*{title(n)}*", summary_line(n.finding), since_line(n)]
    if n.action == "update":
        lines.insert(1, f"severity {n.incident.severity}, {n.incident.count} anomalous windows")
    return clip_mrkdwn("\n".join(lines), TEXT_BUDGET)


def metadata(n: Notification) -> dict[str, Any]:
    """Slack message metadata naming the notice, so a later lookup can recognise it."""
    return {
        "event_type": METADATA_EVENT,
        "event_payload": {
            "fingerprint": n.fingerprint,
            "notification_id": n.notification_id,
            "action": n.action,
        },
    }


def _carries(message: Any, notification_id: str) -> bool:
    if not isinstance(message, dict) or "ts" not in message:
        return False
    meta = message.get("metadata")
    if not isinstance(meta, dict) or meta.get("event_type") != METADATA_EVENT:
        return False
    payload = meta.get("event_payload")
    return isinstance(payload, dict) and payload.get("notification_id") == notification_id


def parent_payload(n: Notification) -> dict[str, Any]:
    """The incident's message. An update keeps the firing look with current numbers."""
    shown = dataclasses.replace(n, action="firing") if n.action == "update" else n
    return build_payload(shown)


class SlackBotApiSink:
    """Posts, edits and threads through ``chat.postMessage`` / ``chat.update``."""

    def __init__(
        self,
        name: str,
        token: str,
        channel: str,
        *,
        api_url: str = "https://slack.com/api",
        thread_replies: bool = True,
        broadcast_resolve: bool = True,
        attach_chart: bool = False,
    ) -> None:
        self.name = name
        self.channel = channel
        self.api_url = api_url.rstrip("/")
        self.thread_replies = thread_replies
        self.broadcast_resolve = broadcast_resolve
        self.attach_chart = attach_chart
        self._auth = bearer_auth(token)
        self._target = f"slack-bot {name!r}"
        self._done: Memo[tuple[str, str], dict[str, str]] = Memo()
        #: Steps tried whose outcome is unknown (a timeout or 5xx): look before redoing.
        self._unsure: set[tuple[str, str]] = set()

    @classmethod
    def from_config(cls, cfg: SlackBotSink) -> SlackBotApiSink:
        token = read_secret(cfg.token, cfg.token_file, cfg.token_env)
        if not token:
            raise ValueError(f"slack_bot sink {cfg.name!r}: the token is empty")
        return cls(
            cfg.name,
            token,
            cfg.channel,
            api_url=cfg.api_url,
            thread_replies=cfg.thread_replies,
            broadcast_resolve=cfg.broadcast_resolve,
            attach_chart=cfg.attach_chart,
        )

    def __repr__(self) -> str:
        return f"SlackBotApiSink(name={self.name!r}, channel={self.channel!r})"

    # -- the Web API -----------------------------------------------------------------

    async def api(
        self,
        client: httpx.AsyncClient,
        method: str,
        body: Mapping[str, Any],
        *,
        form: bool = False,
    ) -> dict[str, Any]:
        """Call one Web API method; returns the ``ok:true`` answer or raises."""
        target = f"{self._target} {method}"
        headers = {"Authorization": self._auth}
        if form:
            response = await call(
                client,
                "POST",
                f"{self.api_url}/{method}",
                target=target,
                data={k: str(v) for k, v in body.items()},
                headers=headers,
            )
        else:
            response = await call(
                client,
                "POST",
                f"{self.api_url}/{method}",
                target=target,
                content=json.dumps(body, ensure_ascii=False).encode(),
                headers={**headers, "Content-Type": JSON_UTF8},
            )
        if response.status_code == 429 or response.status_code >= 500:
            raise retryable(response, target)
        if response.status_code != 200:
            raise permanent(response, target)
        data = json_of(response, target)
        if not isinstance(data, dict):
            raise permanent(response, target, "an answer that is not an object")
        if data.get("ok") is True:
            return data
        code = str(data.get("error") or "unknown_error")
        detail = f"{target}: {code}"
        if code in RETRYABLE_ERRORS:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            raise RetryableDeliveryError(wait, response.status_code, detail)
        raise SlackApiError(code, detail, response.text)

    # -- send --------------------------------------------------------------------------

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        refs = dict(n.incident.sink_refs.get(self.name, {}))
        nid = n.notification_id
        channel, ts = refs.get("channel"), refs.get("ts")
        notes: list[str] = []
        if channel and ts:
            edited = await self._edit(client, n, channel, ts)
            if edited == "gone":
                channel = ts = None
                notes.append("old message gone; posted anew")
            elif edited == "kept":
                notes.append("message no longer editable; replied only")
        if not (channel and ts):
            posted = await self._step(
                n,
                "post",
                lambda: self._post_parent(client, n),
                lambda: self._find_parent(client, n),
            )
            channel, ts = posted["channel"], posted["ts"]
            refs.update(channel=channel, ts=ts)
        elif self.thread_replies:
            parent_channel, parent_ts = channel, ts
            reply = await self._step(
                n,
                "reply",
                lambda: self._reply(client, n, parent_channel, parent_ts),
                lambda: self._find_reply(client, n, parent_channel, parent_ts),
            )
            refs["last_reply_ts"] = reply["ts"]
        if self.attach_chart and n.action in ("firing", "resolved"):
            notes.append(await self._chart(client, n, channel, ts))
        self._forget(nid)
        detail = "; ".join(x for x in ["ok", *notes] if x)
        return SinkResponse(refs=refs, status=200, detail=detail)

    async def _step(
        self,
        n: Notification,
        step: str,
        run: Callable[[], Awaitable[dict[str, str]]],
        find: Callable[[], Awaitable[dict[str, str] | None]],
    ) -> dict[str, str]:
        """Run one step unless it is already done: by this process, or (looked up) before.

        The lookup happens only when the step may have happened without our
        knowing: after an attempt with no clear answer, or for a notice
        restored from the outbox. Every other post goes out directly.
        """
        key = (n.notification_id, step)
        done = self._done.get(key)
        if done is not None:
            return done
        if n.resumed or key in self._unsure:
            found = await find()
            if found is not None:
                self._done.put(key, found)
                self._unsure.discard(key)
                return found
        self._unsure.add(key)
        try:
            result: dict[str, str] = await run()
        except RetryableDeliveryError:
            raise  # no clear answer: it may have been posted
        except DeliveryError:
            self._unsure.discard(key)  # refused: nothing was posted
            raise
        self._unsure.discard(key)
        self._done.put(key, result)
        return result

    def _forget(self, nid: str) -> None:
        for step in ("post", "reply", "edit"):
            self._done.pop((nid, step))
            self._unsure.discard((nid, step))

    async def _post_parent(self, client: httpx.AsyncClient, n: Notification) -> dict[str, str]:
        body = {
            "channel": self.channel,
            **parent_payload(n),
            "unfurl_links": False,
            "metadata": metadata(n),
        }
        data = await self.api(client, "chat.postMessage", body)
        return {"channel": str(data["channel"]), "ts": str(data["ts"])}

    async def _edit(self, client: httpx.AsyncClient, n: Notification, channel: str, ts: str) -> str:
        if self._done.get((n.notification_id, "edit")) is not None:
            return "edited"
        body = {"channel": channel, "ts": ts, **parent_payload(n)}
        try:
            await self.api(client, "chat.update", body)
        except SlackApiError as exc:
            if exc.code in MESSAGE_GONE:
                return "gone"
            if exc.code in NOT_EDITABLE:
                return "kept"
            raise
        self._done.put((n.notification_id, "edit"), {})
        return "edited"

    async def _reply(
        self, client: httpx.AsyncClient, n: Notification, channel: str, ts: str
    ) -> dict[str, str]:
        text = reply_text(n)
        body: dict[str, Any] = {
            "channel": channel,
            "thread_ts": ts,
            "text": f"{emoji(n)} {text}"[:MAX_TEXT],
            "unfurl_links": False,
        }
        if n.resolved and self.broadcast_resolve:
            body["reply_broadcast"] = True
        body["metadata"] = metadata(n)
        data = await self.api(client, "chat.postMessage", body)
        return {"ts": str(data["ts"])}

    # -- looking before posting again ------------------------------------------------------

    async def _find_parent(
        self, client: httpx.AsyncClient, n: Notification
    ) -> dict[str, str] | None:
        """The incident's message for this notice, if an earlier attempt posted it."""
        cursor = ""
        for _ in range(LOOKUP_PAGES):
            body = {"channel": self.channel, "limit": LOOKUP_PAGE, "include_all_metadata": "true"}
            if cursor:
                body["cursor"] = cursor
            data = await self._look(client, "conversations.history", body)
            if data is None:
                return None
            for message in data.get("messages") or []:
                if _carries(message, n.notification_id):
                    return {
                        "channel": str(data.get("channel") or self.channel),
                        "ts": str(message["ts"]),
                    }
            cursor = str((data.get("response_metadata") or {}).get("next_cursor") or "")
            if not (data.get("has_more") and cursor):
                return None
        return None

    async def _find_reply(
        self, client: httpx.AsyncClient, n: Notification, channel: str, ts: str
    ) -> dict[str, str] | None:
        """This notice's reply in the incident's thread, if an earlier attempt posted it.

        The parent itself counts too: a restored firing whose refs were saved
        before the crash was the parent post, and must not become a reply.
        """
        body = {"channel": channel, "ts": ts, "limit": 1000, "include_all_metadata": "true"}
        # (a thread of one incident holds a few replies; 1,000 is Slack's page size)
        data = await self._look(client, "conversations.replies", body)
        for message in (data or {}).get("messages") or []:
            if _carries(message, n.notification_id):
                return {"ts": str(message["ts"])}
        return None

    async def _look(
        self, client: httpx.AsyncClient, method: str, body: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        try:
            return await self.api(client, method, body, form=True)
        except SlackApiError as exc:
            if exc.code not in CANNOT_LOOK:
                raise
            log.warning(
                "%s: cannot look for an earlier post (%s); posting, which may repeat it once",
                self._target,
                exc.code,
            )
            return None

    async def _chart(
        self, client: httpx.AsyncClient, n: Notification, channel: str, ts: str
    ) -> str:
        """Upload the chart into the thread; best effort, the alert is already out."""
        png = await asyncio.to_thread(chart.render_png, n)
        if png is None:
            return "no evidence to chart"
        try:
            ticket = await self.api(
                client,
                "files.getUploadURLExternal",
                {"filename": chart.FILENAME, "length": len(png), "alt_txt": title(n)[:1000]},
                form=True,
            )
            upload_url, file_id = str(ticket["upload_url"]), str(ticket["file_id"])
            response = await call(
                client,
                "POST",
                upload_url,
                target=f"{self._target} file upload",
                files={"file": (chart.FILENAME, png, "image/png")},
            )
            if response.status_code != 200:
                raise permanent(response, f"{self._target} file upload")
            await self.api(
                client,
                "files.completeUploadExternal",
                {
                    "files": [{"id": file_id, "title": title(n)[:200]}],
                    "channel_id": channel,
                    "thread_ts": ts,
                },
            )
        except DeliveryError as exc:
            log.warning("%s: chart not attached: %s", self._target, exc.detail)
            return f"chart not attached: {redact_text(exc.detail)}"
        return "chart attached"
