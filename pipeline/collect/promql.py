"""PromQL for one collector window: per-series deltas, summed where Prometheus lives.

Every family query evaluates, at the window end ``t1`` (``time=t1``), the
per-series increase since ``t0 = t1 - w`` with the scrape path's rules
(:mod:`pipeline.collect.deltas`), then sums it by the labels the golden
numbers need, the way Linkerd's own tooling does
(``sum(increase(response_total{direction="inbound"}[w])) by (namespace,
<kind>, classification, tls)``):

.. code-block:: text

    sum by (<pod>, <golden labels>) (
        ( ((x - x offset w) >= 0) unless on (<pod>) RESTARTED )   # a counter that went up
      or x                                                         # reset, new series, restart
    )

- a series present at both instants that went up counts ``x(t1) - x(t0)``;
- one that went down was reset (an idle series expired and came back): it
  counts ``x(t1)``;
- one absent at ``t0`` is new since: it counts ``x(t1)``;
- every series of a pod whose ``process_start_time_seconds`` moved forward,
  or that started after ``t0``, counts ``x(t1)``. Those pods are known from
  the window's info query beforehand and named in RESTARTED; the clause is
  left out when there are none, which is nearly always.

``x(t)`` is Prometheus' instant value: the last sample at or before ``t``.
Consecutive windows share their boundary instant, so every increment a
proxy reports lands in exactly one window, as with a direct scrape at
Prometheus' own scrape times.

That expression (:func:`delta`) reads every series three times and joins
twice; it is what an unaligned window gets. A window that ends on a multiple
of its length (the collector's always do) gets the same numbers cheaper:
``increase(x[w:w]) or x`` for the per-pod families (:func:`counter_delta`)
and a bare ``increase(x[w:w])`` plus a few named pods for the latency buckets
(:func:`increase_parts`). Measured on a 10,000-route mesh, Prometheus' CPU
for the per-pod families drops by about 40 %; the bucket families cost about
two reads of each series, and fetching fewer rows by joining against the
``+Inf`` bucket costs more than it saves (``docs/benchmarks.md``).

Queries are per family part over every workload at once (a couple of dozen
per window, never per workload). Small families share one query: each
metric is summed on its own and its rows named in ``mw_name`` after the sum
(arithmetic drops ``__name__``, and naming summed rows is cheap where
``label_replace`` on every series read is not). The latency bucket families,
by far the largest (26 series per histogram, about nine in ten of a proxy's
series), are summed per workload instead of per pod (the per-pod slice of a
sample needs no buckets) and only buckets that moved are returned (``> 0``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

#: Label that carries the family name through arithmetic in shared queries.
NAME_LABEL = "mw_name"
#: Label that tags the parts of the info query.
INFO_LABEL = "mw_info"

Level = Literal["pod", "workload"]

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RE_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def quote(value: str) -> str:
    """A PromQL double-quoted string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def regex_escape(value: str) -> str:
    """``value`` as a literal inside an RE2 regular expression."""
    return _RE_SPECIAL.sub(r"\\\1", value)


def check_label(name: str) -> str:
    if not _LABEL_NAME.match(name):
        raise ValueError(f"{name!r} is not a Prometheus label name")
    return name


def duration(seconds: float) -> str:
    """A PromQL duration in whole milliseconds (``10000ms``); PromQL has no ``1.5s``."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"duration must be positive, got {seconds}")
    return f"{ms}ms"


def port_exclusion(ports: Iterable[int], *, parent: bool = False) -> tuple[str, ...]:
    """Matchers leaving out inbound series on ``ports`` (the admin port: probes, scrapes).

    Proxies since 2.11 label the port (``target_port``); 2.10 only the
    address (``target_addr="0.0.0.0:4191"``); the policy families name the
    Server's ``parent_port``.
    """
    ps = sorted({int(p) for p in ports})
    if not ps:
        return ()
    alt = "|".join(str(p) for p in ps)
    if parent:
        return (f'parent_port!~"{alt}"',)
    return (f'target_port!~"{alt}"', f'target_addr!~".*:({alt})"')


@dataclass(frozen=True, slots=True)
class Part:
    """One selector of a family query and the labels its sum keeps."""

    metrics: tuple[str, ...]
    matchers: tuple[str, ...] = ()
    by: tuple[str, ...] = ()
    exclude_ports: Literal["target", "parent", None] = None


@dataclass(frozen=True, slots=True)
class Family:
    """One query of a window: parts joined by ``or``, summed per pod or per workload."""

    name: str
    parts: tuple[Part, ...]
    level: Level = "pod"
    positive_only: bool = False  # leave out zero rows (their absence means zero)

    def __post_init__(self) -> None:
        if self.shared and self.level == "workload":
            # Its sums would be joined by ``or``, which keeps one of two equal label sets.
            raise ValueError(f"family {self.name}: a many-metric family is summed per pod")

    @property
    def shared(self) -> bool:
        """Whether rows need ``mw_name`` to tell their family."""
        return len({m for p in self.parts for m in p.metrics}) > 1


# -- the families the golden numbers come from ---------------------------------------------

_CLASS = ("classification", "status_code", "grpc_status", "error")
#: Outbound route labels when the series names its authority (extract.outbound_route).
_BY_AUTHORITY = ("authority", "dst_namespace", "dst_deployment", "dst_statefulset", "dst_daemonset")
#: ... and when it does not: the fallbacks, down to the target address.
_BY_FALLBACK = (
    "dst_namespace",
    "dst_service",
    "dst_deployment",
    "dst_statefulset",
    "dst_daemonset",
    "target_addr",
)


def _legacy(metric: str, extra: tuple[str, ...], *, route_only_dst: bool = False) -> list[Part]:
    """Parts for ``response_*`` (route_only_dst=False) or ``route_response_*`` families."""
    if route_only_dst:
        return [
            Part((metric,), ('direction="inbound"',), ("direction", "rt_route", *extra)),
            Part((metric,), ('direction="outbound"',), ("direction", "dst", "rt_route", *extra)),
        ]
    return [
        Part((metric,), ('direction="inbound"',), ("direction", *extra), "target"),
        Part(
            (metric,),
            ('direction="outbound"', 'authority!=""'),
            ("direction", *extra, *_BY_AUTHORITY),
        ),
        Part(
            (metric,),
            ('direction="outbound"', 'authority=""'),
            ("direction", *extra, *_BY_FALLBACK),
        ),
    ]


def _policy_parts() -> list[Part]:
    parent = ("parent_name", "parent_namespace", "parent_port")
    route = ("route_kind", "route_name", "route_namespace")
    backend = ("parent_kind", "backend_kind", "backend_name", "backend_namespace", "backend_port")
    parts: list[Part] = []
    for proto, status in (("http", "http_status"), ("grpc", "grpc_status")):
        for stem, extra in (
            (f"outbound_{proto}_route_request", ()),
            (f"outbound_{proto}_route_backend_response", backend),
        ):
            keys = (*parent, *route, *extra)
            parts.append(Part((f"{stem}_statuses_total",), (), (*keys, status, "error")))
            parts.append(Part((f"{stem}_duration_seconds_bucket",), (), (*keys, "le")))
            parts.append(Part((f"{stem}_duration_seconds_sum",), (), keys))
        keys = ("parent_name", "parent_port", "route_kind", "route_name")
        stem = f"inbound_{proto}"
        inbound = ('route_kind!="default"',)
        parts.append(
            Part((f"{stem}_statuses_total",), inbound, (*keys, "status", "error"), "parent")
        )
        hist = f"{stem}_request_duration_seconds"
        parts.append(Part((f"{hist}_bucket",), inbound, (*keys, "le"), "parent"))
        parts.append(Part((f"{hist}_sum",), inbound, keys, "parent"))
    return parts


def golden_families() -> tuple[Family, ...]:
    """Every query of a window, mirroring what :func:`pipeline.collect.extract.extract` reads."""
    return (
        Family("response_total", tuple(_legacy("response_total", (*_CLASS, "tls")))),
        Family(
            "response_latency_ms_sum",
            tuple(_legacy("response_latency_ms_sum", ())),
            positive_only=True,
        ),
        Family(
            "response_latency_ms_bucket",
            tuple(_legacy("response_latency_ms_bucket", ("le",))),
            level="workload",
            positive_only=True,
        ),
        Family(
            "route_response_total",
            tuple(_legacy("route_response_total", _CLASS, route_only_dst=True)),
        ),
        Family(
            "route_response_latency_ms_sum",
            tuple(_legacy("route_response_latency_ms_sum", (), route_only_dst=True)),
            positive_only=True,
        ),
        Family(
            "route_response_latency_ms_bucket",
            tuple(_legacy("route_response_latency_ms_bucket", ("le",), route_only_dst=True)),
            level="workload",
            positive_only=True,
        ),
        Family(
            "tcp",
            (
                Part(
                    ("tcp_open_total", "tcp_close_total"),
                    ('direction="inbound"', 'peer="src"'),
                    ("direction", "peer", "errno"),
                    "target",
                ),
                Part(
                    ("tcp_open_total", "tcp_close_total"),
                    ('direction="outbound"', 'peer="dst"', 'authority!=""'),
                    ("direction", "peer", "errno", *_BY_AUTHORITY),
                ),
                Part(
                    ("tcp_open_total", "tcp_close_total"),
                    ('direction="outbound"', 'peer="dst"', 'authority=""'),
                    ("direction", "peer", "errno", *_BY_FALLBACK),
                ),
            ),
        ),
        Family(
            "errors",
            (
                Part(
                    ("inbound_tcp_errors_total",),
                    ('error=~"tls detection timeout|i/o"',),
                    ("error",),
                    "target",
                ),
                Part(
                    ("inbound_tcp_accept_errors_total",),
                    ('error=~"tls_detect_timeout|io"',),
                    ("error",),
                    "target",
                ),
                Part(
                    ("outbound_tcp_errors_total", "outbound_http_errors_total"),
                    ('error="identity required"',),
                    ("error",),
                ),
                Part(
                    ("identity_cert_refreshes_total", "control_identity_cert_refreshes_total"),
                    ('result="error"',),
                    ("result",),
                ),
            ),
        ),
        Family("policy", tuple(_policy_parts())),
    )


# -- rendering ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Labels:
    """Label names of the scrape job: the pod's identity and its workload labels."""

    namespace: str = "namespace"
    pod: str = "pod"
    #: kind → label, in priority order (a pod carries the first one that is set).
    workload: tuple[tuple[str, str], ...] = (
        ("deployment", "deployment"),
        ("statefulset", "statefulset"),
        ("daemonset", "daemonset"),
        ("job", "k8s_job"),
        ("replicaset", "replicaset"),
        ("replicationcontroller", "replicationcontroller"),
    )

    def __post_init__(self) -> None:
        for name in (self.namespace, self.pod, *(lbl for _, lbl in self.workload)):
            check_label(name)

    @property
    def pod_id(self) -> tuple[str, str]:
        return (self.namespace, self.pod)

    @property
    def workload_labels(self) -> tuple[str, ...]:
        return tuple(lbl for _, lbl in self.workload)


PodId = tuple[str, str]  # (namespace, pod)


@dataclass(frozen=True, slots=True)
class Window:
    """What every query of one window is evaluated with.

    The pod sets come from the window's info query (see
    :mod:`pipeline.collect.promwindow`); they are empty nearly always, and
    then cost nothing.
    """

    t1: float
    seconds: float
    selector: str  # matchers of the scrape job, e.g. job="linkerd-proxy" (may be empty)
    labels: Labels
    exclude_ports: tuple[int, ...] = (4191,)
    exclude: tuple[PodId, ...] = ()  # left out of the window (down, or no data at an edge)
    restarted: tuple[PodId, ...] = ()  # every series counts in full (restarted, or new)
    new_series: tuple[PodId, ...] = ()  # have latency series that did not exist at t0
    bare: tuple[PodId, ...] = ()  # carry no workload label: their own workload
    #: When set, every selector reads only these pods (same-named pods in other
    #: namespaces too: rows are told apart by their labels afterwards). The
    #: recorded mode asks the raw shape for the few workloads its rules cannot
    #: answer exactly (see :func:`recording_rules`).
    only: tuple[PodId, ...] = ()

    @property
    def t0(self) -> float:
        return self.t1 - self.seconds

    @property
    def offset(self) -> str:
        return duration(self.seconds)

    @property
    def aligned(self) -> bool:
        """Whether the window starts on a multiple of its length (subquery steps do)."""
        ms = round(self.seconds * 1000)
        return round(self.t1 * 1000) % ms == 0

    def select(self, metric: str | Sequence[str], matchers: Iterable[str] = ()) -> str:
        ms = [m for m in (self.selector, *matchers) if m]
        if isinstance(metric, str):
            return f"{metric}{{{', '.join(ms)}}}" if ms else metric
        names = "|".join(regex_escape(m) for m in metric)
        return "{" + ", ".join([f"__name__=~{quote(names)}", *ms]) + "}"

    def pods(self, pods: Iterable[PodId]) -> str | None:
        """A vector naming ``pods``, for ``unless on (<pod>)`` / ``and on (<pod>)``."""
        return pods_vector(self.labels, self.selector, pods)

    def pod_matcher(self, pods: Iterable[PodId]) -> str:
        """A matcher reading only these pods' series (and same-named pods elsewhere)."""
        names = sorted({p for _, p in pods})
        return f"{self.labels.pod}=~{quote('|'.join(regex_escape(n) for n in names))}"


def part_selector(w: Window, part: Part, extra: Iterable[str] = ()) -> str:
    matchers = list(part.matchers)
    if part.exclude_ports is not None:
        matchers += port_exclusion(w.exclude_ports, parent=part.exclude_ports == "parent")
    matchers += extra
    if w.only:
        matchers.append(w.pod_matcher(w.only))
    return w.select(part.metrics if len(part.metrics) > 1 else part.metrics[0], matchers)


def delta(w: Window, part: Part, *, extra: Iterable[str] = ()) -> str:
    """Per-series increase over the window by two instant values and joins (any window)."""
    sel = part_selector(w, part, extra)
    now, before = sel, f"{sel} offset {w.offset}"
    on = ", ".join(w.labels.pod_id)
    went_up = f"({now} - {before}) >= 0"
    if (restarted := w.pods(w.restarted)) is not None:
        went_up = f"({went_up}) unless on ({on}) ({restarted})"
    expr = f"({went_up}) or {now}"
    if (excluded := w.pods(w.exclude)) is not None:
        expr = f"({expr}) unless on ({on}) ({excluded})"
    return expr


def counter_delta(w: Window, part: Part) -> str:
    """The same per-series increase for an aligned window, reading each series twice, not thrice.

    ``increase(x[w:w])`` (see :func:`increase_parts`) covers every series
    present at both instants, resets included; ``or x`` adds the series that
    are new since ``t0`` at their full value. A series present only at ``t0``
    is in neither. The ``or`` matches on the label set alone (``increase``
    drops the name), so the part must select one metric.
    """
    sel = part_selector(w, part)
    on = ", ".join(w.labels.pod_id)
    expr = f"increase({sel}[{w.offset}:{w.offset}]) or {sel}"
    if (skip := w.pods((*w.restarted, *w.exclude))) is not None:
        expr = f"({expr}) unless on ({on}) ({skip})"
    if w.restarted:
        whole = part_selector(w, part, [w.pod_matcher(w.restarted)])
        expr = f"({expr}) or ({whole} and on ({on}) ({w.pods(w.restarted)}))"
    return expr


def increase_parts(w: Window, part: Part) -> list[str]:
    """The same per-series increase, cheaper, as up to three expressions to sum.

    ``increase(x[w:w])`` at a window end that is a multiple of ``w``: the
    subquery has exactly two points, ``x(t0)`` and ``x(t1)``, at the range's
    very edges, so ``increase`` extrapolates nothing (its factor is exactly
    1) and handles a reset as the scrape path does. It reads each series once
    and joins nothing, where :func:`delta` reads it three times and joins
    twice. Its blind spot is a series absent at ``t0`` (a single point):
    those are added from the pods that have any (``new_series``, known from
    the info query), and restarted pods are taken whole. Each expression is
    summed on its own, so the main one reads the same whatever the pods did
    (and can be sent before the info query has answered).
    """
    sel = part_selector(w, part)
    on = ", ".join(w.labels.pod_id)
    skip = w.pods((*w.restarted, *w.exclude))
    unless = f" unless on ({on}) ({skip})" if skip is not None else ""
    out = [f"increase({sel}[{w.offset}:{w.offset}]){unless}"]
    new = tuple(p for p in w.new_series if p not in set(w.restarted) | set(w.exclude))
    if new:
        only = part_selector(w, part, [w.pod_matcher(new)])
        out.append(f"({only} unless {only} offset {w.offset}){unless}")
    if w.restarted:
        whole = part_selector(w, part, [w.pod_matcher(w.restarted)])
        out.append(f"{whole} and on ({on}) ({w.pods(w.restarted)})")
    return out


def sum_labels(w: Window, part: Part, per_pod: bool) -> str:
    keep = list(w.labels.pod_id) if per_pod else [w.labels.namespace, *w.labels.workload_labels]
    keep += [lbl for lbl in part.by if lbl not in keep]
    return ", ".join(keep)


def _metric_sums(w: Window, family: Family, part: Part) -> list[str]:
    """The sums of one single-metric part (each a query of its own unless the family is shared)."""
    if family.level == "pod":
        shape = counter_delta(w, part) if w.aligned else delta(w, part)
        return [f"sum by ({sum_labels(w, part, True)}) ({shape})"]
    by = sum_labels(w, part, False)
    if w.aligned:
        out = [f"sum by ({by}) ({e})" for e in increase_parts(w, part)]
    else:
        out = [f"sum by ({by}) ({delta(w, part)})"]
    if w.bare:
        # Pods without any workload label would be merged under their namespace
        # alone (those rows are dropped): sum theirs per pod.
        bare = [*(f'{lbl}=""' for lbl in w.labels.workload_labels), w.pod_matcher(w.bare)]
        out.append(f"sum by ({sum_labels(w, part, True)}) ({delta(w, part, extra=bare)})")
    return out


def _named(expr: str, metric: str) -> str:
    """Tag a sum's rows with their family name (cheap: applied to summed rows only)."""
    return f'label_replace({expr}, "{NAME_LABEL}", {quote(metric)}, "", "")'


def _part_queries(w: Window, family: Family, part: Part) -> list[str]:
    out: list[str] = []
    for metric in part.metrics:
        one = Part((metric,), part.matchers, part.by, part.exclude_ports)
        sums = _metric_sums(w, family, one)
        out += [_named(s, metric) for s in sums] if family.shared else sums
    return out


def family_queries(w: Window, family: Family) -> list[str]:
    """The PromQL of one family for one window (evaluate each at ``time=w.t1``).

    A family of one metric (the large legacy ones) is one query per part and
    per sum: Prometheus evaluates a query on one core, and they are all sent at
    once so that it can use several. A many-metric family is one query.
    """
    sums = [[q] for part in family.parts for q in _part_queries(w, family, part)]
    if family.shared:
        sums = [[q for group in sums for q in group]]
    out = []
    for group in sums:
        expr = group[0] if len(group) == 1 else " or ".join(f"({q})" for q in group)
        if family.positive_only:
            expr = f"({expr}) > 0" if len(group) > 1 else f"{expr} > 0"
        out.append(expr)
    return out


CERT_GAUGES = (
    "identity_cert_expiration_timestamp_seconds",
    "control_identity_cert_expiration_timestamp_seconds",
)
#: The ``_sum`` of every histogram summed with :func:`increase_parts`: a histogram's
#: series appear together, so a new ``_sum`` series means new bucket series.
HISTOGRAM_SUMS = ("response_latency_ms_sum", "route_response_latency_ms_sum")


def info_query(w: Window) -> str:
    """Per pod: ``up``, its sample time and the start time at both ends; cert expiry.

    ``up`` keeps every target label (the workload labels come from it); the
    other parts are reduced to the pod's identity. Parts are told apart by
    ``mw_info`` since ``or`` ignores ``__name__``.
    """
    up = w.select("up")
    before = f"{up} offset {w.offset}"
    on = ", ".join(w.labels.pod_id)
    start = w.select("process_start_time_seconds")
    parts = {
        "up": up,
        "up_at": f"timestamp({up})",
        "up0": before,
        "up0_at": f"timestamp({before})",
        "start": f"max by ({on}) ({start})",
        "start0": f"max by ({on}) ({start} offset {w.offset})",
        "cert": f"min by ({on}) ({w.select(CERT_GAUGES)})",
    }
    return " or ".join(
        f'label_replace({expr}, "{INFO_LABEL}", "{tag}", "", "")' for tag, expr in parts.items()
    )


def new_series_query(w: Window) -> str:
    """Pods with latency histograms that did not exist at ``t0`` (sent beside the info query)."""
    on = ", ".join(w.labels.pod_id)
    hist = w.select(HISTOGRAM_SUMS)
    expr = f"count by ({on}) ({hist} unless {hist} offset {w.offset})"
    return f'label_replace({expr}, "{INFO_LABEL}", "new_series", "", "")'


def pods_vector(labels: Labels, selector: str, pods: Iterable[PodId]) -> str | None:
    """A vector naming ``pods`` ((namespace, pod) pairs), for ``unless on (<pod>)``."""
    by_ns: dict[str, list[str]] = {}
    for ns, pod in sorted(set(pods)):
        by_ns.setdefault(ns, []).append(pod)
    if not by_ns:
        return None
    vectors = []
    for ns, names in by_ns.items():
        alt = "|".join(regex_escape(p) for p in names)
        ms = [m for m in (selector,) if m]
        ms += [f"{labels.namespace}={quote(ns)}", f"{labels.pod}=~{quote(alt)}"]
        vectors.append(f"up{{{', '.join(ms)}}}")
    return " or ".join(vectors)


# -- recording rules (prometheus.recorded) ------------------------------------------------

#: Name prefix of every recorded series; the rest is ``<family>:<query index>``.
RECORD_PREFIX = "meshwatch:window:"
#: Label naming the rule set (a fingerprint of the rules), on every recorded row.
RULES_LABEL = "mw_rules"
#: Label of the one row every rule adds to its output: its value is the window end covered.
SENTINEL_LABEL = "mw_sentinel"


@dataclass(frozen=True, slots=True)
class RecordedRule:
    """One recording rule: the window query of ``family`` it records, evaluated by Prometheus."""

    record: str
    group: str
    family: Family
    raw: str  # the raw family query it records (aligned window, no pod sets)
    expr: str  # what Prometheus evaluates


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The recording rules for one window length, query settle delay and scrape job.

    Why rules, and how a rule stays exact: the raw window query (:func:`family_queries`)
    must run at an aligned window end ``t1`` and reads every series twice; a rule
    is evaluated at its group's own instants ``te`` (an offset fixed by a hash of
    the group's name), so each rule wraps the raw query in a one-point subquery
    whose step is the window: ``last_over_time((Q)[w:w] offset d)`` evaluates
    ``Q`` at exactly one aligned instant, ``g = floor((te - d) / w) * w`` (the
    last multiple of ``w`` at or before ``te - d``). ``Q`` at ``g`` is the raw
    window ending at ``g``, number for number. ``d`` is the collector's
    ``query_delay_seconds``: scrapes started before ``g`` have landed by
    ``te >= g + d``. With the group interval equal to ``w`` every window end is
    covered by exactly one evaluation, made ``d`` to ``d + w`` seconds after it.

    Each rule also writes one *sentinel* row (``mw_sentinel="1"``) whose value is
    ``g``: the collector reads a rule's rows only at the evaluation whose sentinel
    names the window, so a missed or failed evaluation (no sentinel) is seen and
    never mistaken for zeros. Every row carries ``mw_rules=<fingerprint>``: rules
    written for another window, delay, selector or label set are not used.
    """

    window_seconds: float
    settle_seconds: float
    fingerprint: str
    rules: tuple[RecordedRule, ...]

    def to_yaml_obj(self) -> dict[str, object]:
        """The ``groups:`` document Prometheus loads (one group per rule: they run in parallel)."""
        interval = duration(self.window_seconds)
        return {
            "groups": [
                {
                    "name": r.group,
                    "interval": interval,
                    "rules": [{"record": r.record, "expr": r.expr}],
                }
                for r in self.rules
            ]
        }

    def sentinel_query(self, span_seconds: float) -> str:
        """Every rule's sentinel samples of the last ``span_seconds`` (a range: with timestamps)."""
        sel = (
            f"{{__name__=~{quote(regex_escape(RECORD_PREFIX) + '.+')}, "
            f'{SENTINEL_LABEL}="1", {RULES_LABEL}={quote(self.fingerprint)}}}'
        )
        return f"{sel}[{duration(span_seconds)}]"

    def read_query(self, rule: RecordedRule) -> str:
        """The rows one evaluation wrote, asked at that evaluation's instant.

        A 1 ms range keeps only samples stamped exactly then (evaluations are a
        window apart; closed or left-open ranges alike), so series written by an
        earlier evaluation, or before a Prometheus restart, are never read.
        """
        return f"last_over_time({rule.record}{{{RULES_LABEL}={quote(self.fingerprint)}}}[1ms])"


def _fingerprint(parts: Iterable[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def recording_rules(
    template: Window, families: Sequence[Family], *, settle_seconds: float
) -> RuleSet:
    """The rule set for ``template``'s window length, selector, labels and ports.

    ``template``'s pod sets and end time are ignored: a rule records the raw
    query of an aligned window with no pods named (the collector asks the raw
    shape itself for the workloads that have such pods).
    """
    w = replace(
        template,
        t1=template.seconds * 1000,
        exclude=(),
        restarted=(),
        new_series=(),
        bare=(),
        only=(),
    )
    assert w.aligned
    step, delay = duration(w.seconds), duration(settle_seconds) if settle_seconds > 0 else "0s"
    raws = [(fam, i, q) for fam in families for i, q in enumerate(family_queries(w, fam))]
    fp = _fingerprint([step, delay, *(q for _, _, q in raws)])
    end = f"floor(vector(time() - {settle_seconds:g}) / {w.seconds:g}) * {w.seconds:g}"
    sentinel = f'label_replace({end}, "{SENTINEL_LABEL}", "1", "", "")'
    rules = []
    for fam, i, q in raws:
        record = f"{RECORD_PREFIX}{fam.name}:{i}"
        at_window = f"last_over_time(({q})[{step}:{step}] offset {delay})"
        expr = f'label_replace({at_window} or {sentinel}, "{RULES_LABEL}", {quote(fp)}, "", "")'
        group = f"meshwatch-window-{fam.name}-{i}"
        rules.append(RecordedRule(record, group, fam, q, expr))
    return RuleSet(w.seconds, settle_seconds, fp, tuple(rules))


def new_histograms_query(w: Window) -> str:
    """Every latency histogram ``_sum`` series new since ``t0``, with its labels.

    The recorded mode's form of :func:`new_series_query`: the pods it names
    are the same, and the label values let :func:`new_series_sums` read only
    the bucket series that can be new, not all of those pods' buckets.
    """
    hist = w.select(HISTOGRAM_SUMS)
    return (
        f'label_replace({hist} unless {hist} offset {w.offset}, "{INFO_LABEL}", "new_hist", "", "")'
    )


#: Up to this many new histograms of a family are named one by one (their labels exactly);
#: beyond, one selector names the values of each label (a superset of their buckets).
EXACT_HISTOGRAMS = 100


_EQUAL = re.compile(r'^([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\]*)"$')


def _exact(h: Mapping[str, str]) -> list[str]:
    return [f"{k}={quote(v)}" for k, v in sorted(h.items()) if k not in ("__name__", INFO_LABEL)]


def new_series_sums(
    w: Window, family: Family, histograms: Sequence[Mapping[str, str]] = ()
) -> list[str]:
    """For a per-workload family: only the series new since ``t0`` of ``w.new_series`` pods.

    What :func:`increase_parts` adds to the bare ``increase`` for those pods; the
    recorded mode adds it to a rule's rows (which hold that ``increase``)
    instead of asking the pods' whole workload raw. With ``histograms`` (the
    new ``_sum`` series' labels, :func:`new_histograms_query`) only their
    buckets are read: named one by one by all their labels, or past
    ``EXACT_HISTOGRAMS`` by the values of the labels the part keeps (a
    superset: values of different histograms combine). Either way
    ``unless ... offset`` keeps exactly the series new since ``t0``.
    """
    if family.level != "workload" or not w.new_series:
        return []
    out = []
    bare = replace(w, restarted=(), exclude=(), only=())
    pods = {(ns, pod) for ns, pod in w.new_series}
    for part in family.parts:
        for metric in part.metrics:
            one = Part((metric,), part.matchers, part.by, part.exclude_ports)
            sels = [part_selector(bare, one, [w.pod_matcher(w.new_series)])]
            if histograms:
                stem = metric.removesuffix("_bucket") + "_sum"
                equal = [m.groups() for m in map(_EQUAL.match, part.matchers) if m]
                mine = [
                    h
                    for h in histograms
                    if h.get("__name__") == stem
                    and (h.get(w.labels.namespace, ""), h.get(w.labels.pod, "")) in pods
                    and all(h.get(lbl, "") == v for lbl, v in equal)
                ]
                if not mine:
                    continue
                if len(mine) <= EXACT_HISTOGRAMS:
                    # Each new histogram's own buckets, by all of its labels.
                    sels = [part_selector(bare, one, _exact(h)) for h in mine]
                else:
                    extra = [w.pod_matcher(w.new_series)]
                    for lbl in part.by:
                        if lbl == "le":
                            continue
                        values = sorted({h.get(lbl, "") for h in mine})
                        alt = "|".join(regex_escape(v) for v in values)
                        extra.append(f"{lbl}=~{quote(alt)}")
                    sels = [part_selector(bare, one, extra)]
            now = " or ".join(sels)
            before = " or ".join(f"{x} offset {w.offset}" for x in sels)
            new = f"({now}) unless ({before})" if len(sels) > 1 else f"{now} unless {before}"
            q = f"sum by ({sum_labels(w, one, False)}) ({new})"
            out.append(f"{q} > 0" if family.positive_only else q)
    return out
