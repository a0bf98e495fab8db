"""A stand-in for a Teams Workflows webhook ("When a Teams webhook request is received").

Checks what the flow and Teams need (reference §1.3): the ``sig`` query
parameter (the flow's shared-access signature), ``type: "message"``, the
``attachments`` array the flow loops over, each an Adaptive Card (not a
MessageCard) of a version Teams renders, named colours only, and the ~28 KB
message limit. Answers 202 with an empty body, as the flow trigger does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from aiohttp import web

from pipeline.receivers.base import Problem, Received, Receiver, Reply

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
DEFAULT_SIG = "TESTSIGNATURE0123456789abcdefABCDEF"
MAX_MESSAGE_BYTES = 28 * 1024
MAX_VERSION = (1, 5)
ELEMENT_TYPES = frozenset(
    {
        "TextBlock",
        "Container",
        "FactSet",
        "ColumnSet",
        "Column",
        "Image",
        "ActionSet",
        "RichTextBlock",
        "Table",
    }
)
ACTION_TYPES = frozenset({"Action.OpenUrl", "Action.ShowCard", "Action.ToggleVisibility"})
CONTAINER_STYLES = frozenset({"default", "emphasis", "good", "attention", "warning", "accent"})
TEXT_COLOURS = frozenset({"Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention"})
_VERSION = re.compile(r"^(\d+)\.(\d+)$")


def _elements(items: Any, where: str) -> list[Problem]:
    if not isinstance(items, list):
        return [Problem("invalid_card", f"{where}: expected an array")]
    problems: list[Problem] = []
    for i, el in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(el, dict):
            problems.append(Problem("invalid_card", f"{at}: expected an object"))
            continue
        kind = el.get("type")
        if kind not in ELEMENT_TYPES:
            problems.append(Problem("invalid_card", f"{at}.type: {kind!r} is not an element"))
            continue
        if kind == "TextBlock":
            if not isinstance(el.get("text"), str) or not el["text"]:
                problems.append(Problem("invalid_card", f"{at}.text: expected a non-empty string"))
            colour = el.get("color")
            if colour is not None and colour not in TEXT_COLOURS:
                problems.append(Problem("invalid_card", f"{at}.color: {colour!r} is not named"))
        elif kind == "Container":
            style = el.get("style")
            if style is not None and style not in CONTAINER_STYLES:
                problems.append(Problem("invalid_card", f"{at}.style: {style!r} is not a style"))
            problems += _elements(el.get("items"), f"{at}.items")
        elif kind == "FactSet":
            facts = el.get("facts")
            if not isinstance(facts, list) or not facts:
                problems.append(Problem("invalid_card", f"{at}.facts: expected a non-empty array"))
            else:
                for j, fact in enumerate(facts):
                    if not (
                        isinstance(fact, dict)
                        and isinstance(fact.get("title"), str)
                        and isinstance(fact.get("value"), str)
                    ):
                        problems.append(
                            Problem("invalid_card", f"{at}.facts[{j}]: title and value strings")
                        )
    return problems


def _actions(actions: Any, where: str) -> list[Problem]:
    if not isinstance(actions, list):
        return [Problem("invalid_card", f"{where}: expected an array")]
    problems = []
    for i, action in enumerate(actions):
        at = f"{where}[{i}]"
        if not isinstance(action, dict) or action.get("type") not in ACTION_TYPES:
            problems.append(Problem("invalid_card", f"{at}: not a known action"))
            continue
        if action["type"] == "Action.OpenUrl":
            url = action.get("url")
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                problems.append(Problem("invalid_card", f"{at}.url: expected an http(s) URL"))
    return problems


def validate_card(card: Any, where: str) -> list[Problem]:
    if not isinstance(card, dict):
        return [Problem("invalid_card", f"{where}: expected an object")]
    if card.get("type") != "AdaptiveCard":
        return [Problem("invalid_card", f"{where}.type: {card.get('type')!r}, not AdaptiveCard")]
    problems = []
    version = card.get("version")
    match = _VERSION.match(version) if isinstance(version, str) else None
    if match is None:
        problems.append(
            Problem("invalid_card", f"{where}.version: {version!r} is not 'major.minor'")
        )
    elif (int(match[1]), int(match[2])) > MAX_VERSION:
        problems.append(
            Problem("invalid_card", f"{where}.version: {version} is newer than Teams renders")
        )
    problems += _elements(card.get("body"), f"{where}.body")
    if "actions" in card:
        problems += _actions(card["actions"], f"{where}.actions")
    return problems


def validate_teams(payload: Any) -> list[Problem]:
    """Every way ``payload`` breaks the Workflows envelope or the card inside it."""
    if not isinstance(payload, dict):
        return [Problem("invalid_payload", "body: expected a JSON object")]
    problems = []
    if payload.get("type") != "message":
        problems.append(
            Problem("invalid_payload", f"type: {payload.get('type')!r}, expected 'message'")
        )
    attachments = payload.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        # What the flow run reports when the wrapper is missing.
        problems.append(
            Problem("invalid_payload", "attachments: the foreach expression is of type 'Null'")
        )
        return problems
    for i, att in enumerate(attachments):
        where = f"attachments[{i}]"
        if not isinstance(att, dict):
            problems.append(Problem("invalid_payload", f"{where}: expected an object"))
            continue
        if att.get("contentType") != CARD_CONTENT_TYPE:
            problems.append(
                Problem("invalid_payload", f"{where}.contentType: {att.get('contentType')!r}")
            )
        problems += validate_card(att.get("content"), f"{where}.content")
    size = len(json.dumps(payload, ensure_ascii=False).encode())
    if size > MAX_MESSAGE_BYTES:
        problems.append(
            Problem("too_large", f"message: {size} bytes, Teams allows {MAX_MESSAGE_BYTES}", 413)
        )
    return problems


class TeamsReceiver(Receiver):
    """Answers 202 to a valid card; 401 without the right ``sig``; 400/413 otherwise."""

    service: ClassVar[str] = "teams"
    default_path: ClassVar[str] = (
        "/powerautomate/automations/direct/workflows/0123456789abcdef0123456789abcdef"
        "/triggers/manual/paths/invoke"
    )

    def __init__(self, *, sig: str = DEFAULT_SIG, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sig = sig

    @property
    def url(self) -> str:
        return f"{super().url}?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={self.sig}"

    def validate(self, payload: Any, request: web.Request) -> list[Problem]:
        if request.query.get("sig") != self.sig:
            return [Problem("unauthorized", "sig query parameter missing or wrong", 401)]
        return validate_teams(payload)

    def success(self) -> Reply:
        return Reply(202, "")

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        first = problems[0]
        status = first.status or {"invalid_method": 405, "invalid_content_type": 415}.get(
            first.code, 400
        )
        code = {401: "DirectApiAuthorizationRequired", 413: "RequestEntityTooLarge"}.get(
            status, "InvalidRequestContent"
        )
        body = {"error": {"code": code, "message": "; ".join(p.detail for p in problems)}}
        return Reply(status, json.dumps(body), content_type="application/json")

    def error_body(self, status: int) -> str:
        return json.dumps(
            {
                "error": {
                    "code": "TooManyRequests" if status == 429 else "Error",
                    "message": f"HTTP {status}",
                }
            }
        )

    def summarize(self, record: Received) -> str:
        try:
            card = record.payload["attachments"][0]["content"]
            text = card["body"][0]["items"][0]["text"]
        except (KeyError, IndexError, TypeError):
            return super().summarize(record)
        return f"#{record.seq} -> {record.status}: {text}"
