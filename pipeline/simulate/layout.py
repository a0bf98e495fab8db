"""Wiring: which simulated flows feed which proxy series, fixed per pod set.

The traffic model works on flat numpy arrays so that a tick over 1,000 pods
is a handful of vector operations. This module decides the meaning of every
index once: a *cell* is one stream of requests (inbound to a pod for one
route from one client, outbound from a pod to one target pod for one route,
or the kubelet's probes), a *row* is one response status of a cell, and each
row adds into a fixed set of counter, histogram and TCP slots. The layout is
rebuilt only when pods appear, disappear or get new names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import render as rd
from .families import PodFamilies
from .labels import (
    ADMIN_PORT,
    LOOPBACK,
    PLAINTEXT_IN,
    Destination,
    Endpoint,
    ProxyLabels,
    identity,
    tls_client,
)
from .pods import Pod
from .topology import MeshSpec

IntArr = npt.NDArray[np.int64]
FloatArr = npt.NDArray[np.float64]
BoolArr = npt.NDArray[np.bool_]

STATUS_CODES = ("200", "404", "500", "502")
S200, S404, S500, S502 = range(4)
CELL_IN, CELL_OUT, CELL_PROBE = range(3)

# TCP series classes; their connection dynamics live in traffic.TCP_CLASSES.
TCP_IN_MESHED, TCP_IN_PLAIN, TCP_IN_PROBE, TCP_IN_APP, TCP_OUT_SRC, TCP_OUT_DST = range(6)

PROBE_RPS = 0.2  # liveness + readiness every 10 s
OUTBOUND_LATENCY_FACTOR = 1.08  # the caller sees the callee's latency plus two proxy hops
INGRESS = ("ingress-nginx", "ingress-nginx")  # service account, namespace of the meshed ingress

N_CNT, N_HIST, N_TCP = 6, 3, 2  # slots per row, -1 padded
SCALARS = (
    "expiry",
    "refresh_ts",
    "refresh_ok",
    "refresh_err",
    "start",
    "uptime",
    "cpu",
    "vmem",
    "rss",
    "fds",
    "maxfds",
    "threads",
    "err_tls",
    "err_io",
)


@dataclass
class WorkloadInfo:
    index: int
    key: str
    namespace: str
    name: str
    kind: str
    authority: str
    service_ip: str
    port: int
    meshed: bool
    identity: str | None


@dataclass
class Layout:
    """Everything index-shaped the traffic model and the renderer share."""

    spec: MeshSpec
    workloads: list[WorkloadInfo]
    pods: list[Pod]
    #: ``pods[i].uid`` as it was when the layout was built: the key that carries
    #: pod state across a rebuild, safe even if a Pod object changes afterwards
    pod_uids: list[int]
    edges: list[tuple[int, int, float, str]]  # caller wl, target wl, share, authority
    routes: list[tuple[int, int]]  # global route index -> (wl, index within wl)
    prof_mu: FloatArr
    prof_sigma: FloatArr
    # cells
    cell_kind: IntArr
    cell_src: IntArr
    cell_coef: FloatArr
    cell_pod: IntArr
    cell_owner: IntArr
    cell_route: IntArr
    cell_serve_wl: IntArr
    cell_serve_pod: IntArr
    cell_edge: IntArr
    cell_twin: BoolArr
    cell_partner: IntArr  # for a plaintext twin, the mTLS cell it shadows; else -1
    cell_meshed_src: BoolArr
    cell_base_mult: FloatArr
    cell_err: FloatArr
    cell_c4xx: FloatArr
    cell_prof: IntArr
    # rows
    row_cell: IntArr
    row_status: IntArr
    row_cnt: IntArr
    row_hist: IntArr
    row_tcp: IntArr
    # tcp series
    tcp_class: IntArr
    tcp_pod: IntArr
    tcp_slots: IntArr  # (T, 6): open_total, open_conns, read, write, close_ok, close_reset
    # per-pod scalar slots, one array per name in SCALARS
    scalars: dict[str, IntArr]
    n_counters: int
    n_hist: int
    cnt_keys: list[tuple[Any, ...]]
    hist_keys: list[tuple[Any, ...]]
    tcp_keys: list[tuple[Any, ...]]
    cnt_pod: IntArr
    hist_pod: IntArr
    templates: dict[int, rd.PodTemplate] = field(default_factory=dict)

    @property
    def n_values(self) -> int:
        return self.n_counters + self.n_hist * (rd.N_BUCKETS + 1)

    def pod_index(self, uid: int) -> int:
        try:
            return self.pod_uids.index(uid)
        except ValueError:
            raise KeyError(uid) from None


def _fake_sha(text: str) -> str:
    h = 0
    for ch in text:
        h = (h * 131 + ord(ch)) % (1 << 36)
    return f"{h:09x}"


class _Builder:
    def __init__(self, spec: MeshSpec, pods_by_wl: Sequence[Sequence[Pod]]) -> None:
        self.spec = spec
        self.pods_by_wl = pods_by_wl
        self.pods: list[Pod] = [p for pods in pods_by_wl for p in pods]
        self.pod_ix = {p.uid: i for i, p in enumerate(self.pods)}
        td = spec.cluster_domain
        self.wls = [
            WorkloadInfo(
                index=i,
                key=w.key,
                namespace=w.namespace,
                name=w.name,
                kind=w.kind,
                authority=spec.authority(w),
                service_ip=f"10.96.{i // 250}.{i % 250 + 1}",
                port=w.port,
                meshed=w.meshed,
                identity=identity(w.sa, w.namespace, td) if w.meshed else None,
            )
            for i, w in enumerate(spec.workloads)
        ]
        wl_index = {(w.namespace, w.name): i for i, w in enumerate(spec.workloads)}
        self.edges = [
            (wl_index[(c.namespace, c.name)], wl_index[(t.namespace, t.name)], call.share, auth)
            for c, call, t, auth in spec.edges()
        ]
        self.routes: list[tuple[int, int]] = []
        self.route_base: list[int] = []
        mu: list[float] = []
        sigma: list[float] = []
        for wi, w in enumerate(spec.workloads):
            self.route_base.append(len(self.routes))
            for j, r in enumerate(w.routes):
                self.routes.append((wi, j))
                mu.append(float(np.log(r.base_latency_ms)))
                sigma.append(r.latency_sigma)
        n = len(self.routes)
        # Profiles: inbound per route, outbound per route, probes, failed connects.
        self.prof_mu = np.array(
            [*mu, *(m + np.log(OUTBOUND_LATENCY_FACTOR) for m in mu), np.log(0.4), np.log(4.0)]
        )
        self.prof_sigma = np.array([*sigma, *sigma, 0.5, 0.6])
        self.prof_out0, self.prof_probe, self.prof_connfail = n, 2 * n, 2 * n + 1

        self.cells: dict[str, list[Any]] = {
            k: []
            for k in [
                "kind",
                "src",
                "coef",
                "pod",
                "owner",
                "route",
                "serve_wl",
                "serve_pod",
                "edge",
                "twin",
                "partner",
                "meshed_src",
                "base_mult",
                "err",
                "c4xx",
                "prof",
            ]
        }
        self.rows: dict[str, list[Any]] = {k: [] for k in ("cell", "status", "cnt", "hist", "tcp")}
        self.cnt_keys: list[tuple[Any, ...]] = [("one",), ("scratch",)]
        self.cnt_pod: list[int] = [-1, -1]
        self.cnt_ix: dict[tuple[Any, ...], int] = {}
        self.hist_keys: list[tuple[Any, ...]] = []
        self.hist_pod: list[int] = []
        self.hist_ix: dict[tuple[Any, ...], int] = {}
        self.tcp_keys: list[tuple[Any, ...]] = []
        self.tcp_ix: dict[tuple[Any, ...], int] = {}
        self.tcp_class: list[int] = []
        self.tcp_pod: list[int] = []
        self.tcp_slots: list[list[int]] = []
        self.scalars = {k: [rd.SCRATCH] * len(self.pods) for k in SCALARS}
        self.templates: dict[int, rd.PodTemplate] = {}

    # -- slot allocation -----------------------------------------------------------------

    def _cnt(self, key: tuple[Any, ...], pod: int) -> tuple[int, bool]:
        ix = self.cnt_ix.get(key)
        if ix is not None:
            return ix, False
        ix = len(self.cnt_keys)
        self.cnt_ix[key] = ix
        self.cnt_keys.append(key)
        self.cnt_pod.append(pod)
        return ix, True

    def _hist(self, key: tuple[Any, ...], pod: int) -> tuple[int, bool]:
        ix = self.hist_ix.get(key)
        if ix is not None:
            return ix, False
        ix = len(self.hist_keys)
        self.hist_ix[key] = ix
        self.hist_keys.append(key)
        self.hist_pod.append(pod)
        return ix, True

    def _tcp(self, key: tuple[Any, ...], pod: int, cls: int, labels: str, fams: PodFamilies) -> int:
        ix = self.tcp_ix.get(key)
        if ix is not None:
            return ix
        ix = len(self.tcp_keys)
        self.tcp_ix[key] = ix
        self.tcp_keys.append(key)
        self.tcp_class.append(cls)
        self.tcp_pod.append(pod)
        slots = [self._cnt((*key, m), pod)[0] for m in range(6)]
        self.tcp_slots.append(slots)
        opened = slots[0]
        fams.add("tcp_open_total", rd.sample("tcp_open_total", labels, opened))
        fams.add(
            "tcp_open_connections", rd.sample("tcp_open_connections", labels, slots[1], act=opened)
        )
        fams.add("tcp_read", rd.sample("tcp_read_bytes_total", labels, slots[2], act=opened))
        fams.add("tcp_write", rd.sample("tcp_write_bytes_total", labels, slots[3], act=opened))
        fams.add("tcp_close", rd.sample("tcp_close_total", labels + ',errno=""', slots[4]))
        fams.add(
            "tcp_close", rd.sample("tcp_close_total", labels + ',errno="ECONNRESET"', slots[5])
        )
        return ix

    def _add_cell(self, **kw: Any) -> int:
        ix = len(self.cells["kind"])
        for k, v in kw.items():
            self.cells[k].append(v)
        return ix

    def _add_row(
        self, cell: int, status: int, cnt: list[int], hist: list[int], tcp: list[int]
    ) -> None:
        self.rows["cell"].append(cell)
        self.rows["status"].append(status)
        self.rows["cnt"].append(cnt + [-1] * (N_CNT - len(cnt)))
        self.rows["hist"].append(hist + [-1] * (N_HIST - len(hist)))
        self.rows["tcp"].append(tcp + [-1] * (N_TCP - len(tcp)))

    # -- per pod ---------------------------------------------------------------------------

    def build(self) -> Layout:
        for pi, pod in enumerate(self.pods):
            if pod.meshed:
                self._pod(pi, pod)
        c, r = self.cells, self.rows
        n_counters, n_hist = len(self.cnt_keys), len(self.hist_keys)
        for t in self.templates.values():
            t.resolve(n_counters, n_hist)
        i64 = np.int64
        return Layout(
            spec=self.spec,
            workloads=self.wls,
            pods=self.pods,
            pod_uids=[p.uid for p in self.pods],
            edges=self.edges,
            routes=self.routes,
            prof_mu=self.prof_mu,
            prof_sigma=self.prof_sigma,
            cell_kind=np.array(c["kind"], dtype=i64),
            cell_src=np.array(c["src"], dtype=i64),
            cell_coef=np.array(c["coef"], dtype=np.float64),
            cell_pod=np.array(c["pod"], dtype=i64),
            cell_owner=np.array(c["owner"], dtype=i64),
            cell_route=np.array(c["route"], dtype=i64),
            cell_serve_wl=np.array(c["serve_wl"], dtype=i64),
            cell_serve_pod=np.array(c["serve_pod"], dtype=i64),
            cell_edge=np.array(c["edge"], dtype=i64),
            cell_twin=np.array(c["twin"], dtype=bool),
            cell_partner=np.array(c["partner"], dtype=i64),
            cell_meshed_src=np.array(c["meshed_src"], dtype=bool),
            cell_base_mult=np.array(c["base_mult"], dtype=np.float64),
            cell_err=np.array(c["err"], dtype=np.float64),
            cell_c4xx=np.array(c["c4xx"], dtype=np.float64),
            cell_prof=np.array(c["prof"], dtype=i64),
            row_cell=np.array(r["cell"], dtype=i64),
            row_status=np.array(r["status"], dtype=i64),
            row_cnt=np.array(r["cnt"], dtype=i64).reshape(-1, N_CNT),
            row_hist=np.array(r["hist"], dtype=i64).reshape(-1, N_HIST),
            row_tcp=np.array(r["tcp"], dtype=i64).reshape(-1, N_TCP),
            tcp_class=np.array(self.tcp_class, dtype=i64),
            tcp_pod=np.array(self.tcp_pod, dtype=i64),
            tcp_slots=np.array(self.tcp_slots, dtype=i64).reshape(-1, 6),
            scalars={k: np.array(v, dtype=i64) for k, v in self.scalars.items()},
            n_counters=n_counters,
            n_hist=n_hist,
            cnt_keys=self.cnt_keys,
            hist_keys=self.hist_keys,
            tcp_keys=self.tcp_keys,
            cnt_pod=np.array(self.cnt_pod, dtype=i64),
            hist_pod=np.array(self.hist_pod, dtype=i64),
            templates=self.templates,
        )

    def _pod(self, pi: int, pod: Pod) -> None:
        spec, wl = self.spec, self.wls[pod.wl]
        lb = ProxyLabels(pod.version)
        fams = PodFamilies(lb)
        uid = pod.uid
        app = Endpoint(f"{pod.ip}:{pod.port}", pod.ip, pod.port)
        admin = Endpoint(f"0.0.0.0:{ADMIN_PORT}", "0.0.0.0", ADMIN_PORT)

        def inbound_slots(
            ep: Endpoint, tls: str, authority: str, status: int
        ) -> tuple[list[int], list[int]]:
            code = STATUS_CODES[status]
            base = lb.inbound(ep, tls, authority)
            req, new = self._cnt((uid, "req", ep.port, tls), pi)
            if new:
                fams.add("request_total", rd.sample("request_total", base, req))
                fams.add(
                    "authz", rd.sample("inbound_http_authz_allow_total", lb.authz(ep, tls), req)
                )
            rsp, new = self._cnt((uid, "rsp", ep.port, tls, status), pi)
            if new:
                fams.add(
                    "response_total", rd.sample("response_total", f"{base},{lb.status(code)}", rsp)
                )
            lat, new = self._hist((uid, "lat", ep.port, tls, status), pi)
            if new:
                fams.add(
                    "latency",
                    rd.legacy_histogram("response_latency_ms", f'{base},status_code="{code}"', lat),
                )
            return [req, rsp], [lat]

        def inbound_route_slots(ep: Endpoint, status: int) -> tuple[list[int], list[int]]:
            """2.19+: the inbound router's own families (Server and route labels, no TLS)."""
            cnts: list[int] = []
            hists: list[int] = []
            labels = lb.om_inbound_route(ep.port)
            if fams.has("om_in_requests"):
                req, new = self._cnt((uid, "in_rreq", ep.port), pi)
                if new:
                    fams.add(
                        "om_in_requests", rd.sample("inbound_http_requests_total", labels, req)
                    )
                cnts.append(req)
            if fams.has("om_in_statuses"):
                code = STATUS_CODES[status]
                st, new = self._cnt((uid, "in_st", ep.port, status), pi)
                if new:
                    fams.add(
                        "om_in_statuses",
                        rd.sample("inbound_http_statuses_total", f'{labels},status="{code}"', st),
                    )
                cnts.append(st)
                # One stored histogram feeds both duration families: the simulator's
                # latency is one number per request.
                du, new = self._hist((uid, "in_dur", ep.port), pi)
                if new:
                    fams.add(
                        "om_in_rsp_duration",
                        rd.om_route_histogram("inbound_http_response_duration_seconds", labels, du),
                    )
                    fams.add(
                        "om_in_req_duration",
                        rd.om_route_histogram(
                            "inbound_http_request_duration_seconds",
                            labels,
                            du,
                            rd.OM_FINE_BUCKETS,
                        ),
                    )
                hists.append(du)
            return cnts, hists

        def route_slots(
            key: tuple[Any, ...], labels: str, status: int
        ) -> tuple[list[int], list[int]]:
            code = STATUS_CODES[status]
            req, new = self._cnt((uid, "rreq", *key), pi)
            if new:
                fams.add("route_request", rd.sample("route_request_total", labels, req))
            rsp, new = self._cnt((uid, "rrsp", *key, status), pi)
            if new:
                fams.add(
                    "route_response",
                    rd.sample("route_response_total", f"{labels},{lb.status(code)}", rsp),
                )
            lat, new = self._hist((uid, "rlat", *key, status), pi)
            if new:
                fams.add(
                    "route_latency",
                    rd.legacy_histogram(
                        "route_response_latency_ms", f'{labels},status_code="{code}"', lat
                    ),
                )
            return [req, rsp], [lat]

        # ---- inbound application traffic
        w = spec.workloads[pod.wl]
        sources: list[tuple[int, str | None, int]] = []  # (source index, client id, edge)
        if w.base_rps > 0:
            ext_id = identity(*INGRESS, spec.cluster_domain) if w.external_tls else None
            sources.append((pod.wl, ext_id, -1))
        for e, (caller, target, _, _) in enumerate(self.edges):
            if target == pod.wl:
                sources.append((len(self.wls) + e, self.wls[caller].identity, e))
        pods_here = self.pods_by_wl[pod.wl]
        pod_w = pod.weight / sum(p.weight for p in pods_here)
        total_share = sum(r.share for r in w.routes)
        app_tcp = self._tcp((uid, "tcp_app"), pi, TCP_IN_APP, lb.tcp_inbound_app(app), fams)
        for src, client_id, edge in sources:
            mtls_cells: list[int] = []
            for twin in (False, True) if client_id is not None else (False,):
                tls = tls_client(None if twin else client_id)
                cls = TCP_IN_MESHED if tls != PLAINTEXT_IN else TCP_IN_PLAIN
                acc = self._tcp(
                    (uid, "tcp_acc", tls), pi, cls, lb.tcp_accept("inbound", app, tls), fams
                )
                for j, r in enumerate(w.routes):
                    g = self.route_base[pod.wl] + j
                    cell = self._add_cell(
                        kind=CELL_IN,
                        src=src,
                        coef=pod_w * r.share / total_share,
                        pod=pi,
                        owner=pod.wl,
                        route=g,
                        serve_wl=pod.wl,
                        serve_pod=pi,
                        edge=edge,
                        twin=twin,
                        partner=mtls_cells[j] if twin else -1,
                        meshed_src=client_id is not None and not twin,
                        base_mult=0.0 if twin else 1.0,
                        err=r.base_error_ratio,
                        c4xx=r.client_error_ratio,
                        prof=g,
                    )
                    if not twin:
                        mtls_cells.append(cell)
                    rlabels = lb.route("inbound", wl.authority, r.name)
                    for s in (S200, S500, S404) if r.client_error_ratio > 0 else (S200, S500):
                        c1, h1 = inbound_slots(app, tls, wl.authority, s)
                        c2, h2 = route_slots(("in", g), rlabels, s)
                        c3, h3 = inbound_route_slots(app, s)
                        self._add_row(cell, s, c1 + c2 + c3, h1 + h2 + h3, [acc, app_tcp])

        # ---- kubelet probes on the admin port (plaintext by design: benign)
        probe_tcp = self._tcp(
            (uid, "tcp_probe"),
            pi,
            TCP_IN_PROBE,
            lb.tcp_accept("inbound", admin, PLAINTEXT_IN),
            fams,
        )
        cell = self._add_cell(
            kind=CELL_PROBE,
            src=-1,
            coef=PROBE_RPS,
            pod=pi,
            owner=pod.wl,
            route=-1,
            serve_wl=pod.wl,
            serve_pod=pi,
            edge=-1,
            twin=False,
            partner=-1,
            meshed_src=False,
            base_mult=1.0,
            err=0.0,
            c4xx=0.0,
            prof=self.prof_probe,
        )
        c1, h1 = inbound_slots(admin, PLAINTEXT_IN, f"{pod.ip}:{ADMIN_PORT}", S200)
        self._add_row(cell, S200, c1, h1, [probe_tcp])

        # ---- outbound calls, per target pod as the Destination service resolves them
        for e, (caller, target, _, authority) in enumerate(self.edges):
            if caller != pod.wl:
                continue
            tw, tspec = self.wls[target], spec.workloads[target]
            tpods = self.pods_by_wl[target]
            if not tpods:
                continue
            svc_ep = Endpoint(f"{tw.service_ip}:{tw.port}", tw.service_ip, tw.port)
            src_tcp = self._tcp(
                (uid, "tcp_out_src", e),
                pi,
                TCP_OUT_SRC,
                lb.tcp_accept("outbound", svc_ep, LOOPBACK),
                fams,
            )
            om_labels = om_backend = ""
            if fams.has("om_route_statuses"):
                parent = self._destination(tw, authority, tpods[0])
                om_labels = lb.om_parent_route(parent, tw.port)
                om_backend = lb.om_backend(parent, tw.port)
            tsum = sum(p.weight for p in tpods)
            tshare = sum(r.share for r in tspec.routes)
            for q in tpods:
                qi = self.pod_ix[q.uid]
                dst = self._destination(tw, authority, q)
                olabels = lb.outbound(dst)
                conn = self._tcp(
                    (uid, "tcp_out_dst", e, q.uid), pi, TCP_OUT_DST, lb.tcp_connect(dst), fams
                )
                for j, r in enumerate(tspec.routes):
                    g = self.route_base[target] + j
                    cell = self._add_cell(
                        kind=CELL_OUT,
                        src=len(self.wls) + e,
                        coef=pod_w * (q.weight / tsum) * r.share / tshare,
                        pod=pi,
                        owner=pod.wl,
                        route=g,
                        serve_wl=target,
                        serve_pod=qi,
                        edge=e,
                        twin=False,
                        partner=-1,
                        meshed_src=False,
                        base_mult=1.0,
                        err=r.base_error_ratio,
                        c4xx=r.client_error_ratio,
                        prof=self.prof_out0 + g,
                    )
                    rlabels = lb.route("outbound", authority, r.name)
                    statuses = (S200, S500, S502) + ((S404,) if r.client_error_ratio > 0 else ())
                    for s in statuses:
                        code = STATUS_CODES[s]
                        req, new = self._cnt((uid, "oreq", e, q.uid), pi)
                        if new:
                            fams.add("request_total", rd.sample("request_total", olabels, req))
                        rsp, new = self._cnt((uid, "orsp", e, q.uid, s), pi)
                        if new:
                            fams.add(
                                "response_total",
                                rd.sample("response_total", f"{olabels},{lb.status(code)}", rsp),
                            )
                        lat, new = self._hist((uid, "olat", e, q.uid, s), pi)
                        if new:
                            fams.add(
                                "latency",
                                rd.legacy_histogram(
                                    "response_latency_ms", f'{olabels},status_code="{code}"', lat
                                ),
                            )
                        c2, h2 = route_slots(("out", e, g), rlabels, s)
                        cnts, hists = [req, rsp, *c2], [lat, *h2]
                        if om_labels:
                            st, new = self._cnt((uid, "om_st", e, s), pi)
                            if new:
                                fams.add(
                                    "om_route_statuses",
                                    rd.sample(
                                        "outbound_http_route_request_statuses_total",
                                        f'{om_labels},http_status="{code}",error=""',
                                        st,
                                    ),
                                )
                                # No retries and no traffic split: each request is one
                                # backend response, from the parent Service itself.
                                fams.add(
                                    "om_backend_statuses",
                                    rd.sample(
                                        "outbound_http_route_backend_response_statuses_total",
                                        f'{om_backend},http_status="{code}",error=""',
                                        st,
                                    ),
                                )
                            du, new = self._hist((uid, "om_dur", e), pi)
                            if new:
                                fams.add(
                                    "om_route_duration",
                                    rd.om_route_histogram(
                                        "outbound_http_route_request_duration_seconds",
                                        om_labels,
                                        du,
                                    ),
                                )
                                fams.add(
                                    "om_backend_duration",
                                    rd.om_route_histogram(
                                        "outbound_http_route_backend_response_duration_seconds",
                                        om_backend,
                                        du,
                                        rd.OM_FINE_BUCKETS,
                                    ),
                                )
                            cnts.append(st)
                            hists.append(du)
                        self._add_row(cell, s, cnts, hists, [src_tcp, conn])

        self._pod_scalars(pi, pod, lb, fams, app)
        trailer = "# EOF\n" if pod.version.openmetrics_section else ""
        self.templates[uid] = rd.PodTemplate(list(fams.f.values()), trailer)

    def _destination(self, tw: WorkloadInfo, authority: str, q: Pod) -> Destination:
        return Destination(
            authority=authority,
            namespace=tw.namespace,
            service=tw.name,
            kind=tw.kind,
            workload=tw.name,
            pod=q.name,
            pod_template_hash=q.template_hash,
            serviceaccount=self.spec.workloads[tw.index].sa,
            meshed=tw.meshed,
            server_id=tw.identity,
            endpoint=Endpoint(f"{q.ip}:{q.port}", q.ip, q.port),
        )

    def _pod_scalars(
        self, pi: int, pod: Pod, lb: ProxyLabels, fams: PodFamilies, app: Endpoint
    ) -> None:
        uid, v = pod.uid, pod.version

        def slot(name: str) -> int:
            ix, _ = self._cnt((uid, "scalar", name), pi)
            self.scalars[name][pi] = ix
            return ix

        gauge_fmt = "%s" if v.openmetrics_section else "%d"
        if v.tcp_accept_error_counters:
            for name, err in (("err_tls", "tls_detect_timeout"), ("err_io", "io")):
                fams.add(
                    "in_tcp_accept_errors",
                    rd.sample("inbound_tcp_accept_errors_total", f'error="{err}"', slot(name)),
                )
        if v.tcp_error_counters:
            for name, err in (("err_tls", "tls detection timeout"), ("err_io", "i/o")):
                lab = f'error="{err}",{lb.target(app)}'
                fams.add("in_tcp_errors", rd.sample("inbound_tcp_errors_total", lab, slot(name)))
        if v.identity_era == "legacy":
            fams.add(
                "id_expiry",
                rd.sample(
                    "identity_cert_expiration_timestamp_seconds", "", slot("expiry"), act=rd.ONE
                ),
            )
            fams.add(
                "id_refresh",
                rd.sample("identity_cert_refresh_count", "", slot("refresh_ok"), act=rd.ONE),
            )
        else:
            prefix = "control_" if v.identity_era == "control" else ""
            fams.add(
                "om_expiry",
                rd.sample(
                    f"{prefix}identity_cert_expiration_timestamp_seconds",
                    "",
                    slot("expiry"),
                    act=rd.ONE,
                    fmt="%s",
                ),
            )
            fams.add(
                "om_refresh_ts",
                rd.sample(
                    f"{prefix}identity_cert_refresh_timestamp_seconds",
                    "",
                    slot("refresh_ts"),
                    act=rd.ONE,
                    fmt="%s",
                ),
            )
            name = f"{prefix}identity_cert_refreshes_total"
            fams.add("om_refreshes", rd.sample(name, 'result="ok"', slot("refresh_ok"), act=rd.ONE))
            fams.add("om_refreshes", rd.sample(name, 'result="error"', slot("refresh_err")))
        sha = _fake_sha(v.proxy_release)
        if v.openmetrics_section:
            build = (
                f'date="2025-01-01T00:00:00Z",git_sha="{sha}",profile="release",'
                f'vendor="linkerd",version="{v.proxy_release.lstrip("v")}"'
            )
        else:
            build = (
                f'git_branch="HEAD",git_sha="{sha}",git_version="{v.proxy_release}",'
                f'profile="release",rust_version="rustc 1.{50 + v.minor // 2}.0"'
            )
        fams.add("build_info", rd.sample("proxy_build_info", build, rd.ONE))
        fams.add(
            "p_start",
            rd.sample("process_start_time_seconds", "", slot("start"), act=rd.ONE, fmt=gauge_fmt),
        )
        if fams.has("p_uptime"):
            fams.add(
                "p_uptime",
                rd.sample("process_uptime_seconds_total", "", slot("uptime"), act=rd.ONE, fmt="%s"),
            )
        cpu = "process_cpu_seconds_total"
        fams.add("p_cpu", rd.sample(cpu, "", slot("cpu"), act=rd.ONE, fmt="%s"))
        for key, name in (
            ("vmem", "process_virtual_memory_bytes"),
            ("rss", "process_resident_memory_bytes"),
            ("fds", "process_open_fds"),
            ("maxfds", "process_max_fds"),
            ("threads", "process_threads"),
        ):
            if fams.has(f"p_{key}"):
                fams.add(f"p_{key}", rd.sample(name, "", slot(key), act=rd.ONE))


def build_layout(spec: MeshSpec, pods_by_wl: Sequence[Sequence[Pod]]) -> Layout:
    """Index every cell, row and series of the given pods (pods without a proxy get no series)."""
    return _Builder(spec, pods_by_wl).build()
