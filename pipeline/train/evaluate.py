"""Candidate against production, on held-back history and labelled scenarios.

Two questions decide whether a candidate may replace the production model:

1. **Does it stay quiet on normal traffic?** On held-back history (the
   latest part of the training range, never fitted), the share of judged
   windows its calibrated score flags (score at or above ``1 - budget``).
   Held-back history is mostly normal, so this is its false-alert rate.
2. **Does it rank real faults higher?** On the labelled simulator scenarios,
   the ROC AUC of the combined score (``max(baseline, model)``, what the
   detector reports) for labelled-anomalous against normal windows, per
   kind, and the share of labelled windows the model flags (recall).

The rule (:func:`compare`): not worse than production on either, within a
small tolerance; the reasons are returned as sentences for the job to print.

Scores use each route's own parameters where the model has them (see
:mod:`models.learned`); ``flag_rate_class_only`` is the same held-back rate
with every route on its class's parameters, so the report can say what the
per-route parameters changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from models.learned import LearnedModel
from pipeline.train.dataset import Dataset

AUC_TOLERANCE = 0.005
WINDOWS_PER_HOUR = 360.0


@dataclass
class Evaluation:
    name: str
    flag_rate: dict[str, float] = field(default_factory=dict)
    auc: dict[str, float] = field(default_factory=dict)
    baseline_auc: dict[str, float] = field(default_factory=dict)
    recall: dict[str, float] = field(default_factory=dict)
    #: held-back flag rate with every route on its class's parameters
    flag_rate_class_only: dict[str, float] = field(default_factory=dict)
    routes_with_own_parameters: int = 0

    @property
    def mean_flag_rate(self) -> float:
        return float(np.mean(list(self.flag_rate.values()))) if self.flag_rate else 0.0

    @property
    def flags_per_1k_route_hours(self) -> float:
        """Window-level flags per 1,000 route-hours of held-back history (all kinds)."""
        return float(sum(self.flag_rate.values()) * WINDOWS_PER_HOUR * 1000.0)

    @property
    def mean_auc(self) -> float:
        return float(np.mean(list(self.auc.values()))) if self.auc else float("nan")

    @property
    def mean_baseline_auc(self) -> float:
        vals = list(self.baseline_auc.values())
        return float(np.mean(vals)) if vals else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "flag_rate": self.flag_rate,
            "flags_per_1k_route_hours": self.flags_per_1k_route_hours,
            "auc": self.auc,
            "baseline_auc": self.baseline_auc,
            "recall": self.recall,
            "mean_auc": self.mean_auc,
            "flag_rate_class_only": self.flag_rate_class_only,
            "routes_with_own_parameters": self.routes_with_own_parameters,
        }


def learned_scores(
    model: LearnedModel, ds: Dataset, rows: np.ndarray, *, own: bool = True
) -> dict[str, np.ndarray]:
    """The model's scores of dataset rows, each with its route's parameters
    (``own=False``: its route class's)."""
    feats = ds.features[rows]
    params = None
    if model.offsets is not None:
        # one lookup per distinct route, then an array index per row
        names, inverse = np.unique(np.asarray(ds.route, dtype=object)[rows], return_inverse=True)
        params = model.param_index([str(r) for r in names], own=own)[inverse.reshape(-1)]
    return model.score(feats, {k: ds.judged[k][rows] for k in model.kinds}, params)


def evaluate(
    name: str,
    model: LearnedModel | None,
    holdout: Dataset,
    holdout_rows: np.ndarray,
    scenarios: Dataset | None,
    budget: float,
) -> Evaluation:
    ev = Evaluation(name)
    if model is None:
        return ev
    threshold = 1.0 - budget
    ev.routes_with_own_parameters = len(model.route_keys)
    if holdout_rows.size:
        scores = learned_scores(model, holdout, holdout_rows)
        for k, s in scores.items():
            judged = holdout.judged[k][holdout_rows]
            if judged.any():
                ev.flag_rate[k] = float((s[judged] >= threshold).mean())
        if model.route_keys:
            scores = learned_scores(model, holdout, holdout_rows, own=False)
            for k, s in scores.items():
                judged = holdout.judged[k][holdout_rows]
                if judged.any():
                    ev.flag_rate_class_only[k] = float((s[judged] >= threshold).mean())
    if scenarios is not None and scenarios.labels is not None and len(scenarios):
        rows = np.arange(len(scenarios))
        scores = learned_scores(model, scenarios, rows)
        for k, s in scores.items():
            judged = scenarios.judged[k]
            y = scenarios.labels[k][judged]
            if y.all() or not y.any():
                continue
            base = scenarios.baseline_score[k][judged]
            combined = np.maximum(base, s[judged])
            ev.auc[k] = float(roc_auc_score(y, combined))
            ev.baseline_auc[k] = float(roc_auc_score(y, base))
            ev.recall[k] = float((s[judged][y] >= threshold).mean())
    return ev


def compare(
    candidate: Evaluation, production: Evaluation | None, budget: float
) -> tuple[bool, list[str]]:
    """Whether the candidate is no worse than production, and why (sentences)."""
    reasons: list[str] = []
    ok = True
    limit = 2.0 * budget
    if production is not None and production.flag_rate:
        limit = max(limit, production.mean_flag_rate)
    rate = candidate.mean_flag_rate
    if rate > limit:
        ok = False
        reasons.append(f"flags {rate:.2e} of held-back windows, more than the allowed {limit:.2e}")
    else:
        reasons.append(f"flags {rate:.2e} of held-back windows (allowed {limit:.2e})")
    if production is not None and production.auc and candidate.auc:
        common = sorted(set(production.auc) & set(candidate.auc))
        c = float(np.mean([candidate.auc[k] for k in common]))
        p = float(np.mean([production.auc[k] for k in common]))
        if c + AUC_TOLERANCE < p:
            ok = False
            reasons.append(f"ranks labelled faults worse: AUC {c:.4f} vs production {p:.4f}")
        else:
            reasons.append(f"labelled-fault AUC {c:.4f} vs production {p:.4f} ({c - p:+.4f})")
    elif production is None:
        reasons.append("no model in production: nothing to be worse than")
    return ok, reasons


__all__ = ["Evaluation", "compare", "evaluate"]
