"""Prometheus query results → the same GoldenBatches the direct scrape builds.

Pure functions, no I/O: :mod:`pipeline.collect.prometheus_source` runs the
queries of :mod:`pipeline.collect.promql` and hands their rows here.

The rows are per-window deltas already (Prometheus computed them series by
series), summed by the labels :func:`pipeline.collect.extract.extract`
reads. They are turned back into :class:`~pipeline.collect.exposition.Sample`
values and folded by the very same ``extract`` and
:func:`~pipeline.collect.golden.build_batches` as a scrape, so route keys,
status classes, TLS split, quantiles and rounding cannot drift apart between
the two sources.

Which pods a window covers is decided from the info query (``up`` and its
sample time at both ends of the window, the proxy's start time):

- **counted**: scraped successfully with a fresh sample at both ``t0`` and
  ``t1``; or started after ``t0`` (everything it counted is in the window).
  A counted pod that restarted (its ``process_start_time_seconds`` moved
  forward) or started after ``t0`` counts every series in full;
- **down**: its last scrape before ``t1`` failed (``up == 0``), as a failed
  direct scrape: listed in ``pods_down``;
- **left out**: no fresh sample at ``t1`` (Prometheus was not scraping it),
  or none at ``t0`` while it was already running (its counters hold an
  unknown amount of history). Nothing is reported for it: a window without
  data is a gap, never zeros.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.collect.exposition import Sample
from pipeline.collect.extract import PodCounters, extract
from pipeline.collect.golden import build_batches
from pipeline.collect.promql import (
    INFO_LABEL,
    NAME_LABEL,
    RULES_LABEL,
    SENTINEL_LABEL,
    Family,
    Labels,
)
from pipeline.collect.targets import Target
from pipeline.schema import GoldenBatch

PodId = tuple[str, str]  # (namespace, pod)
Row = Mapping[str, Any]  # one element of an instant vector: {"metric": {...}, "value": [t, "v"]}


def row_value(row: Row) -> float:
    return float(row["value"][1])


@dataclass(slots=True)
class PodState:
    """What Prometheus knows about one scrape target at the window's two ends."""

    labels: dict[str, str] = field(default_factory=dict)
    up: float | None = None
    up_at: float | None = None
    up0: float | None = None
    up0_at: float | None = None
    start: float | None = None
    start0: float | None = None
    cert: float | None = None
    new_series: bool = False


def read_info(rows: Iterable[Row], labels: Labels) -> dict[PodId, PodState]:
    out: dict[PodId, PodState] = {}
    for row in rows:
        metric = row["metric"]
        ns, pod = metric.get(labels.namespace), metric.get(labels.pod)
        if not ns or not pod:
            continue  # not a pod (another job matching the selector)
        st = out.setdefault((ns, pod), PodState())
        v = row_value(row)
        tag = metric.get(INFO_LABEL)
        if tag == "up":
            st.up = v
            st.labels = {k: x for k, x in metric.items() if k not in (INFO_LABEL, "__name__")}
        elif tag == "up_at":
            st.up_at = v
        elif tag == "up0":
            st.up0 = v
        elif tag == "up0_at":
            st.up0_at = v
        elif tag == "start":
            st.start = v
        elif tag == "start0":
            st.start0 = v
        elif tag == "cert":
            st.cert = v
        elif tag == "new_series":
            st.new_series = v > 0
    return out


def workload_of(metric: Mapping[str, str], labels: Labels) -> tuple[str, str] | None:
    """(kind, name) from the first workload label a series carries."""
    for kind, label in labels.workload:
        name = metric.get(label)
        if name:
            return kind, name
    return None


def target_of(pod_id: PodId, st: PodState, labels: Labels) -> Target:
    ns, pod = pod_id
    kind, name = workload_of(st.labels, labels) or ("pod", pod)
    url = st.labels.get("instance", "")
    return Target(url=url, namespace=ns, workload=name, kind=kind, pod=pod)


@dataclass(slots=True)
class Coverage:
    """Which pods one window counts, and why the others are not counted."""

    counted: dict[PodId, Target] = field(default_factory=dict)
    cert: dict[PodId, float] = field(default_factory=dict)
    restarted: list[PodId] = field(default_factory=list)  # counted, every series in full
    new_series: list[PodId] = field(default_factory=list)  # counted, with new latency series
    down: list[tuple[Target, str]] = field(default_factory=list)
    left_out: list[tuple[Target, str]] = field(default_factory=list)
    stale_at_end: int = 0  # left out for want of a fresh sample at t1
    newest_at: float | None = None  # newest ``up`` sample time at t1

    @property
    def excluded(self) -> list[PodId]:
        return [(t.namespace, t.pod) for t, _ in (*self.down, *self.left_out)]

    @property
    def bare(self) -> list[PodId]:
        """Counted pods without a workload label (each is its own workload)."""
        return [pid for pid, t in self.counted.items() if t.kind == "pod"]

    def skip_reason(self, t1: float, selector: str) -> str | None:
        """Why the whole window must be skipped, or None if it can be built."""
        if not (self.counted or self.down or self.left_out):
            return f"Prometheus has no scrape target matching {{{selector}}} at window end"
        if self.counted or self.down:
            return None
        if self.stale_at_end == len(self.left_out):
            age = "none" if self.newest_at is None else f"{t1 - self.newest_at:.1f}s"
            return f"no fresh sample at window end (newest is {age} old): Prometheus not scraping"
        return "no sample at window start for any running pod (Prometheus was not scraping)"


def cover(
    states: Mapping[PodId, PodState], labels: Labels, *, t1: float, window: float, stale: float
) -> Coverage:
    """Sort the pods of one window into counted, down and left out (module docstring)."""
    t0 = t1 - window
    cov = Coverage()
    for pid, st in sorted(states.items()):
        if st.up is None or st.up_at is None:
            continue  # only gauges without a target (stale up): not a pod any more
        target = target_of(pid, st, labels)
        cov.newest_at = st.up_at if cov.newest_at is None else max(cov.newest_at, st.up_at)
        if st.up_at < t1 - stale:
            cov.left_out.append((target, f"no sample in the {t1 - st.up_at:.1f}s before the end"))
            cov.stale_at_end += 1
        elif st.up != 1:
            cov.down.append((target, "scrape failing (up=0)"))
        elif (st.up0 == 1 and st.up0_at is not None and st.up0_at >= t0 - stale) or (
            st.start is not None and st.start >= t0
        ):
            cov.counted[pid] = target
            if st.cert is not None and math.isfinite(st.cert):
                cov.cert[pid] = st.cert
            # Restarted since t0, or started after it: nothing it counts is older.
            if st.start is not None and (
                st.start >= t0 or (st.start0 is not None and st.start > st.start0 + 0.5)
            ):
                cov.restarted.append(pid)
            if st.new_series:
                cov.new_series.append(pid)
        else:
            cov.left_out.append((target, "no sample at window start"))
    return cov


@dataclass(slots=True)
class Folded:
    batches: list[GoldenBatch]
    rows: int = 0
    dropped_rows: int = 0  # rows of no counted pod or workload (should stay 0)


def fold(
    cov: Coverage,
    results: Sequence[tuple[Family, Sequence[Row]]],
    labels: Labels,
    *,
    window_end: float,
    window_seconds: float,
    cluster: str,
    collector: str,
    exclude_ports: Iterable[int],
) -> Folded:
    """Family rows of one window → GoldenBatches, via ``extract`` and ``build_batches``."""
    ports = tuple(exclude_ports)
    pod_samples: dict[PodId, list[Sample]] = {pid: [] for pid in cov.counted}
    wl_samples: dict[tuple[str, str, str], list[Sample]] = {}
    out = Folded(batches=[])
    wl_labels = labels.workload_labels
    for family, rows in results:
        default_name = family.parts[0].metrics[0]
        for row in rows:
            out.rows += 1
            metric = dict(row["metric"])
            name = metric.pop(NAME_LABEL, default_name)
            metric.pop("__name__", None)
            metric.pop(RULES_LABEL, None)  # a rule's fingerprint (recorded_rows keeps it)
            ns = metric.pop(labels.namespace, "")
            pod = metric.pop(labels.pod, None)
            if pod is not None:
                bucket = pod_samples.get((ns, pod))
                if bucket is None:
                    out.dropped_rows += 1
                    continue
            else:
                wl = workload_of(metric, labels)
                if wl is None:
                    out.dropped_rows += 1  # pods without workload labels come per pod
                    continue
                for lbl in wl_labels:
                    metric.pop(lbl, None)
                bucket = wl_samples.setdefault((ns, *wl), [])
            bucket.append(Sample(name, metric, row_value(row), None))

    counters: dict[PodId, PodCounters] = {}
    for pid, samples in pod_samples.items():
        pc = extract(samples, ports)
        pc.cert_expiry = cov.cert.get(pid)
        counters[pid] = pc

    by_workload: dict[tuple[str, str, str], list[PodId]] = {}
    for pid, t in cov.counted.items():
        by_workload.setdefault((t.namespace, t.kind, t.workload), []).append(pid)
    for wid, samples in wl_samples.items():
        members = sorted(by_workload.get(wid, ()))
        if not members:
            out.dropped_rows += len(samples)
            continue
        for rid, rc in extract(samples, ports).routes.items():
            owner = next((p for p in members if rid in counters[p].routes), members[0])
            counters[owner].route(*rid, rc.peer).merge(rc)

    out.batches = build_batches(
        [(cov.counted[pid], counters[pid]) for pid in sorted(cov.counted)],
        [t for t, _ in cov.down],
        window_end=window_end,
        window_seconds=window_seconds,
        cluster=cluster,
        collector=collector,
    )
    return out


# -- recorded mode: which rows come from the rules, which from raw queries ---------------------

WorkloadKey = tuple[str, str, str]  # (namespace, kind, name)


@dataclass(frozen=True, slots=True)
class RawScope:
    """Pods (whole workloads) whose rows the recorded mode takes from raw queries.

    A recording rule holds the raw window query with no pod named in it, so it
    is exact for a workload only if every pod of it is counted plainly:
    not restarted, scraped at both ends, carrying a workload label (latency
    series new in the window are added by a query of their own). Any other
    pod takes its whole workload to the raw shape (which names those pods, as
    the raw mode does); the rules' rows of those pods and workloads are dropped.
    """

    pods: frozenset[PodId] = frozenset()
    workloads: frozenset[WorkloadKey] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.pods)


def _key(t: Target) -> WorkloadKey:
    return (t.namespace, t.kind, t.workload)


def raw_scope(cov: Coverage) -> RawScope:
    targets: dict[PodId, Target] = dict(cov.counted)
    for t, _ in (*cov.down, *cov.left_out):
        targets[(t.namespace, t.pod)] = t
    # (Pods with new latency series only need those series added: see new_series_sums.)
    odd = {*cov.restarted, *cov.excluded, *cov.bare}
    workloads = frozenset(_key(targets[p]) for p in odd if p in targets)
    pods = frozenset(p for p, t in targets.items() if _key(t) in workloads)
    return RawScope(pods, workloads)


def _owned(metric: Mapping[str, str], scope: RawScope, labels: Labels) -> bool | None:
    """Whether a row belongs to ``scope`` (None: a row of no pod or workload)."""
    ns = metric.get(labels.namespace, "")
    pod = metric.get(labels.pod)
    if pod is not None:
        return (ns, pod) in scope.pods
    wl = workload_of(metric, labels)
    if wl is None:
        return None
    return (ns, *wl) in scope.workloads


def sentinel_of(rows: Iterable[Row]) -> float | None:
    """The window end a rule's evaluation says it covered (its sentinel row), if any."""
    for row in rows:
        if SENTINEL_LABEL in row["metric"]:
            return row_value(row)
    return None


def recorded_rows(rows: Iterable[Row], scope: RawScope, labels: Labels) -> list[Row]:
    """A rule's rows without its sentinel and the rows of ``scope``, as they came.

    This runs on the event loop for every row of the window (~185,000 at
    10,000 routes), inside its query time: rows are neither copied nor
    relabelled here (``fold`` drops the fingerprint label from its own copy),
    and without a raw scope (nearly always) nothing but the sentinel is looked
    for. Copying each row without its ``mw_rules`` label cost 0.36 s per
    185,000 rows.
    """
    if not scope:
        return [row for row in rows if SENTINEL_LABEL not in row["metric"]]
    return [
        row
        for row in rows
        if SENTINEL_LABEL not in (metric := row["metric"]) and not _owned(metric, scope, labels)
    ]


def scoped_rows(
    rows: Iterable[Row], scope: RawScope, labels: Labels, *, inside: bool = True
) -> list[Row]:
    """The rows of a pod-restricted raw query that are (``inside``) or are not in ``scope``.

    A pod matcher also reads same-named pods of other namespaces.
    """
    return [row for row in rows if bool(_owned(row["metric"], scope, labels)) == inside]
