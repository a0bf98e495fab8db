"""Training history from Prometheus range queries (``meshwatch train --source prometheus``).

Where no golden topic holds the history (a new install, or a topic whose
retention is shorter than the training range) the Prometheus that already
scrapes the proxies usually does. This reads it back as the very
GoldenSamples the collector's Prometheus source would have built window by
window, so a model trained from it sees the numbers the detector will see:

- **Same queries.** The window's queries come from
  :mod:`pipeline.collect.promql` through the collector's own
  :class:`~pipeline.collect.prometheus_source.PrometheusSource` plan. Their
  aligned shapes (``increase(x[w:w]) or x``) do not depend on the window's
  end, so one ``query_range`` with ``step = window`` evaluates each of them
  at every window end of a chunk: a Prometheus range query is the instant
  query at each step. A chunk costs as many requests as one window does.
- **Same folding.** Each step's rows are cut out of the matrices and folded
  by :func:`pipeline.collect.promwindow.cover` and
  :func:`~pipeline.collect.promwindow.fold`, exactly as an instant window.
- **Pods named in queries.** Pods with new latency series get a part of
  their own in the bucket queries; the chunk's info queries (range queries
  too) name them, and the union serves every window (see :meth:`_chunk`).
  Windows whose pods did something rarer (a restart, a pod down or left out
  at an edge, pods without a workload label) change the main expressions:
  only those are rebuilt one by one with the collector's instant path
  (:meth:`PrometheusSource.build_window`). In steady state that is none.
- **Gaps stay gaps.** A window Prometheus has no fresh samples for is
  skipped (counted in the stats), never filled with zeros.

**Bounded memory.** History is read in chunks of at most ``chunk_seconds``
(default one hour) and ``max_points`` returned points (the first chunk of a
few windows measures how many points a window returns; later chunks take as
many windows as fit), and, on large meshes, in shards of whole namespaces of
at most ``pods_per_query`` pods each (a namespace matcher added to every query:
every row is summed within one pod's namespace, so the shards' windows add up
to the whole mesh's). Only one chunk of one shard is in memory at a time;
the training sample downstream is bounded on its own.

**Failures.** Every request has a timeout and is retried with doubling
backoff; if Prometheus still does not answer, reading stops with
:class:`HistoryUnavailableError` naming the URL and the cause (``train`` exits 1,
an error the CronJob retries: an outage is not "no data").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException

from pipeline.collect.prometheus_source import PrometheusSource, connect
from pipeline.collect.promql import info_query, new_series_query, quote
from pipeline.collect.promwindow import Coverage, Row, cover, fold, read_info
from pipeline.config import MeshwatchConfig, PrometheusSourceConfig
from pipeline.schema import GoldenBatch, GoldenSample

log = logging.getLogger(__name__)

Series = dict[str, Any]  # one element of a range-query matrix: {"metric": {...}, "values": [...]}
Progress = Callable[[int], None]
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
#: Windows of the first chunk, which measures how many points a window returns.
PROBE_WINDOWS = 6


class HistoryUnavailableError(Exception):
    """Prometheus could not give the history (unreachable, or it refused a query)."""


class _TooSlowError(Exception):
    """A range query of several steps that Prometheus could not answer in time."""


class RangeClient(Protocol):
    def query_range(
        self, expr: str, start: float, end: float, step: float, timeout: float
    ) -> list[Series]: ...

    def close(self) -> None: ...


class PromRangeClient:
    """``query_range`` through ``prometheus-api-client``, with the collector's auth settings.

    The library's own retries are off: :class:`PrometheusHistory` retries
    with backoff and decides when to give up.
    """

    def __init__(self, pcfg: PrometheusSourceConfig) -> None:
        self.url = str(pcfg.url).rstrip("/")
        self._prom, self._session = connect(pcfg)

    def query_range(
        self, expr: str, start: float, end: float, step: float, timeout: float
    ) -> list[Series]:
        result = self._prom.custom_query_range(
            expr,
            start_time=datetime.fromtimestamp(start, UTC),
            end_time=datetime.fromtimestamp(end, UTC),
            step=f"{step:g}",
            # Prometheus gives up when we do, rather than evaluate on for nobody
            params={"timeout": f"{timeout:g}s"},
            timeout=timeout,  # type: ignore[arg-type]  # the library annotates int
        )
        if not isinstance(result, list):
            raise ValueError(f"not a range vector: {str(result)[:200]}")
        return result

    def close(self) -> None:
        self._session.close()


@dataclass
class HistoryStats:
    """What a read covered; printed by ``train`` and asserted by tests."""

    windows: int = 0  # window ends asked for, per shard
    built: int = 0  # windows that produced batches (or an empty, all-idle window)
    skipped: int = 0  # gaps: Prometheus had no data for the window
    rebuilt: int = 0  # windows rebuilt with instant queries (restarts, pods at an edge)
    new_series: int = 0  # windows with new latency series, read by the range path
    requests: int = 0  # range requests sent, retries included
    retries: int = 0
    samples: int = 0
    shards: int = 0
    chunk_windows: int = 0  # windows per range query (after any halving)
    splits: int = 0  # chunks halved because Prometheus was too slow for them
    skip_reasons: dict[str, int] = field(default_factory=dict)


def _aligned_ends(since: float, until: float, window: float) -> list[float]:
    """Window ends ``e`` with ``since < e <= until`` that are multiples of the window."""
    first = (int(since // window) + 1) * window
    out = []
    e = first
    while e <= until + 1e-9:
        out.append(float(e))
        e += window
    return out


class PrometheusHistory:
    """Reads ``(since, until]`` from Prometheus as GoldenBatches, chunk by chunk."""

    def __init__(
        self,
        cfg: MeshwatchConfig,
        *,
        client: RangeClient | None = None,
        name: str = "train",
    ) -> None:
        self.cfg = cfg
        self.hcfg = cfg.models.prometheus_history
        self.window = float(cfg.window.seconds)
        if abs(self.window - round(self.window)) > 1e-9:
            # query_range takes whole seconds (prometheus-api-client rounds them)
            raise HistoryUnavailableError(
                f"window.seconds={self.window:g}: Prometheus history needs whole-second windows"
            )
        self.name = name
        self.client: RangeClient = client if client is not None else PromRangeClient(cfg.prometheus)
        self.url = str(cfg.prometheus.url)
        self.stats = HistoryStats()
        self._sources: dict[str, PrometheusSource] = {}
        self._steps = 1
        self._points = 0
        self._pool = ThreadPoolExecutor(
            max_workers=cfg.prometheus.concurrency, thread_name_prefix="meshwatch-promrange"
        )

    # -- shards ----------------------------------------------------------------------------

    def _source(self, selector: str) -> PrometheusSource:
        """The collector's source for one shard (its plan, labels and instant path)."""
        src = self._sources.get(selector)
        if src is None:
            prom = self.cfg.prometheus.model_copy(update={"selector": selector})
            cfg = self.cfg.model_copy(update={"prometheus": prom})
            h = self.hcfg
            deadline = h.max_attempts * (h.timeout_seconds + h.backoff_seconds * 2**h.max_attempts)
            src = self._sources[selector] = PrometheusSource(
                cfg, name=self.name, deadline_seconds=deadline
            )
        return src

    def shards(self, since: float, until: float) -> list[str]:
        """Selectors splitting the mesh into whole namespaces of ``pods_per_query`` pods or less."""
        base = self.cfg.prometheus.selector
        ns_label = self.cfg.prometheus.labels.namespace
        up = f"up{{{base}}}" if base else "up"
        span = max(self.window, until - since)
        expr = f"count by ({ns_label}) (last_over_time({up}[{int(span)}s]))"
        rows = self._request(expr, until, until, self.window)
        pods = {str(r["metric"].get(ns_label, "")): int(float(r["values"][-1][1])) for r in rows}
        pods.pop("", None)
        total = sum(pods.values())
        if total <= self.hcfg.pods_per_query or len(pods) <= 1:
            return [base]
        groups: list[tuple[int, list[str]]] = []
        for ns, n in sorted(pods.items(), key=lambda x: -x[1]):  # largest first, first fit
            for i, (size, names) in enumerate(groups):
                if size + n <= self.hcfg.pods_per_query:
                    groups[i] = (size + n, [*names, ns])
                    break
            else:
                groups.append((n, [ns]))
        out = []
        for _, names in groups:
            alt = "|".join(sorted(names))
            matcher = f"{ns_label}={quote(alt)}" if len(names) == 1 else f"{ns_label}=~{quote(alt)}"
            out.append(", ".join(m for m in (base, matcher) if m))
        return out

    # -- requests --------------------------------------------------------------------------

    def _request(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """One range query, retried with doubling backoff; HistoryUnavailableError at the end.

        A query of several steps that times out (or that Prometheus finds too
        large) raises :class:`_TooSlowError` at once: the caller halves the
        time range rather than send the same query again.
        """
        h = self.hcfg
        backoff = h.backoff_seconds
        last = ""
        several = end > start
        for attempt in range(1, h.max_attempts + 1):
            self.stats.requests += 1
            try:
                return self.client.query_range(expr, start, end, step, h.timeout_seconds)
            except PrometheusApiClientException as exc:
                text = " ".join(str(exc).split())[:300]
                if several and ("Code 503" in text or "too many samples" in text):
                    raise _TooSlowError(text) from exc
                status = next((s for s in _RETRYABLE if f"Code {s}" in text), None)
                if status is None:
                    raise HistoryUnavailableError(
                        f"Prometheus {self.url} refused a query: {text}"
                    ) from exc
                last = f"HTTP {status}"
            except requests.Timeout as exc:
                if several:
                    raise _TooSlowError(str(exc)) from exc
                last = f"no answer within {h.timeout_seconds:g}s"
            except requests.ConnectionError as exc:
                last = f"unreachable ({type(exc).__name__}: {str(exc)[:160]})"
            except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
                last = f"bad response ({type(exc).__name__}: {str(exc)[:160]})"
            if attempt < h.max_attempts:
                self.stats.retries += 1
                log.debug("range query attempt %d failed: %s", attempt, last)
                time.sleep(backoff)
                backoff *= 2
        raise HistoryUnavailableError(
            f"Prometheus {self.url}: {last} (gave up after {h.max_attempts} attempts)"
        )

    # -- reading ---------------------------------------------------------------------------

    def chunks(self, since: float, until: float) -> Iterator[list[tuple[float, list[GoldenBatch]]]]:
        """The windows of each time chunk and shard: ``(window_end, batches)`` in time order.

        Shards are read one after the other for each time chunk, so every
        route's windows come in time order (what the detector needs).
        """
        ends = _aligned_ends(since, until, self.window)
        if not ends:
            return
        shards = self.shards(since, until)
        self.stats.shards = len(shards)
        most = max(1, int(self.hcfg.chunk_seconds // self.window))
        # the first chunk is a probe: how many points a window of this mesh returns
        self._steps = min(most, PROBE_WINDOWS)
        i = 0
        while i < len(ends):
            chunk = ends[i : i + self._steps]
            largest = 0
            for selector in shards:
                self._points = 0
                yield from self._adaptive(selector, chunk)
                largest = max(largest, self._points)
            i += len(chunk)
            # points per window of the largest shard, so that one chunk of one shard
            # stays within max_points (a shard's answers are all in memory at once)
            per_window = largest / len(chunk)
            fit = int(self.hcfg.max_points // max(per_window, 1.0))
            self._steps = max(1, min(most, self._steps if self.stats.splits else most, fit))
            self.stats.chunk_windows = self._steps

    def _adaptive(
        self, selector: str, ends: Sequence[float]
    ) -> Iterator[list[tuple[float, list[GoldenBatch]]]]:
        """One chunk of one shard; halved (and later chunks shorter) while too slow."""
        try:
            yield list(self._chunk(selector, ends))  # every answer is in before a window is built
        except _TooSlowError as exc:
            if len(ends) == 1:  # pragma: no cover - a one-step query is not _TooSlowError
                raise HistoryUnavailableError(f"Prometheus {self.url}: {exc}") from exc
            half = len(ends) // 2
            self._steps = min(self._steps, half)
            self.stats.chunk_windows = self._steps
            self.stats.splits += 1
            log.info("range query too slow for %d windows: trying %d", len(ends), half)
            yield from self._adaptive(selector, ends[:half])
            yield from self._adaptive(selector, ends[half:])

    def batches(self, since: float, until: float) -> Iterator[tuple[float, list[GoldenBatch]]]:
        for chunk in self.chunks(since, until):
            yield from chunk

    def _fetch(self, exprs: Sequence[str], ends: Sequence[float]) -> list[_Steps]:
        """Range queries over ``ends``, in parallel; each answer read step by step."""
        futures = [self._pool.submit(self._request, q, ends[0], ends[-1], self.window)
                   for q in exprs]  # fmt: skip
        try:
            answers = [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()  # after a failure: the chunk's queries not yet sent are not sent
        steps = [_Steps(a) for a in answers]
        self._points += sum(st.points() for st in steps)
        return steps

    def _chunk(
        self, selector: str, ends: Sequence[float]
    ) -> Iterator[tuple[float, list[GoldenBatch]]]:
        """One chunk of one shard: the info queries first, then the family queries.

        The family queries depend on the pods the info query names. Pods with
        new latency series get an extra part naming them (``x unless x offset
        w``); at a window where a named pod has no new series that part adds
        nothing, so the union of the chunk's pods serves every window of it,
        and the range path needs no rebuild for them. Restarted, excluded and
        label-less pods change the main expressions: those windows (rare) are
        rebuilt by the instant path.
        """
        src = self._source(selector)
        w0 = src.window(ends[0])
        labels, pcfg = src.labels, self.cfg.prometheus
        info, new = self._fetch([info_query(w0), new_series_query(w0)], ends)
        covers: dict[float, Coverage] = {}
        new_pods: set[tuple[str, str]] = set()
        for end in ends:
            cov = cover(
                read_info([*info.at(end), *new.at(end)], labels),
                labels,
                t1=end,
                window=self.window,
                stale=pcfg.stale_after_seconds,
            )
            covers[end] = cov
            if cov.skip_reason(end, selector) is None and not _special(cov):
                new_pods.update(cov.new_series)
        plan = src.plan(replace(w0, new_series=tuple(sorted(new_pods))))
        folding = any(
            c.skip_reason(e, selector) is None and not _special(c) for e, c in covers.items()
        )
        steps = self._fetch([q for _, q in plan], ends) if folding else []
        for end in ends:
            self.stats.windows += 1
            cov = covers[end]
            reason = cov.skip_reason(end, selector)
            if reason is not None:
                self._skipped(reason)
                continue
            if _special(cov):
                batches = self._instant(src, end)
                if batches is None:
                    continue
                self.stats.rebuilt += 1
            else:
                rows = [(fam, steps[j].at(end)) for j, (fam, _) in enumerate(plan)]
                batches = fold(
                    cov,
                    rows,
                    labels,
                    window_end=end,
                    window_seconds=self.window,
                    cluster=self.cfg.cluster,
                    collector=self.name,
                    exclude_ports=self.cfg.collector.exclude_ports,
                ).batches
                self.stats.new_series += bool(cov.new_series)
            self.stats.built += 1
            self.stats.samples += sum(len(b.samples) for b in batches)
            yield end, batches

    def _instant(self, src: PrometheusSource, end: float) -> list[GoldenBatch] | None:
        """A window whose pods need naming, built by the collector's instant path."""
        report, batches = asyncio.run(src.build_window(end))
        if report.skipped is not None:
            if report.skipped.startswith(f"Prometheus {self.cfg.prometheus.url}"):
                raise HistoryUnavailableError(report.skipped)
            self._skipped(report.skipped)
            return None
        return batches

    def _skipped(self, reason: str) -> None:
        self.stats.skipped += 1
        short = reason.split(":")[0]
        self.stats.skip_reasons[short] = self.stats.skip_reasons.get(short, 0) + 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for src in self._sources.values():
            asyncio.run(src.aclose())
        self._sources.clear()
        self.client.close()


def _special(cov: Coverage) -> bool:
    """Whether a window's main queries must name pods (restarted, left out, label-less)."""
    return bool(cov.excluded or cov.restarted or cov.bare)


class _Steps:
    """A range-query matrix read step by step, in time order, without copying it.

    Each series keeps a cursor into its values; asking for the rows at ``t``
    advances the cursors past ``t`` (a series missing at ``t`` has none there).
    Steps must be asked in increasing order, which is how windows are built.
    """

    def __init__(self, series: Sequence[Series]) -> None:
        self.series = series
        self.pos = [0] * len(series)

    def points(self) -> int:
        return sum(len(s["values"]) for s in self.series)

    def at(self, t: float) -> list[Row]:
        key = round(t * 1000)
        out: list[Row] = []
        pos = self.pos
        for i, s in enumerate(self.series):
            values = s["values"]
            j = pos[i]
            while j < len(values) and round(float(values[j][0]) * 1000) < key:
                j += 1
            if j < len(values) and round(float(values[j][0]) * 1000) == key:
                out.append({"metric": s["metric"], "value": values[j]})
                j += 1
            pos[i] = j
        return out


def prometheus_chunks(
    cfg: MeshwatchConfig,
    since: float,
    until: float,
    *,
    progress: Progress | None = None,
    stats: dict[str, int] | None = None,
    client: RangeClient | None = None,
) -> Iterator[list[GoldenSample]]:
    """The samples of ``(since, until]``, one list per time chunk and shard (time order)."""
    hist = PrometheusHistory(cfg, client=client)
    try:
        for chunk in hist.chunks(since, until):
            samples = [s for _, batches in chunk for b in batches for s in b.samples]
            if progress:
                progress(len(samples))
            if samples:
                yield samples
    finally:
        hist.close()
        if stats is not None:
            keys = ("windows", "built", "skipped", "rebuilt", "new_series", "requests", "retries")
            for k in (*keys, "shards", "splits", "chunk_windows"):
                stats[f"prometheus_{k}"] = int(getattr(hist.stats, k))
        if hist.stats.skipped:
            log.warning(
                "Prometheus history: %d of %d window(s) skipped (gaps, not zeros): %s",
                hist.stats.skipped,
                hist.stats.windows,
                hist.stats.skip_reasons,
            )


__all__ = [
    "HistoryStats",
    "HistoryUnavailableError",
    "PromRangeClient",
    "PrometheusHistory",
    "RangeClient",
    "prometheus_chunks",
]
