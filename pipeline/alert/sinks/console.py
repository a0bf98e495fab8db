"""Alerts as a few coloured lines on a terminal: the demo's and a newcomer's sink.

Built from rich ``Text`` objects rather than markup strings, because route
names and explanations come from the mesh and may contain ``[`` characters
that markup would swallow or misread.
"""

from __future__ import annotations

import httpx
from rich.console import Console, Group
from rich.text import Text

from pipeline.alert.message import Notification, body_lines, since_line, title
from pipeline.alert.sinks.base import PermanentDeliveryError, SinkResponse

SEVERITY_STYLES = {"critical": "bold red", "warning": "bold yellow", "info": "bold cyan"}
RESOLVED_STYLE = "bold green"
ICONS = {"firing": "●", "update": "◐", "resolved": "✔"}


def render(n: Notification) -> Group:
    """The block printed for one notification: title, then indented details."""
    style = RESOLVED_STYLE if n.resolved else SEVERITY_STYLES.get(n.incident.severity, "bold")
    head = Text(f"{ICONS[n.action]} ", style=style)
    head.append(title(n), style="bold magenta" if n.test else style)
    head.append(f"  {n.finding.severity}", style="dim")

    lines: list[Text] = [head]
    since = since_line(n)
    for line in body_lines(n):
        lines.append(Text("  " + line, style="dim" if line == since else ""))
    for name, url in n.links.items():
        link = Text(f"  {name}: ", style="dim")
        link.append(url, style=f"underline link {url}")
        lines.append(link)
    return Group(*lines)


class RichConsoleSink:
    """Prints to a rich ``Console``; tests pass one that records instead."""

    def __init__(self, name: str = "console", console: Console | None = None) -> None:
        self.name = name
        self.console = console if console is not None else Console(highlight=False)

    def __repr__(self) -> str:
        return f"RichConsoleSink(name={self.name!r})"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        try:
            self.console.print(render(n), highlight=False, soft_wrap=True)
        except OSError as exc:  # closed terminal or pipe: printing again will not help
            raise PermanentDeliveryError(None, f"console: {exc.strerror or exc}") from None
        return SinkResponse(refs={}, status=None, detail="printed")
