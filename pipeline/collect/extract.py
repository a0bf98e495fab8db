"""From one proxy's parsed ``/metrics`` to its golden counters, per route.

The proxy exposes many families with version-dependent labels; the detector
wants a handful of numbers per route. This module is the one place that
knows which family feeds which golden number, so that supporting another
Linkerd release means changing this file and nothing downstream.

Output values are still *cumulative* (as the proxy reports them); turning
them into per-window deltas is :mod:`pipeline.collect.deltas`' job.

Mapping (legacy families, every 2.x release):

- ``response_total`` → the direction aggregate (route ``*``) inbound, or the
  authority's route outbound: success/failure by ``classification``, status
  classes, and mTLS versus plaintext by the ``tls`` label.
- ``response_latency_ms`` → latency buckets and sum of the same routes.
- ``route_response_total`` / ``route_response_latency_ms`` → ServiceProfile
  routes (``rt_route``; unmatched traffic is ``[DEFAULT]`` as in viz).
- ``tcp_open_total`` / ``tcp_close_total{errno}`` → connection counts.
- ``inbound_tcp_errors_total{error="tls detection timeout"|"i/o"}`` (2.11+)
  and ``inbound_tcp_accept_errors_total`` (v2.149–v2.154) → TLS failures.
- ``[control_]identity_cert_expiration_timestamp_seconds`` → cert expiry.

Inbound series on excluded ports (the admin port 4191 by default: kubelet
probes and Prometheus scrapes) are left out, or every pod would look like
it takes plaintext traffic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.collect.exposition import Sample
from pipeline.keys import ALL_ROUTES, workload_key
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
CERT_EXPIRY = frozenset(
    {
        "identity_cert_expiration_timestamp_seconds",
        "control_identity_cert_expiration_timestamp_seconds",
    }
)

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
    """

    peer: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    buckets: list[float] | None = None  # cumulative per ``le``
    series: dict[tuple[str, SeriesId], float] = field(default_factory=dict)
    series_buckets: dict[SeriesId, list[float]] = field(default_factory=dict)

    def add(self, name: str, v: float, sid: SeriesId = None) -> None:
        self.values[name] = self.values.get(name, 0.0) + v
        key = (name, sid)
        self.series[key] = self.series.get(key, 0.0) + v

    def add_bucket(self, idx: int, v: float, sid: SeriesId = None) -> None:
        if self.buckets is None:
            self.buckets = [0.0] * N_BUCKETS
        self.buckets[idx] += v
        sb = self.series_buckets.get(sid)
        if sb is None:
            sb = self.series_buckets[sid] = [0.0] * N_BUCKETS
        sb[idx] += v

    def merge(self, other: RouteCounters) -> None:
        """Add another route's counters, keeping their series apart."""
        for (name, sid), v in other.series.items():
            self.add(name, v, sid)
        for sid, b in other.series_buckets.items():
            for idx, v in enumerate(b):
                self.add_bucket(idx, v, sid)


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


def _excluded(labels: dict[str, str], ports: frozenset[str]) -> bool:
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


def extract(samples: Iterable[Sample], exclude_ports: Iterable[int] = (4191,)) -> PodCounters:
    """Fold one proxy's samples into cumulative counters per route."""
    ports = frozenset(str(p) for p in exclude_ports)
    pod = PodCounters()
    for s in samples:
        name = s.name
        labels = s.labels
        v = s.value
        if not math.isfinite(v):
            continue
        if name == "response_total" or name.startswith("response_latency_ms_"):
            direction = labels.get("direction")
            if direction == "inbound":
                if _excluded(labels, ports):
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
                if labels.get("peer") != "src" or _excluded(labels, ports):
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
        elif name in ("inbound_tcp_errors_total", "inbound_tcp_accept_errors_total"):
            if labels.get("error") in TLS_FAILURE_ERRORS and not _excluded(labels, ports):
                pod.route("inbound", ALL_ROUTES).add("tls_failures", v, (name, *labels.items()))
        elif name in CERT_EXPIRY:
            pod.cert_expiry = v if pod.cert_expiry is None else min(pod.cert_expiry, v)
        elif name == "process_start_time_seconds":
            pod.start_time = v
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
