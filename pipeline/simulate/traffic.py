"""The traffic model: one vectorised tick over every request stream of the mesh.

Per tick and cell, request counts are Poisson with the cell's rate (external
traffic x daily shape x slow noise, propagated through the call graph), and
the status split is drawn per row as independent Poissons, which is the same
distribution as a binomial split of a Poisson total but needs no per-cell
loop. Latencies are never drawn per request: each row's count is spread over
the simulator's millisecond buckets (every bound any family prints) with one
multinomial draw from the lognormal's bucket probabilities, and ``_sum`` adds
each bucket's conditional mean. A tick over 1,000 pods is therefore a fixed
number of numpy calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from . import render as rd
from .layout import (
    CELL_IN,
    CELL_PROBE,
    S200,
    S404,
    S500,
    S502,
    TCP_IN_APP,
    TCP_IN_MESHED,
    TCP_IN_PLAIN,
    TCP_IN_PROBE,
    TCP_OUT_DST,
    TCP_OUT_SRC,
    Layout,
)

FloatArr = npt.NDArray[np.float64]
IntArr = npt.NDArray[np.int64]

_LOG_BOUNDS = np.log(np.array(rd.SIM_BOUNDS_MS, dtype=np.float64))


@dataclass(frozen=True)
class TcpClass:
    """Connection behaviour of one kind of TCP series."""

    conns_per_request: float
    lifetime_s: float  # mean connection lifetime; 0 closes within the tick
    read_per_request: float  # bytes read by the proxy per request on this connection
    write_per_request: float
    handshake_bytes: float


TCP_CLASSES: dict[int, TcpClass] = {
    # proxy-to-proxy HTTP/2 over mTLS: few, long-lived, pooled connections
    TCP_IN_MESHED: TcpClass(0.002, 600.0, 650.0, 2600.0, 3200.0),
    # plaintext HTTP/1 clients: keep-alive but shorter lived
    TCP_IN_PLAIN: TcpClass(0.02, 60.0, 450.0, 2400.0, 0.0),
    # kubelet probes: one connection per probe
    TCP_IN_PROBE: TcpClass(1.0, 0.0, 120.0, 110.0, 0.0),
    # proxy -> local app over loopback
    TCP_IN_APP: TcpClass(0.005, 120.0, 2400.0, 450.0, 0.0),
    # local app -> proxy (outbound accept) over loopback
    TCP_OUT_SRC: TcpClass(0.01, 90.0, 450.0, 2400.0, 0.0),
    # proxy -> remote proxy
    TCP_OUT_DST: TcpClass(0.002, 600.0, 2600.0, 650.0, 3200.0),
}


@dataclass(frozen=True)
class TrafficConfig:
    tick_seconds: float = 0.25
    day_seconds: float = 86400.0
    day_phase: float = 0.4  # fraction of the day at mesh start; 0 = midnight, 0.5 = noon
    trough_ratio: float = 0.3  # night rate as a share of the afternoon peak
    noise_sigma: float = 0.08  # stationary sd of the log-rate wander
    noise_tau_seconds: float = 120.0
    cert_lifetime_seconds: float = 86400.0
    cert_refresh_fraction: float = 0.7
    cert_retry_seconds: float = 10.0


def daily_shape(phase: float, trough_ratio: float) -> float:
    """Load as a share of the daily peak: lowest at 02:00, highest at 14:00.

    A raised cosine: smooth (no step a detector could mistake for an
    incident) and periodic, so a compressed demo day wraps around cleanly.
    """
    x = 0.5 - 0.5 * math.cos(2.0 * math.pi * (phase - 2.0 / 24.0))
    return trough_ratio + (1.0 - trough_ratio) * x


@dataclass
class Modifiers:
    """Per-cell knobs that faults turn; the baseline is all ones/zeros.

    Faults only ever write here, so a new fault kind needs no change to the
    traffic model as long as it can be expressed through these arrays.
    """

    rate_mult: FloatArr
    err: FloatArr
    conn_fail: FloatArr  # outbound: share of requests failing to connect (-> 502)
    in_fail: FloatArr  # inbound: share of connections lost in the TLS handshake
    lat_mult: FloatArr
    cert_refresh_fails: npt.NDArray[np.bool_]  # per pod (for a future cert_expiry kind)

    @classmethod
    def baseline(cls, layout: Layout) -> Modifiers:
        n = len(layout.cell_kind)
        return cls(
            rate_mult=layout.cell_base_mult.copy(),
            err=layout.cell_err.copy(),
            conn_fail=np.zeros(n),
            in_fail=np.zeros(n),
            lat_mult=np.ones(n),
            cert_refresh_fails=np.zeros(len(layout.pods), dtype=bool),
        )


class _Profiles:
    """Bucket probabilities and conditional means per (median, sigma) latency profile."""

    def __init__(self, mu: FloatArr, sigma: FloatArr) -> None:
        self.mu = list(mu.tolist())
        self.sigma = list(sigma.tolist())
        self.n_base = len(self.mu)
        self._variants: dict[tuple[int, int], int] = {}
        self.probs: FloatArr = np.zeros((0, rd.N_BUCKETS))
        self.mean: FloatArr = np.zeros((0, rd.N_BUCKETS))
        self._compute()

    def _compute(self) -> None:
        mu = np.array(self.mu)[:, None]
        sg = np.array(self.sigma)[:, None]
        z = (_LOG_BOUNDS[None, :] - mu) / sg
        cdf = np.concatenate(
            [np.zeros((len(mu), 1)), np.asarray(ndtr(z)), np.ones((len(mu), 1))], axis=1
        )
        probs = np.diff(cdf, axis=1)
        zs = z - sg  # E[X; X <= b] = exp(mu + s^2/2) * Phi((ln b - mu)/s - s)
        part = np.concatenate(
            [np.zeros((len(mu), 1)), np.asarray(ndtr(zs)), np.ones((len(mu), 1))], axis=1
        )
        partial = np.exp(mu + sg**2 / 2) * np.diff(part, axis=1)
        lo = np.concatenate([[0.0], np.array(rd.SIM_BOUNDS_MS, dtype=np.float64)])
        hi = np.concatenate([np.array(rd.SIM_BOUNDS_MS, dtype=np.float64), [1e6]])
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(probs > 1e-300, partial / probs, (lo + hi) / 2)
        self.probs = np.clip(probs, 0.0, 1.0)
        self.mean = np.clip(mean, lo, hi)

    def variant(self, base: IntArr, mult: FloatArr) -> IntArr:
        """Profile ids for ``base`` profiles slowed down by ``mult`` (1 % resolution)."""
        q = np.round(np.log(mult) * 100).astype(np.int64)
        out = base.copy()
        todo = q != 0
        if not todo.any():
            return out
        pairs, inverse = np.unique(
            np.stack([base[todo], q[todo]], axis=1), axis=0, return_inverse=True
        )
        ids = []
        grew = False
        for b, qq in pairs.tolist():
            key = (int(b), int(qq))
            if key not in self._variants:
                self._variants[key] = len(self.mu)
                self.mu.append(self.mu[b] + qq / 100)
                self.sigma.append(self.sigma[b])
                grew = True
            ids.append(self._variants[key])
        if grew:
            self._compute()
        out[todo] = np.asarray(ids, dtype=np.int64)[inverse.ravel()]
        return out


class TrafficModel:
    """Cumulative proxy counters of every pod, advanced one tick at a time."""

    def __init__(
        self,
        layout: Layout,
        cfg: TrafficConfig,
        rng: np.random.Generator,
        t_origin: float,
    ) -> None:
        self.cfg = cfg
        self.rng = rng
        self.t_origin = t_origin
        spec = layout.spec
        self.base_rps = np.array([w.base_rps for w in spec.workloads])
        self.noise = np.zeros(len(spec.workloads))
        self.layout = layout
        self._attach(layout)
        self.vals = np.zeros(layout.n_values)
        self.vals[rd.ONE] = 1.0
        self.tcp_open = np.zeros(len(layout.tcp_class))
        self._init_pod_state(layout)
        self.mods = Modifiers.baseline(layout)
        self.apply_modifiers(self.mods)
        self._write_pod_scalars(t_origin)

    # -- structure -----------------------------------------------------------------------

    def _attach(self, layout: Layout) -> None:
        """Derive per-layout lookup arrays (kept out of the per-tick path)."""
        self.layout = layout
        self.profiles = _Profiles(layout.prof_mu, layout.prof_sigma)
        base = layout.cell_prof[layout.row_cell].copy()
        base[layout.row_status == S502] = len(layout.prof_mu) - 1  # failed connects
        self.row_prof_base = base
        self.row_prof = base.copy()
        self.is_probe = layout.cell_kind == CELL_PROBE
        self.is_in = layout.cell_kind == CELL_IN
        self.src_safe = np.where(layout.cell_src < 0, 0, layout.cell_src)
        wl_order = _topological_order(len(layout.workloads), layout.edges)
        pos = {w: i for i, w in enumerate(wl_order)}
        self.edge_order = sorted(range(len(layout.edges)), key=lambda e: pos[layout.edges[e][0]])
        self.edge_caller = np.array([c for c, _, _, _ in layout.edges], dtype=np.int64)
        self.edge_share = np.array([s for _, _, s, _ in layout.edges], dtype=np.float64)
        cls = [TCP_CLASSES[int(c)] for c in layout.tcp_class]
        self.tcp_cpr = np.array([c.conns_per_request for c in cls])
        life = np.array([c.lifetime_s for c in cls])
        dt = self.cfg.tick_seconds
        self.tcp_pclose = np.where(life > 0, -np.expm1(-dt / np.maximum(life, 1e-9)), 1.0)
        self.tcp_rd = np.array([c.read_per_request for c in cls])
        self.tcp_wr = np.array([c.write_per_request for c in cls])
        self.tcp_hs = np.array([c.handshake_bytes for c in cls])
        self.status_is = [layout.row_status == s for s in (S200, S404, S500, S502)]
        self.is_502 = self.status_is[S502]

    def rebuild(self, layout: Layout, t: float) -> None:
        """Switch to a new layout, carrying every counter whose series still exists."""
        old, vals, tcp_open = self.layout, self.vals, self.tcp_open
        new_vals = np.zeros(layout.n_values)
        new_vals[rd.ONE] = 1.0
        _carry(old.cnt_keys, layout.cnt_keys, vals[: old.n_counters], new_vals[: layout.n_counters])
        oh = _hist_view(vals, old)
        nh = _hist_view(new_vals, layout)
        idx_old, idx_new = _match(old.hist_keys, layout.hist_keys)
        nh[0][idx_new] = oh[0][idx_old]
        nh[1][idx_new] = oh[1][idx_old]
        new_open = np.zeros(len(layout.tcp_class))
        _carry(old.tcp_keys, layout.tcp_keys, tcp_open, new_open)
        previous = self._pod_state()
        # Pod state (start time, certificate, cpu) carries by uid, read from the uids
        # each layout was built with: a pod that is new in ``layout`` (scaled up or a
        # replacement) starts from its own Pod fields, never from a predecessor's.
        by_uid = {uid: i for i, uid in enumerate(old.pod_uids)}
        self._init_pod_state(layout)
        fresh = self._pod_state()
        for i, uid in enumerate(layout.pod_uids):
            j = by_uid.get(uid)
            if j is not None:
                for dst, src in zip(fresh, previous, strict=True):
                    dst[i] = src[j]
        self.vals, self.tcp_open = new_vals, new_open
        self._attach(layout)
        self.mods = Modifiers.baseline(layout)
        self.apply_modifiers(self.mods)
        self._write_pod_scalars(t)

    def _init_pod_state(self, layout: Layout) -> None:
        cfg = self.cfg
        self.started_at = np.array([p.started_at for p in layout.pods], dtype=np.float64)
        self.cert_issued = np.array([p.cert_issued_at for p in layout.pods], dtype=np.float64)
        self.cert_next_try = (
            self.cert_issued + cfg.cert_refresh_fraction * cfg.cert_lifetime_seconds
        )
        self.cpu = np.zeros(len(layout.pods))
        self.refreshes = np.ones(len(layout.pods))

    def _pod_state(self) -> list[FloatArr]:
        return [self.started_at, self.cert_issued, self.cert_next_try, self.cpu, self.refreshes]

    def reset_pod(self, pod_index: int, t: float) -> None:
        """A proxy restart: every counter of the pod back to zero, a new certificate."""
        lay = self.layout
        cnt_mask = np.flatnonzero(lay.cnt_pod == pod_index)
        self.vals[cnt_mask] = 0.0
        hb, hs = _hist_view(self.vals, lay)
        hmask = lay.hist_pod == pod_index
        hb[hmask] = 0.0
        hs[hmask] = 0.0
        self.tcp_open[lay.tcp_pod == pod_index] = 0.0
        self.started_at[pod_index] = t
        self.cert_issued[pod_index] = t
        self.cert_next_try[pod_index] = (
            t + self.cfg.cert_refresh_fraction * self.cfg.cert_lifetime_seconds
        )
        self.cpu[pod_index] = 0.0
        self.refreshes[pod_index] = 1.0
        self._write_pod_scalars(t)

    def apply_modifiers(self, mods: Modifiers) -> None:
        """Install a new set of fault modifiers (recomputes latency profiles once)."""
        self.mods = mods
        lay = self.layout
        mult = mods.lat_mult[lay.row_cell]
        mult = np.where(self.is_502, 1.0, mult)
        self.row_prof = self.profiles.variant(self.row_prof_base, mult)

    # -- one tick ------------------------------------------------------------------------

    def source_rates(self, t: float) -> FloatArr:
        """Requests per second of every traffic source: external per workload, then per edge."""
        cfg = self.cfg
        phase = cfg.day_phase + (t - self.t_origin) / cfg.day_seconds
        shape = daily_shape(phase, cfg.trough_ratio)
        ext = self.base_rps * shape * np.exp(self.noise - cfg.noise_sigma**2 / 2)
        rate = ext.copy()
        lay = self.layout
        for e in self.edge_order:
            caller, target, share, _ = lay.edges[e]
            rate[target] += rate[caller] * share
        return np.concatenate([ext, rate[self.edge_caller] * self.edge_share])

    def step(self, t: float) -> None:
        """Advance the tick that starts at sim time ``t``."""
        cfg, lay, rng, m = self.cfg, self.layout, self.rng, self.mods
        dt = cfg.tick_seconds
        a = math.exp(-dt / cfg.noise_tau_seconds)
        self.noise = a * self.noise + math.sqrt(1 - a * a) * cfg.noise_sigma * rng.standard_normal(
            len(self.noise)
        )
        q = self.source_rates(t)
        rate = (
            np.where(self.is_probe, lay.cell_coef, q[self.src_safe] * lay.cell_coef) * m.rate_mult
        )
        lost_rate = rate * m.in_fail
        rate = rate - lost_rate

        rc = lay.row_cell
        e, c4, h = m.err[rc], lay.cell_c4xx[rc], m.conn_fail[rc]
        ok = 1.0 - h
        p = np.select(
            self.status_is,
            [ok * np.clip(1.0 - e - c4, 0.0, 1.0), ok * c4, ok * e, h],
        )
        n = rng.poisson(rate[rc] * p * dt)
        nz = np.flatnonzero(n)
        n_pods = len(lay.pods)
        tcp_req = np.zeros(len(lay.tcp_class))
        fail_conn = np.zeros(len(lay.tcp_class))
        pod_req = np.zeros(n_pods)
        if nz.size:
            k = n[nz].astype(np.float64)
            prof = self.row_prof[nz]
            buckets = rng.multinomial(n[nz], self.profiles.probs[prof])
            sums = (buckets * self.profiles.mean[prof]).sum(axis=1)
            cum = np.cumsum(buckets, axis=1).astype(np.float64)
            cidx = lay.row_cnt[nz]
            kk = np.broadcast_to(k[:, None], cidx.shape)
            valid = cidx >= 0
            np.add.at(self.vals, cidx[valid], kk[valid])
            hb, hs = _hist_view(self.vals, lay)
            hidx = lay.row_hist[nz]
            for j in range(hidx.shape[1]):
                sel = hidx[:, j] >= 0
                if sel.any():
                    np.add.at(hb, hidx[sel, j], cum[sel])
                    np.add.at(hs, hidx[sel, j], sums[sel])
            tidx = lay.row_tcp[nz]
            tvalid = tidx >= 0
            kt = np.broadcast_to(k[:, None], tidx.shape)[tvalid]
            tcp_req = _bincount(tidx[tvalid], kt, len(tcp_req))
            failed = self.is_502[nz]
            if failed.any():
                fail_conn = _bincount(tidx[failed, 1], k[failed], len(tcp_req))
            pod_req = _bincount(lay.cell_pod[rc[nz]], k, n_pods)
        self._tcp_step(tcp_req, fail_conn)
        if lost_rate.any():
            self._handshake_failures(lost_rate, dt)
        self._pods_step(t + dt, dt, pod_req)

    def _tcp_step(self, req: FloatArr, failed: FloatArr) -> None:
        rng, lay, vals = self.rng, self.layout, self.vals
        opens = rng.poisson(req * self.tcp_cpr).astype(np.float64)
        opens += (req > 0) & (self.tcp_open + opens == 0)
        closes = rng.binomial((self.tcp_open + opens).astype(np.int64), self.tcp_pclose)
        self.tcp_open += opens - closes
        jitter = np.exp(0.1 * rng.standard_normal(len(req)))
        slots = lay.tcp_slots
        vals[slots[:, 0]] += opens + failed
        vals[slots[:, 1]] = self.tcp_open
        vals[slots[:, 2]] += np.round(req * self.tcp_rd * jitter + opens * self.tcp_hs)
        vals[slots[:, 3]] += np.round(req * self.tcp_wr * jitter + opens * self.tcp_hs * 0.4)
        vals[slots[:, 4]] += closes
        vals[slots[:, 5]] += failed

    def _handshake_failures(self, lost_rate: FloatArr, dt: float) -> None:
        """Connections the target's proxy dropped before a request could be read."""
        lay = self.layout
        sel = np.flatnonzero(lost_rate > 0)
        lost = self.rng.poisson(lost_rate[sel] * dt)
        per_pod = np.bincount(lay.cell_pod[sel], weights=lost, minlength=len(lay.pods))
        timeouts = self.rng.binomial(per_pod.astype(np.int64), 0.6)
        np.add.at(self.vals, lay.scalars["err_tls"], timeouts)
        np.add.at(self.vals, lay.scalars["err_io"], per_pod - timeouts)

    def _pods_step(self, t: float, dt: float, pod_req: FloatArr) -> None:
        cfg = self.cfg
        due = t >= self.cert_next_try
        if due.any():
            fails = due & self.mods.cert_refresh_fails
            ok = due & ~fails
            self.cert_issued[ok] = t
            self.refreshes[ok] += 1
            self.cert_next_try[ok] = t + cfg.cert_refresh_fraction * cfg.cert_lifetime_seconds
            self.cert_next_try[fails] = t + cfg.cert_retry_seconds
            np.add.at(self.vals, self.layout.scalars["refresh_err"], fails.astype(np.float64))
        self.cpu += dt * 0.002 + pod_req * 0.00012
        self._write_pod_scalars(t)

    def _write_pod_scalars(self, t: float) -> None:
        sc, vals, lay = self.layout.scalars, self.vals, self.layout
        life = self.cfg.cert_lifetime_seconds
        vals[sc["expiry"]] = np.floor(self.cert_issued + life)
        vals[sc["refresh_ts"]] = self.cert_issued
        vals[sc["refresh_ok"]] = self.refreshes
        vals[sc["start"]] = self.started_at
        vals[sc["uptime"]] = np.maximum(t - self.started_at, 0.0)
        vals[sc["cpu"]] = np.round(self.cpu, 2)
        open_by_pod = np.bincount(lay.tcp_pod, weights=self.tcp_open, minlength=len(lay.pods))
        rss = 17_000_000 + 2_500 * open_by_pod + 4096 * np.round(np.log1p(self.cpu) * 400)
        vals[sc["rss"]] = rss
        vals[sc["vmem"]] = rss + 90_000_000
        vals[sc["fds"]] = 18 + open_by_pod
        vals[sc["maxfds"]] = 1_048_576
        vals[sc["threads"]] = 2
        vals[rd.SCRATCH] = 0.0

    # -- reading -------------------------------------------------------------------------

    def render(self, uid: int) -> str:
        return self.layout.templates[uid].render(self.vals)


def _bincount(idx: IntArr, weights: FloatArr, n: int) -> FloatArr:
    return np.bincount(idx, weights=weights, minlength=n).astype(np.float64)


def _hist_view(vals: FloatArr, layout: Layout) -> tuple[FloatArr, FloatArr]:
    c, h = layout.n_counters, layout.n_hist
    buckets = vals[c : c + h * rd.N_BUCKETS].reshape(h, rd.N_BUCKETS)
    sums = vals[c + h * rd.N_BUCKETS : c + h * (rd.N_BUCKETS + 1)]
    return buckets, sums


def _match(old: list[tuple[Any, ...]], new: list[tuple[Any, ...]]) -> tuple[IntArr, IntArr]:
    where = {k: i for i, k in enumerate(old)}
    pairs = [(where[k], j) for j, k in enumerate(new) if k in where]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    a = np.array(pairs, dtype=np.int64)
    return a[:, 0], a[:, 1]


def _carry(
    old_keys: list[tuple[Any, ...]], new_keys: list[tuple[Any, ...]], src: FloatArr, dst: FloatArr
) -> None:
    i, j = _match(old_keys, new_keys)
    dst[j] = src[i]


def _topological_order(n: int, edges: list[tuple[int, int, float, str]]) -> list[int]:
    indeg = [0] * n
    out: list[list[int]] = [[] for _ in range(n)]
    for c, t, _, _ in edges:
        indeg[t] += 1
        out[c].append(t)
    ready = [i for i in range(n) if indeg[i] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for t in out[i]:
            indeg[t] -= 1
            if indeg[t] == 0:
                ready.append(t)
    return order
