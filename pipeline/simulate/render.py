"""Turning cumulative counters into a proxy's ``/metrics`` text, fast.

A scrape of 1,000 pods every 10 s on two cores leaves well under a
millisecond per body, so nothing label-related happens per scrape: each pod
owns a :class:`PodTemplate`, a printf-style string with one placeholder per
number, assembled from static per-series text when the layout is built.
Rendering is a numpy gather plus one ``str % tuple``. The template is only
re-assembled when the set of *visible* series changes (a proxy prints a
series once it has been used, so a 503 series appears with the first 503).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

#: Upper bounds of the proxy's legacy millisecond histograms (``+Inf`` aside).
MS_BUCKETS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
)  # fmt: skip
#: Bounds (ms) of the prometheus-client histograms, in seconds as printed.
OM_ROUTE_LE: tuple[str, ...] = ("0.05", "0.5", "1.0", "10.0")  # request / inbound response
OM_FINE_LE: tuple[str, ...] = ("0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "10.0")  # backend
#: What the simulator stores per histogram: every bound any family prints, so
#: one stored histogram feeds the legacy ms families and the seconds families
#: of the same requests exactly (25 ms and 250 ms exist only in the latter).
SIM_BOUNDS_MS: tuple[float, ...] = tuple(
    sorted({float(b) for b in MS_BUCKETS} | {float(le) * 1000 for le in OM_FINE_LE + OM_ROUTE_LE})
)
N_BUCKETS = len(SIM_BOUNDS_MS) + 1  # stored cumulative buckets, +Inf last
INF = N_BUCKETS - 1
_BUCKET_OF: dict[float, int] = {b: i for i, b in enumerate(SIM_BOUNDS_MS)}
LEGACY_BUCKETS: tuple[int, ...] = tuple(_BUCKET_OF[float(b)] for b in MS_BUCKETS)


def om_buckets(les: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``le`` texts (seconds) with their stored bucket index, ``+Inf`` appended."""
    return (*((le, _BUCKET_OF[float(le) * 1000]) for le in les), ("+Inf", INF))


#: prometheus-client route duration buckets as (le text, stored bucket index).
OM_ROUTE_BUCKETS = om_buckets(OM_ROUTE_LE)
OM_FINE_BUCKETS = om_buckets(OM_FINE_LE)

#: Reserved counter slots: a constant 1.0 (always-visible series, info gauges)
#: and a scratch cell that absorbs writes for series a version does not have.
ONE = 0
SCRATCH = 1
_HIST_STRIDE = N_BUCKETS + 1  # cumulative buckets + the sum


def hist_ref(h: int, bucket: int) -> int:
    """Symbolic reference to histogram ``h``'s cumulative bucket (or ``N_BUCKETS`` = sum).

    Histogram storage sits after the counters in the value buffer, whose size
    is only known once the layout is complete; negative references are
    resolved to buffer indices by :meth:`PodTemplate.resolve`.
    """
    return -(1 + h * _HIST_STRIDE + bucket)


def resolve_refs(refs: npt.NDArray[np.int64], n_counters: int, n_hist: int) -> npt.NDArray[np.intp]:
    out = refs.astype(np.intp).copy()
    neg = out < 0
    code = -out[neg] - 1
    h, b = np.divmod(code, _HIST_STRIDE)
    out[neg] = np.where(
        b < N_BUCKETS, n_counters + h * N_BUCKETS + b, n_counters + n_hist * N_BUCKETS + h
    )
    return out


def _esc(text: str) -> str:
    return text.replace("%", "%%")


@dataclass(slots=True)
class Group:
    """The sample lines of one series (one line, or all lines of one histogram)."""

    act: int
    text: str
    refs: list[int]
    scale: list[float] | None = None


@dataclass(slots=True)
class Family:
    header: str
    groups: list[Group] = field(default_factory=list)


def _braced(labels: str, extra: str = "") -> str:
    inner = f"{labels},{extra}" if labels and extra else (labels or extra)
    return f"{{{inner}}}" if inner else ""


def _le(bound: object) -> str:
    return f'le="{bound}"'


def legacy_header(name: str, kind: str, help_text: str) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


def om_header(name: str, kind: str, help_text: str, unit: str = "") -> str:
    unit_line = f"# UNIT {name} {unit}\n" if unit else ""
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{unit_line}"


def sample(name: str, labels: str, ref: int, *, act: int | None = None, fmt: str = "%d") -> Group:
    """One sample line; visible once its own value (or ``act``) is non-zero."""
    return Group(
        act=ref if act is None else act,
        text=_esc(f"{name}{_braced(labels)} ") + f"{fmt}\n",
        refs=[ref],
    )


def legacy_histogram(name: str, labels: str, h: int) -> Group:
    """Buckets with integer ``le``, then ``_count``, then an integer ``_sum``."""
    lines = [
        _esc(f"{name}_bucket{_braced(labels, _le(le))} ") + "%d\n" for le in (*MS_BUCKETS, "+Inf")
    ]
    lines.append(_esc(f"{name}_count{_braced(labels)} ") + "%d\n")
    lines.append(_esc(f"{name}_sum{_braced(labels)} ") + "%d\n")
    refs = [hist_ref(h, b) for b in (*LEGACY_BUCKETS, INF)]
    refs += [hist_ref(h, INF), hist_ref(h, N_BUCKETS)]
    return Group(act=hist_ref(h, INF), text="".join(lines), refs=refs)


def om_route_histogram(
    name: str, labels: str, h: int, buckets: tuple[tuple[str, int], ...] = OM_ROUTE_BUCKETS
) -> Group:
    """prometheus-client layout: ``_sum`` (float seconds), ``_count``, then ``le``-first buckets."""
    lines = [
        _esc(f"{name}_sum{_braced(labels)} ") + "%s\n",
        _esc(f"{name}_count{_braced(labels)} ") + "%d\n",
    ]
    refs = [hist_ref(h, N_BUCKETS), hist_ref(h, INF)]
    scale = [0.001, 1.0]
    for le, b in buckets:
        lines.append(_esc(f"{name}_bucket{_braced(_le(le), labels)} ") + "%d\n")
        refs.append(hist_ref(h, b))
        scale.append(1.0)
    return Group(act=hist_ref(h, INF), text="".join(lines), refs=refs, scale=scale)


class PodTemplate:
    """The frozen text of one pod's ``/metrics`` with a placeholder per number."""

    __slots__ = (
        "_act",
        "_gather",
        "_key",
        "_scale",
        "_template",
        "families",
        "trailer",
    )

    def __init__(self, families: Sequence[Family], trailer: str = "") -> None:
        self.families = list(families)
        self.trailer = trailer
        self._act: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._key = b"\xff"
        self._template = ""
        self._gather: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._scale: npt.NDArray[np.float64] | None = None

    @property
    def groups(self) -> list[Group]:
        return [g for f in self.families for g in f.groups]

    def resolve(self, n_counters: int, n_hist: int) -> None:
        """Swap symbolic histogram references for buffer indices (once per layout)."""
        groups = self.groups
        if not groups:
            return
        lens = [len(g.refs) for g in groups]
        flat = np.fromiter((r for g in groups for r in g.refs), dtype=np.int64, count=sum(lens))
        acts = np.fromiter((g.act for g in groups), dtype=np.int64, count=len(groups))
        flat_r = resolve_refs(flat, n_counters, n_hist).tolist()
        self._act = resolve_refs(acts, n_counters, n_hist)
        pos = 0
        for g, n in zip(groups, lens, strict=True):
            g.refs = flat_r[pos : pos + n]
            pos += n
        self._key = b"\xff"

    def invalidate(self) -> None:
        self._key = b"\xff"

    def _assemble(self, visible: npt.NDArray[np.bool_]) -> None:
        parts: list[str] = []
        refs: list[int] = []
        scale: list[float] = []
        scaled = False
        i = 0
        for fam in self.families:
            parts.append(_esc(fam.header))
            for g in fam.groups:
                if visible[i]:
                    parts.append(g.text)
                    refs.extend(g.refs)
                    if g.scale is None:
                        scale.extend([1.0] * len(g.refs))
                    else:
                        scaled = True
                        scale.extend(g.scale)
                i += 1
        parts.append(_esc(self.trailer))
        self._template = "".join(parts)
        self._gather = np.asarray(refs, dtype=np.intp)
        self._scale = np.asarray(scale, dtype=np.float64) if scaled else None

    def render(self, vals: npt.NDArray[np.float64]) -> str:
        visible = vals[self._act] > 0
        key = visible.tobytes()
        if key != self._key:
            self._assemble(visible)
            self._key = key
        v = vals[self._gather]
        if self._scale is not None:
            v = v * self._scale
        return self._template % tuple(v.tolist())
