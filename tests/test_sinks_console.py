"""The console sink prints a readable block to the Console it is given."""

from __future__ import annotations

import asyncio
import io

import httpx
from rich.console import Console

from pipeline.alert.message import Notification
from pipeline.alert.sinks import RichConsoleSink, SinkResponse, build_sink
from pipeline.config import ConsoleSink
from tests.test_sinks_factories import make_notification


def printed(n: Notification, *, color: bool = False) -> tuple[str, SinkResponse]:
    out = io.StringIO()
    console = Console(
        file=out, width=200, force_terminal=color, color_system="standard" if color else None
    )
    sink = build_sink(ConsoleSink(name="term"), console=console)
    assert isinstance(sink, RichConsoleSink)
    assert sink.name == "term"

    async def main() -> SinkResponse:
        async with httpx.AsyncClient() as client:
            return await sink.send(n, client)

    response = asyncio.run(main())
    return out.getvalue(), response


def test_block_has_title_numbers_time_pod_and_links() -> None:
    text, response = printed(make_notification(links={"grafana": "https://g/x"}))
    assert response.detail == "printed"
    assert response.refs == {}
    lines = text.splitlines()
    assert "[FIRING] latency — shop/deploy/web inbound GET /api/users" in lines[0]
    assert "critical" in lines[0]
    assert lines[1].strip() == "p99 812 ms, expected 40–95 ms (8.5× the upper bound)"
    assert lines[2].strip() == "since 2023-11-14 22:13 UTC (10 min)"
    assert "suspect pod: web-7d9f-abc" in text
    assert "grafana: https://g/x" in text


def test_brackets_from_the_mesh_are_printed_not_parsed_as_markup() -> None:
    text, _ = printed(make_notification(route="GET /items/[id]", explanation="[bold]x[/bold]"))
    assert "GET /items/[id]" in text
    assert "[bold]x[/bold]" in text


def test_colour_differs_between_firing_and_resolved() -> None:
    firing, _ = printed(make_notification(), color=True)
    resolved, _ = printed(make_notification("resolved"), color=True)
    assert "\x1b[" in firing
    assert firing.split("[FIRING]")[0] != resolved.split("[RESOLVED]")[0]


def test_test_notification_is_marked() -> None:
    text, _ = printed(make_notification(test=True))
    assert "[TEST] [FIRING]" in text
    assert "no action is needed" in text
