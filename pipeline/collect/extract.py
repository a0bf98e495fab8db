"""From one proxy's parsed ``/metrics`` to its golden counters, per route.

The proxy exposes many families with version-dependent labels; the detector
wants a handful of numbers per route. This module is the one place that
knows which family feeds which golden number, so that supporting another
Linkerd release means changing this file and nothing downstream.

Output values are still *cumulative* (as the proxy reports them); turning
them into per-window deltas is :mod:`pipeline.collect.deltas`' job. Every
rule below is stateless per series (a series always feeds the same route, or
never), so a series that comes and goes can never make a route jump.

Legacy families (every 2.x release, 2019 output included; label order is
never relied on):

- ``response_total`` → the direction aggregate (route ``*``) inbound, or the
  authority's route outbound: success/failure by ``classification``, status
  classes, and mTLS versus plaintext by the ``tls`` label. ≤ 2.12 proxies
  print only the relevant classification labels (``grpc_status`` only on
  gRPC, ``error`` only on stream errors), 2.13+ print all three; both read the
  same. ``tls="true"`` is mTLS and anything else is plaintext, whatever the
  era's ``no_tls_reason`` (``no_tls_from_remote`` today;
  ``not_provided_by_remote``, ``no_peer_id_from_remote``,
  ``no_authority_in_http_request``, ``not_http`` on ≤ 2.9).
- ``response_latency_ms`` → latency buckets and sum of the same routes.
- ``route_response_total`` / ``route_response_latency_ms`` → ServiceProfile
  routes (``rt_route``; unmatched traffic is ``[DEFAULT]`` as in viz;
  outbound ``{dst} {rt_route}``).
- ``tcp_open_total`` / ``tcp_close_total{errno}`` → connection counts
  (``tcp_connection_duration_ms``, gone since proxy v2.135, is not used).
- Inbound TLS failures: ``inbound_tcp_errors_total{error="tls detection
  timeout"|"i/o"}`` (2.11+) and ``inbound_tcp_accept_errors_total{error=
  "tls_detect_timeout"|"io"}`` (proxy v2.149–v2.154) → ``tls_failures`` of
  inbound ``*``. Proxies before v2.149 have no such counter.
- ``outbound_{tcp,http}_errors_total{error="identity required"}`` (2.11+) →
  ``tls_failures`` of the outbound ``*`` route: these series name no
  destination, so the outbound aggregate is the only honest place for them.
- Certificates: ``identity_cert_expiration_timestamp_seconds`` (≤ 2.15) and
  ``control_identity_cert_expiration_timestamp_seconds`` (2.16+) → cert
  expiry; ``[control_]identity_cert_refreshes_total{result="error"}`` (2.15+)
  → ``cert_refresh_errors`` of inbound ``*`` (≤ 2.14 ``identity_cert_refresh_count``
  does not tell failures apart).
- Nothing reads the inbound ``authority`` label (removed in 2.18).

Policy route families (prometheus-client section, ``_total`` samples under a
``# TYPE x counter`` without it; seconds, ``le`` as floats):

- ``outbound_{http,grpc}_route_request_statuses_total`` and
  ``..._route_request_duration_seconds`` (2.16+) → outbound route
  ``{parent_name}.{parent_namespace}:{parent_port} {route}``, where
  ``{route}`` is the HTTPRoute/GRPCRoute name (``{route_namespace}/{name}``
  when the route lives in another namespace than its parent) or, for a route
  the policy controller synthesized (``route_kind="default"``), the name in
  brackets: ``[http]``, ``[grpc]``, ``[http-egress-allow]``. Example:
  ``api.payments:8080 [http]``. The peer is ``{parent_name}.{parent_namespace}:
  {parent_port}``. Series differing only in ``hostname`` are one route.
- ``..._route_backend_response_statuses_total`` and
  ``..._route_backend_response_duration_seconds`` → ``{route} -> {backend_name}.
  {backend_namespace}:{backend_port}``, but only for a backend that is not the
  parent itself: without a traffic split the backend numbers repeat the
  route's (per attempt rather than per request), so they are left out.
- Success (Linkerd viz ``stat-outbound`` rules): HTTP succeeds unless
  ``http_status`` is 5xx or ``error`` is set; gRPC succeeds only on
  ``grpc_status="OK"`` with no ``error``. Status classes as for the legacy
  families: ``2xx``.., ``grpc_<numeric code>`` (names are mapped to codes,
  so ``grpc_14`` means UNAVAILABLE in every era), ``error``.
- Latency keeps the family's own bounds (converted to ms,
  ``latency_bounds_ms`` on the GoldenSample: 50/500/1000/10000/+Inf for
  request durations, 25…10000/+Inf for backend ones); it is never squeezed
  into the 26 legacy buckets.
- ``inbound_{http,grpc}_statuses_total{status}`` and
  ``inbound_{http,grpc}_request_duration_seconds`` (2.20) → inbound route
  ``{parent_name}:{parent_port} {route}`` (the Server; same ``{route}`` rule),
  **only for explicit routes**. A synthesized default route
  (``route_kind="default"``) covers all of a Server's traffic, which
  ``response_total`` already reports as ``*`` with TLS labels, so mapping it
  would count every request twice under two names. ``inbound_*_requests_total``
  (2.19+) counts request starts, not outcomes (like ``request_total``, unused),
  and ``inbound_*_response_duration_seconds`` would be a second latency for
  the same route: both are ignored, as are retries, frame sizes, balancer
  and ``*_route_backend_requests_total`` (2.13–2.15).

Inbound series on excluded ports (the admin port 4191 by default: kubelet
probes and Prometheus scrapes; ``target_port``, ``target_addr`` or
``parent_port``) are left out, or every pod would look like it takes
plaintext traffic. 2019-era series carry no target at all and cannot be told
apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from pipeline.collect.exposition import Sample
from pipeline.keys import (
    ALL_ROUTES,
    backend_route,
    parent_authority,
    policy_route,
    workload_key,
)
from pipeline.schema import LINKERD_LATENCY_BOUNDS_MS

#: ``le`` label value → bucket index in LINKERD_LATENCY_BOUNDS_MS.
LE_INDEX: dict[str, int] = {
    ("+Inf" if math.isinf(b) else str(int(b))): i for i, b in enumerate(LINKERD_LATENCY_BOUNDS_MS)
}
for _b, _i in list(LE_INDEX.items()):
    if _b != "+Inf":
        LE_INDEX[f"{float(_b)}"] = _i  # "1.0" style, as newer formatters write it
N_BUCKETS = len(LINKERD_LATENCY_BOUNDS_MS)

TLS_FAILURE_ERRORS = frozenset(
    {"tls detection timeout", "i/o", "tls_detect_timeout", "io"}
)  # 2.11+ names, then the v2.149–v2.154 names
INBOUND_TLS_ERROR_FAMILIES = frozenset(
    {"inbound_tcp_errors_total", "inbound_tcp_accept_errors_total"}
)
OUTBOUND_ERROR_FAMILIES = frozenset({"outbound_tcp_errors_total", "outbound_http_errors_total"})
IDENTITY_REQUIRED = "identity required"
CERT_EXPIRY = frozenset(
    {
        "identity_cert_expiration_timestamp_seconds",
        "control_identity_cert_expiration_timestamp_seconds",
    }
)
CERT_REFRESHES = frozenset(
    {"identity_cert_refreshes_total", "control_identity_cert_refreshes_total"}
)

#: gRPC status names (prometheus-client families) → numeric codes (legacy families).
GRPC_CODES: dict[str, int] = {
    name: code
    for code, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}

RouteId = tuple[str, str]  # (direction, route)
#: One exposed series: its sample name and labels (``le`` aside); None for a
#: value added without one.
SeriesId = tuple[object, ...] | None


@dataclass(slots=True)
class RouteCounters:
    """Cumulative golden counters of one route as one proxy reports them.

    A route sums many series (per status, client, destination pod, ...).
    ``series``/``series_buckets`` hold the same numbers split by series so
    deltas can be taken series by series: a series that vanishes (its
    destination pod is gone) must not look like the route's counters falling.
    ``bounds`` are the buckets' upper bounds in ms when they are not the
    legacy ones (None).
    """

    peer: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    buckets: list[float] | None = None  # cumulative per ``le``
    series: dict[tuple[str, SeriesId], float] = field(default_factory=dict)
    series_buckets: dict[SeriesId, list[float]] = field(default_factory=dict)
    bounds: tuple[float, ...] | None = None

    def add(self, name: str, v: float, sid: SeriesId = None) -> None:
        self.values[name] = self.values.get(name, 0.0) + v
        key = (name, sid)
        self.series[key] = self.series.get(key, 0.0) + v

    def add_bucket(self, idx: int, v: float, sid: SeriesId = None) -> None:
        """One cumulative bucket of a legacy-bounds histogram."""
        if self.bounds is not None:
            return  # this route's latency comes from a family with other bounds
        if self.buckets is None:
            self.buckets = [0.0] * N_BUCKETS
        self.buckets[idx] += v
        sb = self.series_buckets.get(sid)
        if sb is None:
            sb = self.series_buckets[sid] = [0.0] * N_BUCKETS
        sb[idx] += v

    def add_histogram(self, sid: SeriesId, bounds: tuple[float, ...], cum: list[float]) -> bool:
        """A whole cumulative histogram with its own bounds; False if they do not fit."""
        if self.buckets is None:
            self.bounds = bounds
            self.buckets = [0.0] * len(bounds)
        elif self.bounds != bounds:
            return False
        for i, c in enumerate(cum):
            self.buckets[i] += c
        sb = self.series_buckets.get(sid)
        if sb is None:
            self.series_buckets[sid] = list(cum)
        else:
            for i, c in enumerate(cum):
                sb[i] += c
        return True

    def merge(self, other: RouteCounters) -> None:
        """Add another route's counters, keeping their series apart."""
        for (name, sid), v in other.series.items():
            self.add(name, v, sid)
        for sid, b in other.series_buckets.items():
            if other.bounds is None:
                for idx, v in enumerate(b):
                    self.add_bucket(idx, v, sid)
            else:
                self.add_histogram(sid, other.bounds, b)


@dataclass(slots=True)
class PodCounters:
    routes: dict[RouteId, RouteCounters] = field(default_factory=dict)
    cert_expiry: float | None = None
    start_time: float | None = None

    def route(self, direction: str, route: str, peer: str | None = None) -> RouteCounters:
        rc = self.routes.get((direction, route))
        if rc is None:
            rc = self.routes[(direction, route)] = RouteCounters(peer=peer)
        return rc


def status_class(labels: dict[str, str]) -> str:
    if labels.get("error"):
        return "error"
    grpc = labels.get("grpc_status")
    if grpc:
        return f"grpc_{grpc}"
    code = labels.get("status_code")
    if not code:
        return "error"  # stream failed before a response head
    return f"{code[0]}xx"


def _port_excluded(labels: dict[str, str], ports: frozenset[str]) -> bool:
    port = labels.get("target_port")
    if port is None:
        addr = labels.get("target_addr", "")
        port = addr.rpartition(":")[2]
    return port in ports


def outbound_route(labels: dict[str, str]) -> tuple[str, str | None]:
    """An outbound edge's route name and its peer workload key."""
    ns = labels.get("dst_namespace", "")
    peer = None
    for kind in ("deployment", "statefulset", "daemonset"):
        name = labels.get(f"dst_{kind}")
        if name and ns:
            peer = workload_key(ns, kind, name)
            break
    authority = labels.get("authority")
    if authority:
        return authority, peer
    svc = labels.get("dst_service")
    if svc and ns:
        return f"{svc}.{ns}", peer
    if peer:
        return peer, peer
    return labels.get("target_addr") or "unknown", peer


# -- policy route families (prometheus-client section) ------------------------------------


class _PolicyFamily(NamedTuple):
    inbound: bool
    grpc: bool
    part: str  # "statuses" | "bucket" | "sum"
    backend: bool
    base: str  # histogram name without the sample suffix


def _policy_families() -> dict[str, _PolicyFamily]:
    out: dict[str, _PolicyFamily] = {}
    for proto in ("http", "grpc"):
        grpc = proto == "grpc"
        for backend, stem in (
            (False, f"outbound_{proto}_route_request"),
            (True, f"outbound_{proto}_route_backend_response"),
        ):
            out[f"{stem}_statuses_total"] = _PolicyFamily(False, grpc, "statuses", backend, "")
            hist = f"{stem}_duration_seconds"
            for part in ("bucket", "sum"):
                out[f"{hist}_{part}"] = _PolicyFamily(False, grpc, part, backend, hist)
        out[f"inbound_{proto}_statuses_total"] = _PolicyFamily(True, grpc, "statuses", False, "")
        hist = f"inbound_{proto}_request_duration_seconds"
        for part in ("bucket", "sum"):
            out[f"{hist}_{part}"] = _PolicyFamily(True, grpc, part, False, hist)
    return out


POLICY_FAMILIES = _policy_families()


@dataclass(slots=True)
class _PendingHistogram:
    """One seconds histogram series, gathered over the pass (its bounds are its ``le``s)."""

    rid: RouteId
    peer: str | None
    cum: dict[float, float] = field(default_factory=dict)
    sum_s: float | None = None


_LE_MS: dict[str, float] = {}


def _le_ms(le: str) -> float | None:
    ms = _LE_MS.get(le)
    if ms is None:
        try:
            seconds = float(le)
        except ValueError:
            return None
        if math.isnan(seconds):
            return None
        ms = _LE_MS[le] = seconds if math.isinf(seconds) else round(seconds * 1000.0, 9)
    return ms


def _policy_route_of(
    fam: _PolicyFamily, labels: dict[str, str], ports: frozenset[str]
) -> tuple[RouteId, str | None] | None:
    """The golden route a policy family series feeds, or None if it feeds none."""
    get = labels.get
    if fam.inbound:
        port = get("parent_port", "")
        if get("route_kind") == "default" or port in ports:
            return None
        parent = parent_authority(get("parent_name", ""), "", port)
        return ("inbound", policy_route(parent, "", get("route_name", ""))), None
    parent_ns = get("parent_namespace", "")
    parent = parent_authority(get("parent_name", ""), parent_ns, get("parent_port", ""))
    route = policy_route(
        parent,
        get("route_kind", ""),
        get("route_name", ""),
        get("route_namespace", ""),
        parent_ns,
    )
    if not fam.backend:
        return ("outbound", route), parent
    backend = parent_authority(
        get("backend_name", ""), get("backend_namespace", ""), get("backend_port", "")
    )
    if backend == parent and get("backend_kind") == get("parent_kind"):
        return None  # no split: the route's own numbers again
    return ("outbound", backend_route(route, backend)), backend


def _policy_outcome(fam: _PolicyFamily, labels: dict[str, str]) -> tuple[bool, str]:
    """(success, status class) of one policy family status series."""
    error = labels.get("error", "")
    if fam.grpc:
        if fam.inbound:
            code = labels.get("status", "")
            ok = code == "0"
        else:
            name = labels.get("grpc_status") or "UNKNOWN"  # absent means UNKNOWN
            ok = name == "OK"
            code = str(GRPC_CODES.get(name, name))
        if error:
            return False, "error"
        return ok, f"grpc_{code}" if code else "error"
    status = labels.get("status" if fam.inbound else "http_status", "")
    if error:
        return False, "error"
    if not status:
        return True, "unknown"  # neither a status nor an error: not a failure by the rules
    return not status.startswith("5"), f"{status[0]}xx"


def _policy_sample(
    pod: PodCounters,
    pending: dict[tuple[object, ...], _PendingHistogram],
    fam: _PolicyFamily,
    name: str,
    labels: dict[str, str],
    v: float,
    ports: frozenset[str],
) -> None:
    found = _policy_route_of(fam, labels, ports)
    if found is None:
        return
    rid, peer = found
    if fam.part == "statuses":
        rc = pod.route(*rid, peer)
        ok, cls = _policy_outcome(fam, labels)
        sid = (name, *labels.items())
        rc.add("successes" if ok else "failures", v, sid)
        rc.add("cls:" + cls, v, sid)
        return
    if fam.part == "bucket":
        series = labels.copy()
        le = _le_ms(series.pop("le", ""))
        if le is None:
            return
        key = (fam.base, *series.items())
        ph = pending.get(key)
        if ph is None:
            ph = pending[key] = _PendingHistogram(rid, peer)
        ph.cum[le] = v
    else:
        key = (fam.base, *labels.items())
        ph = pending.get(key)
        if ph is None:
            ph = pending[key] = _PendingHistogram(rid, peer)
        ph.sum_s = v


def _fold_pending(pod: PodCounters, pending: dict[tuple[object, ...], _PendingHistogram]) -> None:
    """Attach the seconds histograms, now that each series' bounds are all known."""
    for key, ph in pending.items():
        if not ph.cum:
            continue  # a ``_sum`` without buckets
        bounds = tuple(sorted(ph.cum))
        if bounds[-1] != math.inf:
            continue  # truncated series: no total to count against
        rc = pod.route(*ph.rid, ph.peer)
        if rc.add_histogram(key, bounds, [ph.cum[b] for b in bounds]) and ph.sum_s is not None:
            rc.add("latency_sum_ms", ph.sum_s * 1000.0, ("sum", *key))


# -- the pass ------------------------------------------------------------------------------


def extract(samples: Iterable[Sample], exclude_ports: Iterable[int] = (4191,)) -> PodCounters:
    """Fold one proxy's samples into cumulative counters per route."""
    ports = frozenset(str(p) for p in exclude_ports)
    pod = PodCounters()
    pending: dict[tuple[object, ...], _PendingHistogram] = {}
    for s in samples:
        name = s.name
        labels = s.labels
        v = s.value
        if not math.isfinite(v):
            continue
        if name == "response_total" or name.startswith("response_latency_ms_"):
            direction = labels.get("direction")
            if direction == "inbound":
                if _port_excluded(labels, ports):
                    continue
                rc = pod.route("inbound", ALL_ROUTES)
            elif direction == "outbound":
                route, peer = outbound_route(labels)
                rc = pod.route("outbound", route, peer)
            else:
                continue
            if name == "response_total":
                _responses(rc, labels, v, (name, *labels.items()), with_tls=True)
            else:
                _latency(rc, name, len("response_latency_ms_"), labels, v)
        elif name == "route_response_total" or name.startswith("route_response_latency_ms_"):
            direction = labels.get("direction")
            if direction not in ("inbound", "outbound"):
                continue
            rt = labels.get("rt_route") or "[DEFAULT]"
            if direction == "outbound":
                dst = labels.get("dst", "unknown")
                rc = pod.route(direction, f"{dst} {rt}", dst)
            else:
                rc = pod.route(direction, rt)
            if name == "route_response_total":
                _responses(rc, labels, v, (name, *labels.items()), with_tls=False)
            else:
                _latency(rc, name, len("route_response_latency_ms_"), labels, v)
        elif name in ("tcp_open_total", "tcp_close_total"):
            direction = labels.get("direction")
            if direction == "inbound":
                if labels.get("peer") != "src" or _port_excluded(labels, ports):
                    continue
                rc = pod.route("inbound", ALL_ROUTES)
            elif direction == "outbound" and labels.get("peer") == "dst":
                route, peer = outbound_route(labels)
                rc = pod.route("outbound", route, peer)
            else:
                continue
            sid = (name, *labels.items())
            if name == "tcp_open_total":
                rc.add("tcp_open", v, sid)
            else:
                rc.add("tcp_close", v, sid)
                if labels.get("errno"):
                    rc.add("tcp_errors", v, sid)
        elif (fam := POLICY_FAMILIES.get(name)) is not None:
            _policy_sample(pod, pending, fam, name, labels, v, ports)
        elif name in INBOUND_TLS_ERROR_FAMILIES:
            if labels.get("error") in TLS_FAILURE_ERRORS and not _port_excluded(labels, ports):
                pod.route("inbound", ALL_ROUTES).add("tls_failures", v, (name, *labels.items()))
        elif name in OUTBOUND_ERROR_FAMILIES:
            if labels.get("error") == IDENTITY_REQUIRED:
                pod.route("outbound", ALL_ROUTES).add("tls_failures", v, (name, *labels.items()))
        elif name in CERT_EXPIRY:
            pod.cert_expiry = v if pod.cert_expiry is None else min(pod.cert_expiry, v)
        elif name in CERT_REFRESHES:
            if labels.get("result") == "error":
                pod.route("inbound", ALL_ROUTES).add(
                    "cert_refresh_errors", v, (name, *labels.items())
                )
        elif name == "process_start_time_seconds":
            pod.start_time = v
    _fold_pending(pod, pending)
    _fold_connection_only_routes(pod)
    return pod


def _fold_connection_only_routes(pod: PodCounters) -> None:
    """Attach outbound TCP counts that lack an authority to their HTTP route.

    Outbound ``tcp_*`` series often carry no ``authority`` while the HTTP
    families do, so the same edge would otherwise appear twice: once with
    requests and once with only connections. Such connection-only routes
    are merged into the route with the same peer workload, or dropped.
    """
    by_peer: dict[str, RouteCounters] = {}
    lonely: list[RouteId] = []
    for rid, rc in pod.routes.items():
        if rid[0] != "outbound" or rc.peer is None:
            continue
        if any(k.startswith("tcp_") for k in rc.values) and not (
            "successes" in rc.values or "failures" in rc.values
        ):
            lonely.append(rid)
        else:
            by_peer.setdefault(rc.peer, rc)
    for rid in lonely:
        rc = pod.routes.pop(rid)
        target = by_peer.get(rc.peer or "")
        if target is not None:
            target.merge(rc)


def _responses(
    rc: RouteCounters, labels: dict[str, str], v: float, sid: SeriesId, *, with_tls: bool
) -> None:
    if labels.get("classification") == "success":
        rc.add("successes", v, sid)
    else:
        rc.add("failures", v, sid)
    rc.add("cls:" + status_class(labels), v, sid)
    if with_tls:
        rc.add("mtls_requests" if labels.get("tls") == "true" else "plaintext_requests", v, sid)


def _latency(rc: RouteCounters, name: str, prefix: int, labels: dict[str, str], v: float) -> None:
    suffix = name[prefix:]
    if suffix == "bucket":
        idx = LE_INDEX.get(labels.get("le", ""))
        if idx is not None:
            series = labels.copy()  # all buckets of one series share its labels without ``le``
            del series["le"]
            rc.add_bucket(idx, v, (name, *series.items()))
    elif suffix == "sum":
        rc.add("latency_sum_ms", v, (name, *labels.items()))
