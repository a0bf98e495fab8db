"""Run the detection engine over recorded history and write what it saw.

The detectors are the production ones (:class:`~pipeline.detect.engine.
DetectionEngine` with the configured :class:`~pipeline.config.DetectorConfig`),
fed one window at a time in time order, so a backtest fires and resolves
exactly where the running detector would have.

Outputs, in the output folder:

- ``points.csv`` / ``points.json`` — one record per route, window and judged
  kind: score in [0, 1], anomalous (score past the threshold and the guard),
  observed value, expected band, and whether a finding was firing;
- ``findings.json`` — every finding (firing and resolved), as the detector
  would have produced them to the findings topic;
- ``chart-<n>.png`` — the observed series of a route and kind with its
  expected band, anomalous windows marked and firing spans shaded.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.backtest.inputs import iter_windows
from pipeline.config import DetectorConfig
from pipeline.detect.engine import DetectionEngine
from pipeline.schema import Finding, GoldenSample, to_jsonable

POINT_FIELDS = (
    "route_key",
    "window_end",
    "kind",
    "score",
    "anomalous",
    "observed",
    "expected_low",
    "expected_high",
    "fired",
    "resolved",
    "firing",
)


@dataclass
class BacktestResult:
    points: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    windows: int = 0
    samples: int = 0

    def alerts(self) -> list[Finding]:
        """Findings that opened an incident (status ``firing``)."""
        return [f for f in self.findings if f.status == "firing"]


def backtest(
    samples: Sequence[GoldenSample],
    cfg: DetectorConfig,
    *,
    kinds: Sequence[str] | None = None,
    keep_points: bool = True,
) -> BacktestResult:
    """Feed ``samples`` (time-ordered) window by window through a fresh engine."""
    engine = DetectionEngine(cfg)
    result = BacktestResult()
    wanted = set(kinds) if kinds else None
    points: list[dict[str, Any]] | None = [] if keep_points else None
    for group in iter_windows(samples):
        found = engine.process_samples(group, points)
        result.windows += 1
        result.samples += len(group)
        result.findings.extend(f for f in found if wanted is None or f.kind in wanted)
    if points is not None:
        result.points = [p for p in points if wanted is None or p["kind"] in wanted]
    return result


def backtest_many(
    series: Sequence[Sequence[GoldenSample]],
    cfg: DetectorConfig,
    *,
    kinds: Sequence[str] | None = None,
) -> BacktestResult:
    """Several independent series (one route each) through one engine, interleaved.

    Entry *i* of every series is judged in the same call: each route still
    advances one window at a time in its own time order, and the per-call
    cost is paid once for all series instead of once per series and window.
    Findings only; no per-point records.
    """
    engine = DetectionEngine(cfg)
    result = BacktestResult()
    wanted = set(kinds) if kinds else None
    longest = max((len(s) for s in series), default=0)
    for i in range(longest):
        group = [s[i] for s in series if i < len(s)]
        found = engine.process_samples(group)
        result.windows += 1
        result.samples += len(group)
        result.findings.extend(f for f in found if wanted is None or f.kind in wanted)
    return result


def write_outputs(result: BacktestResult, out: Path, *, charts: int = 4) -> list[Path]:
    """points.csv/json, findings.json and up to ``charts`` PNG charts; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "points.csv", out / "points.json", out / "findings.json"]
    with written[0].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=POINT_FIELDS)
        w.writeheader()
        for p in result.points:
            w.writerow({k: ("" if p.get(k) is None else p.get(k)) for k in POINT_FIELDS})
    written[1].write_text(json.dumps(result.points))
    written[2].write_text(
        json.dumps([to_jsonable(f) for f in result.findings], indent=1, ensure_ascii=False)
    )
    for i, (route, kind) in enumerate(chart_series(result, charts)):
        path = out / f"chart-{i + 1}.png"
        plot_series(result, route, kind, path)
        written.append(path)
    return written


def chart_series(result: BacktestResult, limit: int) -> list[tuple[str, str]]:
    """The (route, kind) pairs worth a chart: those with findings first, most first."""
    counts: dict[tuple[str, str], int] = {}
    for f in result.findings:
        counts[(f.route_key, f.kind)] = counts.get((f.route_key, f.kind), 0) + 1
    pairs = sorted(counts, key=lambda k: (-counts[k], k))
    if not pairs and result.points:
        p = result.points[0]
        pairs = [(p["route_key"], p["kind"])]
    return pairs[:limit]


def plot_series(result: BacktestResult, route: str, kind: str, path: Path) -> None:
    """Observed values, the expected band, anomalous windows and firing spans."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in result.points if p["route_key"] == route and p["kind"] == kind]
    if not pts:
        return
    # matplotlib date numbers: days since its epoch, 1970-01-01 unless reconfigured
    t = [p["window_end"] / 86400.0 for p in pts]
    nan = float("nan")
    obs = [nan if p["observed"] is None else p["observed"] for p in pts]
    lo = [nan if p["expected_low"] is None else p["expected_low"] for p in pts]
    hi = [nan if p["expected_high"] is None else p["expected_high"] for p in pts]
    fig, ax = plt.subplots(figsize=(11, 3.8), dpi=100)
    ax.fill_between(t, lo, hi, color="tab:blue", alpha=0.15, step="mid", label="expected band")
    ax.plot(t, obs, color="black", lw=0.8, label="observed")
    bad = [i for i, p in enumerate(pts) if p["anomalous"]]
    if bad:
        ax.scatter([t[i] for i in bad], [obs[i] for i in bad], s=12, color="tab:red", zorder=3,
                   label="anomalous window")  # fmt: skip
    start = None
    for i, p in enumerate(pts):
        if p["firing"] and start is None:
            start = t[i]
        if start is not None and (not p["firing"] or i == len(pts) - 1):
            ax.axvspan(start, t[i], color="tab:red", alpha=0.12, lw=0)
            start = None
    ax.xaxis_date()
    ax.set_title(f"{route} — {kind}", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    if kind == "latency" and all(v > 0 for v in obs if v == v):
        ax.set_yscale("log")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
