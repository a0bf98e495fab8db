"""A stand-in for a Slack incoming webhook (reference §1.1).

Stricter than Slack in two deliberate ways: ``text`` is required even with
``blocks`` (Slack only warns, but phones show nothing else), and unknown
top-level fields are refused (Slack ignores them, which hides typos). Block
limits are Slack's documented ones; the ~13k total is the observed
``msg_blocks_too_long`` threshold, which no document states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from aiohttp import web

from pipeline.receivers.base import Problem, Received, Receiver, Reply

TOP_LEVEL_FIELDS = frozenset(
    {
        "text",
        "blocks",
        "attachments",
        "username",
        "icon_emoji",
        "icon_url",
        "channel",
        "mrkdwn",
        "unfurl_links",
        "unfurl_media",
        "thread_ts",
        "reply_broadcast",
        "parse",
        "link_names",
        "metadata",
    }
)
MAX_TEXT = 40_000
MAX_BLOCKS = 50
MAX_BLOCK_ID = 255
MAX_HEADER_TEXT = 150
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_ACTION_ELEMENTS = 25
MAX_BUTTON_TEXT = 75
MAX_BUTTON_URL = 3000
MAX_ACTION_ID = 255
MAX_ATTACHMENTS = 100
#: Observed, not documented: Slack refused ~13.2k characters across blocks.
MAX_BLOCKS_TEXT = 13_000
#: Block types we accept without looking inside; our sink never sends them.
UNCHECKED_BLOCKS = frozenset({"image", "rich_text", "markdown", "file", "video", "input"})

#: Documented bodies for error statuses (Slack changelog 2016-05-17).
ERROR_BODIES = {
    400: "invalid_payload",
    403: "action_prohibited",
    404: "channel_not_found",
    410: "channel_is_archived",
    500: "rollup_error",
}


def _text_object(
    obj: Any, where: str, limit: int | None, *, plain_only: bool = False
) -> list[Problem]:
    if not isinstance(obj, dict):
        return [Problem("invalid_blocks", f"{where}: expected a text object")]
    kind = obj.get("type")
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if kind not in allowed:
        return [Problem("invalid_blocks", f"{where}.type: {kind!r} not in {allowed}")]
    extra = set(obj) - {"type", "text", "emoji" if kind == "plain_text" else "verbatim"}
    problems = [Problem("invalid_blocks", f"{where}.{k}: unexpected") for k in sorted(extra)]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        problems.append(Problem("invalid_blocks", f"{where}.text: expected a non-empty string"))
    elif limit is not None and len(text) > limit:
        problems.append(
            Problem("invalid_blocks", f"{where}.text: {len(text)} characters, at most {limit}")
        )
    return problems


def _elements(block: dict[str, Any], where: str, limit: int) -> tuple[list[Any], list[Problem]]:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        return [], [Problem("invalid_blocks", f"{where}.elements: expected a non-empty array")]
    if len(elements) > limit:
        return elements, [
            Problem("invalid_blocks", f"{where}.elements: {len(elements)}, at most {limit}")
        ]
    return elements, []


def _button(el: dict[str, Any], where: str, action_ids: set[str]) -> list[Problem]:
    problems = _text_object(el.get("text"), f"{where}.text", MAX_BUTTON_TEXT, plain_only=True)
    url = el.get("url")
    if url is not None and (not isinstance(url, str) or not 0 < len(url) <= MAX_BUTTON_URL):
        problems.append(Problem("invalid_blocks", f"{where}.url: 1..{MAX_BUTTON_URL} characters"))
    action_id = el.get("action_id")
    if action_id is not None:
        if not isinstance(action_id, str) or not 0 < len(action_id) <= MAX_ACTION_ID:
            problems.append(Problem("invalid_blocks", f"{where}.action_id: 1..255 characters"))
        elif action_id in action_ids:
            problems.append(Problem("invalid_blocks", f"{where}.action_id: {action_id!r} repeated"))
        else:
            action_ids.add(action_id)
    return problems


def _block(block: Any, where: str, action_ids: set[str]) -> list[Problem]:
    if not isinstance(block, dict):
        return [Problem("invalid_blocks", f"{where}: expected an object")]
    kind = block.get("type")
    problems: list[Problem] = []
    if kind == "header":
        problems += _text_object(
            block.get("text"), f"{where}.text", MAX_HEADER_TEXT, plain_only=True
        )
    elif kind == "section":
        if "text" not in block and "fields" not in block:
            problems.append(Problem("invalid_blocks", f"{where}: needs text or fields"))
        if "text" in block:
            problems += _text_object(block["text"], f"{where}.text", MAX_SECTION_TEXT)
        if "fields" in block:
            fields = block["fields"]
            if not isinstance(fields, list) or not fields:
                problems.append(
                    Problem("invalid_blocks", f"{where}.fields: expected a non-empty array")
                )
            elif len(fields) > MAX_FIELDS:
                problems.append(
                    Problem(
                        "invalid_blocks", f"{where}.fields: {len(fields)}, at most {MAX_FIELDS}"
                    )
                )
            else:
                for i, f in enumerate(fields):
                    problems += _text_object(f, f"{where}.fields[{i}]", MAX_FIELD_TEXT)
    elif kind == "context":
        elements, problems = _elements(block, where, MAX_CONTEXT_ELEMENTS)
        for i, el in enumerate(elements[:MAX_CONTEXT_ELEMENTS]):
            if isinstance(el, dict) and el.get("type") == "image":
                continue
            problems += _text_object(el, f"{where}.elements[{i}]", None)
    elif kind == "actions":
        elements, problems = _elements(block, where, MAX_ACTION_ELEMENTS)
        for i, el in enumerate(elements[:MAX_ACTION_ELEMENTS]):
            if not isinstance(el, dict) or not isinstance(el.get("type"), str):
                problems.append(
                    Problem("invalid_blocks", f"{where}.elements[{i}]: expected an element")
                )
            elif el["type"] == "button":
                problems += _button(el, f"{where}.elements[{i}]", action_ids)
    elif kind != "divider" and kind not in UNCHECKED_BLOCKS:
        problems.append(Problem("invalid_blocks", f"{where}.type: unknown block type {kind!r}"))
    return problems


def _text_total(value: Any) -> int:
    """Characters of every ``text`` string inside the blocks."""
    if isinstance(value, dict):
        return sum(
            len(v) if k == "text" and isinstance(v, str) else _text_total(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return sum(_text_total(v) for v in value)
    return 0


def _blocks(blocks: Any) -> list[Problem]:
    if not isinstance(blocks, list):
        return [Problem("invalid_blocks", "blocks: expected an array")]
    if len(blocks) > MAX_BLOCKS:
        return [Problem("invalid_blocks", f"blocks: {len(blocks)} blocks, at most {MAX_BLOCKS}")]
    problems: list[Problem] = []
    action_ids: set[str] = set()
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        problems += _block(block, f"blocks[{i}]", action_ids)
        block_id = block.get("block_id") if isinstance(block, dict) else None
        if block_id is not None:
            if not isinstance(block_id, str) or not 0 < len(block_id) <= MAX_BLOCK_ID:
                problems.append(
                    Problem("invalid_blocks", f"blocks[{i}].block_id: 1..255 characters")
                )
            elif block_id in block_ids:
                problems.append(Problem("invalid_blocks", f"blocks[{i}].block_id: repeated"))
            block_ids.add(str(block_id))
    total = _text_total(blocks)
    if total > MAX_BLOCKS_TEXT:
        problems.append(
            Problem("msg_blocks_too_long", f"blocks: {total} characters of text in total")
        )
    return problems


def validate_slack(payload: Any) -> list[Problem]:
    """Every way ``payload`` breaks the incoming-webhook format; the first code is the answer."""
    if not isinstance(payload, dict):
        return [Problem("invalid_payload", "body: expected a JSON object")]
    problems: list[Problem] = []
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        problems.append(Problem("no_text", "text: missing or empty (the notification fallback)"))
    elif len(text) > MAX_TEXT:
        problems.append(
            Problem("invalid_payload", f"text: {len(text)} characters, Slack cuts at {MAX_TEXT}")
        )
    problems += [
        Problem("invalid_payload", f"{k}: not an incoming-webhook field")
        for k in sorted(set(payload) - TOP_LEVEL_FIELDS)
    ]
    if "blocks" in payload:
        problems += _blocks(payload["blocks"])
    if "attachments" in payload:
        attachments = payload["attachments"]
        if not isinstance(attachments, list):
            problems.append(Problem("invalid_payload", "attachments: expected an array"))
        elif len(attachments) > MAX_ATTACHMENTS:
            problems.append(Problem("too_many_attachments", f"attachments: {len(attachments)}"))
    return problems


class SlackReceiver(Receiver):
    """Answers ``200 ok`` as text/plain, or the error string Slack would send."""

    service: ClassVar[str] = "slack"
    default_path: ClassVar[str] = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"

    def validate(self, payload: Any, request: web.Request) -> list[Problem]:
        return validate_slack(payload)

    def success(self) -> Reply:
        return Reply(200, "ok")

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        code = problems[0].code
        if code.startswith("invalid_") and code not in ("invalid_payload", "invalid_blocks"):
            code = "invalid_payload"  # method / content type: Slack has no finer string
        return Reply(400, code)

    def error_body(self, status: int) -> str:
        return ERROR_BODIES.get(status, "")

    def wrong_path(self, path: str) -> Reply:
        return Reply(404, "no_service")

    def summarize(self, record: Received) -> str:
        if not record.valid or not isinstance(record.payload, dict):
            return super().summarize(record)
        return f"#{record.seq} -> {record.status}: {record.payload['text']}"
