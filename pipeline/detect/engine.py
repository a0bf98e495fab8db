"""GoldenSamples → columnar observations → Findings.

The maths lives in :mod:`models.detector`; this module only moves data
between the message contracts and numpy columns, once per poll batch, and
writes the human side of a finding (band, evidence, one-line explanation,
suspect pod).
"""

from __future__ import annotations

import math
import operator
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.detector import (
    KINDS,
    MODEL_NAME,
    MODEL_VERSION,
    UNITS,
    DetectorParams,
    Observations,
    RouteDetector,
    Verdicts,
)
from pipeline.config import DetectorConfig
from pipeline.detect import columnar
from pipeline.detect.columnar import GoldenColumns, IntArray, RouteParts
from pipeline.detect.scoring import ModelScoring
from pipeline.keys import route_key as make_route_key
from pipeline.keys import workload_key as make_workload_key
from pipeline.schema import Finding, GoldenBatch, GoldenSample, finding_id


def params_from_config(cfg: DetectorConfig) -> DetectorParams:
    return DetectorParams(
        warmup_windows=cfg.warmup_windows,
        min_requests=cfg.min_requests,
        latency_threshold=cfg.latency_threshold,
        error_threshold=cfg.error_threshold,
        tls_threshold=cfg.tls_threshold,
        mtls_threshold=cfg.mtls_threshold,
        traffic_threshold=cfg.traffic_threshold,
        learn_threshold=cfg.learn_threshold,
        latency_min_ratio=cfg.latency_min_ratio,
        error_min_ratio=cfg.error_min_ratio,
        error_min_factor=cfg.error_min_factor,
        error_outlier_spread_clip=cfg.error_outlier_spread_clip,
        error_pair_threshold=cfg.error_pair_threshold,
        traffic_min_expected=cfg.traffic_min_expected,
        traffic_drop_ratio=cfg.traffic_drop_ratio,
        traffic_surge_ratio=cfg.traffic_surge_ratio,
        traffic_surge_held_ratio=cfg.traffic_surge_held_ratio,
        traffic_surge_hold_seconds=cfg.traffic_surge_hold_seconds,
        traffic_spike_ratio=cfg.traffic_spike_ratio,
        cert_min_ttl_seconds=cfg.cert_min_ttl_seconds,
        cert_min_ttl_fraction=cfg.cert_min_ttl_fraction,
        spread_tail_dof=cfg.spread_tail_dof,
        half_life_windows=cfg.adapt_half_life_windows,
        traffic_half_life_windows=cfg.traffic_half_life_windows,
        rebaseline_windows=cfg.rebaseline_windows,
        rebaseline_gap=cfg.rebaseline_gap,
        rebaseline_max_ratio=cfg.rebaseline_max_ratio,
        season_period_seconds=cfg.season_period_seconds,
        season_bins=cfg.season_bins,
        season_half_life_periods=cfg.season_half_life_periods,
        season_weekend=cfg.season_weekend,
        fire_after=cfg.fire_after,
        fire_window=cfg.fire_window,
        persist_seconds=cfg.persist_seconds,
        resolve_after=cfg.resolve_after,
        evidence_points=cfg.evidence_points,
    )


def route_keys(samples: Sequence[GoldenSample]) -> list[str]:
    """``[s.route_key for s in samples]``, building each workload key once."""
    return RouteKeys()(list(map(_route_parts, samples)))


_route_parts = operator.attrgetter("namespace", "workload_kind", "workload", "direction", "route")


class RouteKeys:
    """Route-key strings from their parts, remembered: one dict lookup per
    sample instead of two f-strings and a kind normalisation."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.known: dict[RouteParts, str] = {}
        self.limit = limit

    def __call__(self, parts: list[RouteParts]) -> list[str]:
        known = self.known
        out: list[str | None] = list(map(known.get, parts))
        if None in out:
            if len(known) > self.limit:
                known.clear()  # a bound, not an eviction policy: rebuilt on demand
            for i, key in enumerate(out):
                if key is None:
                    # Interned parts: a workload's routes share their name
                    # strings in the cache instead of each pinning its own.
                    ns, kind, workload, direction, route = map(sys.intern, parts[i])
                    key = make_route_key(make_workload_key(ns, kind, workload), direction, route)
                    out[i] = known[(ns, kind, workload, direction, route)] = key
        return out  # type: ignore[return-value]  # no None left


class RouteRows:
    """Each sample's detector row from its key parts.

    A workload reports the same routes in the same order window after
    window (in messages of up to K routes), so a message whose key parts
    equal those of the last message that began with the same route takes
    that message's rows: one dict lookup and one list comparison per message
    instead of hashing five fresh strings per sample. Anything else (a new
    or reordered route, samples without message spans) goes through one
    dict lookup per sample. A RouteDetector's rows never move (its table
    only grows), so the maps hold for as long as the detector is the same
    object.
    """

    def __init__(self) -> None:
        self.det: RouteDetector | None = None
        self.row_of: dict[RouteParts, int] = {}
        #: row → the interned key parts the row map holds for it
        self.parts_at: list[RouteParts] = []
        #: a message's first key parts → (its interned key parts, their rows)
        self.by_message: dict[RouteParts, tuple[list[RouteParts], list[int]]] = {}

    def __call__(
        self, det: RouteDetector, parts: list[RouteParts], spans: list[int] | None = None
    ) -> IntArray:
        if det is not self.det:
            self.det, self.row_of, self.parts_at, self.by_message = det, {}, [], {}
        if spans is None:
            return np.fromiter(self._lookup(det, parts), np.int64, len(parts))
        by_message = self.by_message
        out: list[int] = []
        missed: list[tuple[int, int]] = []  # (start, end)
        start = 0
        for n in spans:
            end = start + n
            if n:
                known = by_message.get(parts[start])
                if known is not None and known[0] == parts[start:end]:
                    out.extend(known[1])
                else:
                    missed.append((start, end))
                    out.extend([-1] * n)
            start = end
        if missed:
            # one lookup for every missed message (new routes get their rows
            # in one call, in batch order, as without spans)
            rows = self._lookup(det, [p for a, b in missed for p in parts[a:b]])
            if len(by_message) > len(self.row_of) + 1024:
                by_message.clear()  # a bound (odd messages), rebuilt on demand
            parts_at = self.parts_at
            at = 0
            for a, b in missed:
                seg = rows[at : at + b - a]
                at += b - a
                out[a:b] = seg
                interned = list(map(parts_at.__getitem__, seg))
                by_message[interned[0]] = (interned, seg)
        return np.fromiter(out, np.int64, len(parts))

    def _lookup(self, det: RouteDetector, parts: list[RouteParts]) -> list[int]:
        row_of = self.row_of
        got: list[int | None] = list(map(row_of.get, parts))
        if None in got:
            # A backlog brings several windows of a new route in one batch:
            # build each new key once, then look the batch up again.
            new = list(dict.fromkeys(p for p, r in zip(parts, got, strict=True) if r is None))
            # Interned parts: a workload's routes share their name strings
            # in the map instead of each pinning its own.
            interned = [tuple(map(sys.intern, t)) for t in new]
            keys = [
                make_route_key(make_workload_key(ns, kind, wl), direction, route)
                for ns, kind, wl, direction, route in interned
            ]
            rows = det.rows_for(keys).tolist()
            parts_at = self.parts_at
            if rows and max(rows) >= len(parts_at):
                parts_at.extend([("", "", "", "", "")] * (max(rows) + 1 - len(parts_at)))
            for t, r in zip(interned, rows, strict=True):
                row_of[t] = r  # type: ignore[index]
                parts_at[r] = t  # type: ignore[assignment]
            got = list(map(row_of.__getitem__, parts))
        return got  # type: ignore[return-value]  # no None left


def observations(det: RouteDetector, samples: Sequence[GoldenSample]) -> Observations:
    """Observations of GoldenSamples (see :func:`observations_of`)."""
    rows = det.rows_for(route_keys(samples))
    return observations_of(columnar.from_samples(list(samples)), rows)


def observations_of(cols: GoldenColumns, rows: IntArray) -> Observations:
    """Column views, no per-sample work: a missing quantile or TTL is NaN."""
    c = cols.col
    return Observations(
        rows=rows,
        window_end=c("window_end"),
        requests=c("requests"),
        failures=c("failures"),
        p50_ms=c("p50_ms"),
        p95_ms=c("p95_ms"),
        p99_ms=c("p99_ms"),
        tls_failures=c("tls_failures"),
        plaintext=c("plaintext_requests"),
        mtls=c("mtls_requests"),
        cert_ttl=c("cert_ttl_seconds"),
        window_seconds=c("window_seconds"),
        buckets=cols.buckets,
        bounds=cols.bounds,
    )


class DetectionEngine:
    """One detector instance's state and its translation to Findings."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        self.detector = RouteDetector(params_from_config(cfg))
        self.samples_seen = 0
        self._rows = RouteRows()
        #: trained models joined to the baselines' scores (pipeline/detect/scoring.py)
        self.scoring = ModelScoring()

    @property
    def learned_model_version(self) -> str | None:
        """Registry version of the trained model in use (None: baselines only)."""
        return self.scoring.version

    def process(
        self,
        batches: Sequence[GoldenBatch | columnar.FastGolden],
        points: list[dict[str, Any]] | None = None,
    ) -> list[Finding]:
        """Judge a poll batch; with ``points``, also append one record per judged
        route-window-kind (score, verdict, observed value, expected band, state).

        Raises ValueError if a fast-decoded message fails the batch-wide checks
        (the stage uses :meth:`process_decoded`, which dead-letters it instead).
        """
        slow = [b for b in batches if isinstance(b, GoldenBatch)]
        if len(slow) == len(batches):
            return self.process_samples([s for b in slow for s in b.samples], points)
        cols, rejected = columnar.columns(batches)
        if rejected:
            raise ValueError("; ".join(f"message {r.position}: {r.error}" for r in rejected))
        return self.process_columns(cols, points)

    def process_samples(
        self, samples: Sequence[GoldenSample], points: list[dict[str, Any]] | None = None
    ) -> list[Finding]:
        if not samples:
            return []
        return self.process_columns(columnar.from_samples(list(samples)), points)

    #: per message, see :func:`columnar.decode_golden`
    decode = staticmethod(columnar.decode_golden)
    dead_letters = staticmethod(columnar.dead_letters)

    def process_decoded(
        self, decoded: Sequence[columnar.Decoded]
    ) -> tuple[list[Finding], list[columnar.Rejected]]:
        """A poll batch of :func:`columnar.decode_golden` results: the findings,
        and the messages the batch-wide checks refused (for the DLQ)."""
        cols, rejected = columnar.columns(decoded)
        return self.process_columns(cols), rejected

    def process_columns(
        self, cols: GoldenColumns, points: list[dict[str, Any]] | None = None
    ) -> list[Finding]:
        """The hot path: a poll batch as columns; sample objects are touched
        only for the routes that produce a finding."""
        if not len(cols):
            return []
        self.samples_seen += len(cols)
        self.scoring.adopt()  # a model the registry follower offered takes over between batches
        det = self.detector
        obs = observations_of(cols, self._rows(det, cols.keys, cols.spans))
        verdicts = self.scoring.apply(det, obs, det.process(obs))
        if points is not None:
            self._points([det.keys[r] for r in obs.rows.tolist()], obs, verdicts, points)
        findings: list[Finding] = []
        for kind in KINDS:
            v = verdicts.kinds.get(kind)
            if v is None:
                continue
            for pos in np.flatnonzero(v.fired | v.resolved):
                i = int(verdicts.index[pos])
                status = "firing" if v.fired[pos] else "resolved"
                findings.append(
                    self._finding(
                        cols.model(i),
                        int(obs.rows[i]),
                        kind,
                        status,
                        float(v.score[pos]),
                        float(v.observed[pos]),
                        float(v.expected_low[pos]),
                        float(v.expected_high[pos]),
                    )
                )
        return findings

    def _points(
        self,
        keys: list[str],
        obs: Observations,
        verdicts: Verdicts,
        points: list[dict[str, Any]],
    ) -> None:
        det = self.detector
        for kind in KINDS:
            v = verdicts.kinds.get(kind)
            if v is None:
                continue
            firing = det.persistence[kind].firing
            for pos in np.flatnonzero(v.judged | v.fired | v.resolved):
                i = int(verdicts.index[pos])
                points.append(
                    {
                        "route_key": keys[i],
                        "window_end": float(obs.window_end[i]),
                        "kind": kind,
                        "score": float(v.score[pos]),
                        "anomalous": bool(v.anomalous[pos]),
                        "observed": _finite(float(v.observed[pos])),
                        "expected_low": _finite(float(v.expected_low[pos])),
                        "expected_high": _finite(float(v.expected_high[pos])),
                        "fired": bool(v.fired[pos]),
                        "resolved": bool(v.resolved[pos]),
                        "firing": bool(firing[int(obs.rows[i])]) and not bool(v.resolved[pos]),
                    }
                )

    def _finding(
        self,
        s: GoldenSample,
        row: int,
        kind: str,
        status: str,
        score: float,
        observed: float,
        lo: float,
        hi: float,
    ) -> Finding:
        det = self.detector
        ki = KINDS.index(kind)
        # tolist: the same Python floats as float() of each element, without
        # iterating numpy scalars
        ts = det.evidence_t[row].tolist()
        vals = det.evidence[row, ki].tolist()
        # plain dicts: the Finding's validator builds the EvidencePoints in one
        # pass (~3x cheaper than constructing each model here; same points)
        evidence = [
            {"t": t, "value": None if math.isnan(x) else _round(x)}
            for t, x in zip(ts, vals, strict=True)
            if not math.isnan(t)
        ]
        started = float(det.started[row, ki]) or s.window_end
        return Finding(
            id=finding_id(s.route_key, kind, s.window_end, status),
            route_key=s.route_key,
            namespace=s.namespace,
            workload_kind=s.workload_kind,
            workload=s.workload,
            direction=s.direction,
            route=s.route,
            kind=kind,
            status=status,
            severity=_severity(kind, observed, hi),
            score=round(score, 6),
            observed=_finite(observed),
            expected_low=_finite(lo),
            expected_high=_finite(hi),
            unit=UNITS[kind],
            window_end=s.window_end,
            started_at=started,
            evidence=evidence,
            suspect_pod=suspect_pod(s, kind),
            model=MODEL_NAME,
            model_version=MODEL_VERSION,
            learned_model_version=self.scoring.version,
            explanation=explain(kind, status, observed, lo, hi, s),
        )


def _finite(x: float) -> float | None:
    return _round(x) if math.isfinite(x) else None


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def _severity(kind: str, observed: float, hi: float) -> str:
    if kind in ("tls_failure", "mtls_regression", "cert_expiry", "traffic_drop"):
        return "critical"
    if kind == "traffic_surge":
        return "warning"
    if math.isfinite(observed) and math.isfinite(hi) and hi > 0 and observed >= 3 * hi:
        return "critical"
    return "warning"


def suspect_pod(s: GoldenSample, kind: str) -> str | None:
    """The one replica that stands out, when one does (≥ 3 pods).

    Plain Python over a handful of pods: numpy's argmax/delete/median cost
    ~50 µs per finding here. Same values: the ratios are Python divisions
    either way, ``index(max)`` is argmax's first maximum (no NaN: requests > 0),
    and ``statistics.median`` averages the middle pair as ``np.median`` does.
    """
    pods = [p for p in s.pods if p.requests > 0]
    if len(pods) < 3 or kind not in ("latency", "error_rate"):
        return None
    if kind == "latency":
        vals = [p.latency_sum_ms / p.requests for p in pods]
    else:
        vals = [p.failures / p.requests for p in pods]
    top = max(vals)
    worst = vals.index(top)
    others = vals[:worst] + vals[worst + 1 :]
    typical = statistics.median(others)
    if top > 2 * typical and top > 0 and max(others) < top / 1.5:
        return pods[worst].pod
    return None


def explain(kind: str, status: str, observed: float, lo: float, hi: float, s: GoldenSample) -> str:
    """One line a person can act on, without opening a dashboard."""
    if status == "resolved":
        return f"{kind.replace('_', ' ')} back within its usual range"
    if kind == "latency":
        usual = math.sqrt(lo * hi) if lo > 0 and hi > 0 else hi
        times = observed / usual if usual else math.inf
        return (
            f"p99 latency {observed:.0f} ms is {times:.1f}× the usual {usual:.0f} ms "
            f"(expected ≤ {hi:.0f} ms) over {s.requests} requests"
        )
    if kind == "error_rate":
        return (
            f"{s.failures} of {s.requests} requests failed ({observed:.1%}); "
            f"usual failure ratio ≤ {hi:.2%}"
        )
    if kind == "tls_failure":
        return f"{observed:.0f} TLS detection/handshake failures in one window (usual ≤ {hi:.1f})"
    if kind == "mtls_regression":
        return (
            f"{observed:.0%} of inbound requests arrive without mTLS "
            f"({s.plaintext_requests} plaintext); this route is normally meshed"
        )
    if kind == "traffic_drop":
        if observed == 0:
            return f"no traffic: not one request in the window, usually {lo:.0f}–{hi:.0f}"
        return f"{observed:.0f} requests in the window, usually {lo:.0f}–{hi:.0f}"
    if kind == "traffic_surge":
        return f"traffic surge: {observed:.0f} requests in the window, usually {lo:.0f}–{hi:.0f}"
    if kind == "cert_expiry":
        return f"identity certificate expires in {observed / 3600:.1f} h (floor {lo / 3600:.1f} h)"
    return f"{kind} anomalous"
