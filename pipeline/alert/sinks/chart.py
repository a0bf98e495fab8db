"""A small PNG of a route's recent window, for targets that show images.

The finding carries its evidence (``t``, ``value`` pairs of the observed
metric); the chart draws them against the expected band, so the first look
at an alert already says "how far off, since when". matplotlib is imported
on first use, with the Agg backend: no display, no GUI toolkit, and the
alerter pays the import only when a sink asks for charts.
"""

from __future__ import annotations

import io
import threading
from typing import Any

from pipeline.alert.message import Notification, format_quantity, metric_name, title, utc

WIDTH_IN = 6.0
HEIGHT_IN = 2.4
DPI = 100
FILENAME = "meshwatch-chart.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_lock = threading.Lock()  # pyplot keeps global state; one figure at a time


def _scale(unit: str) -> tuple[float, str]:
    """Plot ratios as percent and big millisecond values as seconds."""
    u = unit.strip().lower()
    if u in ("ratio", "fraction"):
        return 100.0, "%"
    return 1.0, unit.strip()


def has_data(n: Notification) -> bool:
    return any(p.value is not None for p in n.finding.evidence)


def render_png(n: Notification) -> bytes | None:
    """The chart as PNG bytes, or None when the finding has no evidence to draw."""
    if not has_data(n):
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    f = n.finding
    factor, unit = _scale(f.unit)
    points = [(utc(p.t), p.value * factor) for p in f.evidence if p.value is not None]
    times = [t for t, _ in points]
    values = [v for _, v in points]
    colour = "#2e7d32" if n.resolved else "#c62828"
    with _lock:
        fig: Any = plt.figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
        try:
            ax = fig.add_subplot(1, 1, 1)
            if f.expected_high is not None:
                low = (f.expected_low or 0.0) * factor
                ax.axhspan(
                    low, f.expected_high * factor, color="#90caf9", alpha=0.35, label="expected"
                )
            ax.plot(
                times,
                values,
                marker="o",
                markersize=3,
                linewidth=1.5,
                color=colour,
                label=metric_name(f),
            )
            ax.set_ylabel(f"{metric_name(f)} ({unit})" if unit else metric_name(f), fontsize=8)
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
            observed = "" if f.observed is None else f" · now {format_quantity(f.observed, f.unit)}"
            ax.set_title(_short(title(n)) + observed, fontsize=8)
            fig.autofmt_xdate()
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=DPI)
        finally:
            plt.close(fig)
    return buffer.getvalue()


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
