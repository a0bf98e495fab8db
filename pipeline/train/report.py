"""The training run's HTML report, with PNG plots a person can open.

One self-contained folder: ``index.html``, ``summary.json`` and the plots —
score distributions per kind (held-back normal windows against labelled
fault windows), the routes the candidate flags most on held-back history,
and examples of flagged windows with their baseline and model scores.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from models.learned import LEARNED_KINDS, LearnedModel
from pipeline.train.dataset import Dataset
from pipeline.train.evaluate import learned_scores

if TYPE_CHECKING:
    from pipeline.train.job import TrainResult


def _distribution_plot(
    path: Path, model: LearnedModel, ds: Dataset, holdout: np.ndarray, scen: Dataset | None
) -> None:
    kinds = list(model.kinds)
    fig, axes = plt.subplots(len(kinds), 1, figsize=(7, 1.9 * len(kinds)), squeeze=False)
    bins = np.linspace(0, 1, 41)
    for ax, k in zip(axes[:, 0], kinds, strict=True):
        rows = np.flatnonzero(holdout & ds.judged[k])
        if rows.size:
            s = learned_scores(model, ds, rows)[k]
            ax.hist(s, bins=bins, alpha=0.6, label="held-back history", density=True)
        if scen is not None and scen.labels is not None:
            pos = np.flatnonzero(scen.judged[k] & scen.labels[k])
            if pos.size:
                s = learned_scores(model, scen, pos)[k]
                ax.hist(s, bins=bins, alpha=0.6, label="labelled faults", density=True)
        ax.set_yscale("log")
        ax.set_title(k, fontsize=9)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("calibrated model score")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _worst_routes(
    model: LearnedModel, ds: Dataset, holdout: np.ndarray, threshold: float, n: int = 10
) -> list[tuple[str, int, float]]:
    rows = np.flatnonzero(holdout)
    if rows.size == 0:
        return []
    scores = learned_scores(model, ds, rows)
    top = np.max(np.column_stack(list(scores.values())), axis=1)
    flagged: dict[str, int] = defaultdict(int)
    peak: dict[str, float] = defaultdict(float)
    for i, s in zip(rows, top, strict=True):
        r = ds.route[int(i)]
        peak[r] = max(peak[r], float(s))
        if s >= threshold:
            flagged[r] += 1
    order = sorted(peak, key=lambda r: (-flagged[r], -peak[r]))[:n]
    return [(r, flagged[r], peak[r]) for r in order]


def _examples_plot(
    path: Path, model: LearnedModel, scen: Dataset | None, threshold: float
) -> list[dict[str, Any]]:
    """Flagged windows of the labelled scenarios: baseline against model score."""
    if scen is None or len(scen) == 0:
        return []
    out: list[dict[str, Any]] = []
    fig, ax = plt.subplots(figsize=(7, 3))
    for k in model.kinds:
        rows = np.flatnonzero(scen.judged[k])
        if rows.size == 0:
            continue
        s = learned_scores(model, scen, rows)[k]
        ax.scatter(scen.window_end[rows], s, s=4, label=k)
        for j in np.argsort(-s)[:3]:
            i = int(rows[j])
            if s[j] >= threshold:
                out.append(
                    {
                        "kind": k,
                        "route": scen.route[i],
                        "window_end": float(scen.window_end[i]),
                        "baseline": float(scen.baseline_score[k][i]),
                        "model": float(s[j]),
                        "labelled": bool(scen.labels[k][i]) if scen.labels else None,
                    }
                )
    ax.axhline(threshold, color="k", lw=0.5)
    ax.set_xlabel("window end (s)")
    ax.set_ylabel("model score")
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return out


def _per_route(model: LearnedModel, cand: dict[str, Any], n: int = 10) -> dict[str, Any]:
    """How many routes got parameters of their own, what that changed, and the largest."""
    if model.offsets is None:
        return {}
    own = model.offsets[: len(model.route_keys)]
    kinds = [i for i, k in enumerate(LEARNED_KINDS) if k in model.kinds]
    largest: list[tuple[str, str, float]] = []
    if own.size and kinds:
        sub = own[:, kinds]
        for flat in np.argsort(-np.abs(sub), axis=None)[:n]:
            r, c = np.unravel_index(int(flat), sub.shape)
            largest.append((model.route_keys[r], LEARNED_KINDS[kinds[c]], float(sub[r, c])))
    return {
        **model.route_stats,
        "flag_rate": cand.get("flag_rate", {}),
        "flag_rate_class_only": cand.get("flag_rate_class_only", {}),
        "largest_offsets": largest,
    }


def write_report(
    out: Path,
    result: TrainResult,
    model: LearnedModel,
    ds: Dataset,
    holdout: np.ndarray,
    scen: Dataset | None,
    budget: float,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    threshold = 1.0 - budget
    _distribution_plot(out / "scores.png", model, ds, holdout, scen)
    worst = _worst_routes(model, ds, holdout, threshold)
    examples = _examples_plot(out / "flagged.png", model, scen, threshold)
    cand = result.candidate.as_dict() if result.candidate else {}
    prod = result.production.as_dict() if result.production else {}
    per_route = _per_route(model, cand)
    summary = {
        "reasons": result.reasons,
        "candidate": cand,
        "production": prod,
        "per_route": per_route,
        "training": {
            "samples": ds.samples_seen,
            "routes": ds.routes_seen,
            "rows_sampled": len(ds),
            "window_start": ds.t_min,
            "window_end": ds.t_max,
        },
        "timings_s": result.timings,
        "worst_routes": worst,
        "examples": examples,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    e = html.escape

    def row(cells: list[Any]) -> str:
        return "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>"

    kinds = sorted(set(cand.get("flag_rate", {})) | set(cand.get("auc", {})))
    metric_rows = "".join(
        row(
            [
                k,
                f"{cand['flag_rate'].get(k, float('nan')):.2e}",
                f"{prod.get('flag_rate', {}).get(k, float('nan')):.2e}",
                f"{cand['baseline_auc'].get(k, float('nan')):.4f}",
                f"{cand['auc'].get(k, float('nan')):.4f}",
                f"{prod.get('auc', {}).get(k, float('nan')):.4f}",
                f"{cand['recall'].get(k, float('nan')):.2f}",
            ]
        )
        for k in kinds
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>meshwatch train report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}</style>
</head><body><h1>meshwatch train</h1>
<h2>Decision</h2><ul>{"".join(f"<li>{e(r)}</li>" for r in result.reasons)}</ul>
<h2>Data</h2><p>{ds.samples_seen:,} samples, {ds.routes_seen:,} routes,
{len(ds):,} route-windows sampled; range {ds.t_min:.0f} – {ds.t_max:.0f}.</p>
<h2>Candidate against production</h2>
<table><tr><th>kind</th><th>flagged held-back (cand.)</th><th>(prod.)</th>
<th>AUC baseline only</th><th>AUC cand.</th><th>AUC prod.</th><th>recall cand.</th></tr>
{metric_rows}</table>
{_per_route_html(per_route, row)}
<h2>Score distributions</h2><img src="scores.png" alt="score distributions">
<h2>Routes flagged most on held-back history</h2>
<table><tr><th>route</th><th>flagged windows</th><th>peak score</th></tr>
{"".join(row([r, n, f"{p:.5f}"]) for r, n, p in worst)}</table>
<h2>Examples of flagged windows (labelled scenarios)</h2>
<img src="flagged.png" alt="flagged windows">
<table><tr><th>kind</th><th>route</th><th>window end</th><th>baseline</th><th>model</th>
<th>labelled</th></tr>
{"".join(row([x["kind"], x["route"], x["window_end"], f"{x['baseline']:.5f}",
              f"{x['model']:.5f}", x["labelled"]]) for x in examples)}</table>
</body></html>"""  # fmt: skip
    (out / "index.html").write_text(page)
    return out / "index.html"


def _per_route_html(per_route: dict[str, Any], row: Any) -> str:
    if not per_route:
        return "<h2>Per-route parameters</h2><p>none (the model has one set per kind)</p>"
    with_own, cls = per_route["flag_rate"], per_route["flag_rate_class_only"]
    rows = "".join(
        row([k, f"{with_own.get(k, float('nan')):.2e}", f"{cls.get(k, float('nan')):.2e}",
             per_route.get("by_kind", {}).get(k, 0)])
        for k in sorted(set(with_own) | set(cls))
    )  # fmt: skip
    largest = "".join(row([r, k, f"{o:+.4f}"]) for r, k, o in per_route["largest_offsets"])
    return f"""<h2>Per-route parameters</h2>
<p>{per_route.get("routes_with_own_parameters", 0):,} of {per_route.get("routes_seen", 0):,}
routes have score offsets of their own (at least {per_route.get("min_windows")} normal training
windows of a kind); the others use their route class's.</p>
<table><tr><th>kind</th><th>flagged held-back (own parameters)</th>
<th>(class parameters only)</th><th>routes with own</th></tr>{rows}</table>
<p>Largest offsets (raw score; positive: a noisier normal, a higher threshold):</p>
<table><tr><th>route</th><th>kind</th><th>offset</th></tr>{largest}</table>"""


__all__ = ["write_report"]
