"""The collector's Prometheus source: one window of GoldenBatches from PromQL.

Where a Prometheus already scrapes the proxies (linkerd-viz's, or your own
with the same ``linkerd-proxy`` job), the collector need not scrape them a
second time: each window it asks Prometheus instead and builds the same
GoldenSamples, route for route, as the direct scrape
(:mod:`pipeline.collect.promwindow` folds the rows with the scrape path's own
``extract`` and ``build_batches``).

**Deltas, not ``increase()``.** Linkerd's tooling asks for
``sum(increase(response_total[w])) by (...)``. ``increase`` extrapolates
from the samples inside ``[t1-w, t1]`` to the window's edges: the result is
fractional, and the increments between the last sample before the window and
the first inside it are estimated rather than counted. Consecutive windows
therefore neither add up to the counters nor agree with a direct scrape. So
each family is instead the per-series difference of two *instant* values,
at the window end and at the window start (``x - x offset w``, with counter
resets, new series and proxy restarts handled per series exactly as
:mod:`pipeline.collect.deltas` does), summed by the labels the golden numbers
need. Windows then tile: an increment lands in exactly one window, counts
are integers, and they equal the direct scrape's whenever both read the same
samples. The difference is taken inside Prometheus, not here, because the
raw series are too many to move every window: a mesh of 10,000 routes
exposes about 500,000 series (mostly latency buckets), some 100 MB of JSON
per instant, against a few MB of summed rows. The window start needs no
query of its own, and the source keeps no state between windows: a
restarted collector, or one that skipped windows, computes the next window
exactly.

For exact windows the window length should be a multiple of Prometheus'
scrape interval (10 s for linkerd-viz); otherwise a window holds one scrape
interval more or less than its neighbour for a given proxy. A window is
queried ``query_delay_seconds`` after it ends, so that scrapes that started
before the end have been stored.

**Recorded mode** (``prometheus.recorded``). The window queries can instead
be evaluated by Prometheus itself, every window, as recording rules
(``deploy/prometheus/meshwatch-rules.yaml``, see
:class:`~pipeline.collect.promql.RuleSet` for how each rule stays exact); the
collector then reads their few rows instead of every raw series, one window
later, and asks raw series only for the workloads the rules cannot answer
exactly (pods restarted, down or left out; new latency series are added).
``auto`` reads them when rules of this configuration's fingerprint are in
Prometheus, else raw series. The cost of computing a window moves into
Prometheus' continuous rule evaluation (``docs/benchmarks.md``).

**Failures.** Every query has a timeout, is retried with doubling backoff a
bounded number of times, and all of a window's queries share one deadline
(the window's length: a window never takes longer to build than to pass).
If any query still fails, or Prometheus has no fresh samples at the window's
end (it was down, or is not scraping), the window is *skipped*: the report
says so and why, a warning is logged, and no batch is produced. A window is
never filled with zeros for want of data.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

import orjson
import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipeline.collect.collector import CycleReport
from pipeline.collect.promql import (
    INFO_LABEL,
    Family,
    Labels,
    PodId,
    RecordedRule,
    RuleSet,
    Window,
    family_queries,
    golden_families,
    info_query,
    new_histograms_query,
    new_series_query,
    new_series_sums,
    recording_rules,
)
from pipeline.collect.promwindow import (
    Coverage,
    RawScope,
    Row,
    cover,
    fold,
    raw_scope,
    read_info,
    recorded_rows,
    scoped_rows,
    sentinel_of,
)
from pipeline.config import MeshwatchConfig, PrometheusSourceConfig, read_secret
from pipeline.schema import GoldenBatch

log = logging.getLogger(__name__)

#: Queries longer than this are sent with POST whatever ``prometheus.method`` says.
LONG_QUERY = 20_000
#: HTTP statuses worth another attempt: overload, restarts, proxies in between.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_STATUS = re.compile(r"HTTP Status Code (\d{3})")


class QueryError(Exception):
    """A query that did not answer; ``retryable`` unless Prometheus rejected it."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


def _as_new_series(rows: Sequence[Row], labels: Labels) -> list[Row]:
    """New histogram rows → the per-pod ``new_series`` info rows the raw mode reads."""
    pods = {(r["metric"].get(labels.namespace, ""), r["metric"].get(labels.pod, "")) for r in rows}
    return [
        {
            "metric": {labels.namespace: ns, labels.pod: pod, INFO_LABEL: "new_series"},
            "value": [0, "1"],
        }
        for ns, pod in sorted(pods)
    ]


#: Which rows of a raw query the recorded mode keeps: all, those of the raw scope, the others.
_Take = Literal["all", "in", "out"]


class _NotCoveredError(Exception):
    """The rules' rows read do not cover the window (a race with an evaluation)."""


class QueryClient(Protocol):
    """Blocking instant queries (run on worker threads)."""

    def query(self, expr: str, at: float, timeout: float) -> Sequence[Row]: ...

    def close(self) -> None: ...


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def _root_cause(exc: BaseException) -> str:
    """``[Errno 111] Connection refused`` rather than urllib3's message with the whole URL."""
    m = _ERRNO.search(str(exc))
    if m:
        return m.group(0).strip()
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", None)
    return _short(repr(reason) if reason is not None else type(exc).__name__)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: read=False: a read timeout surfaces as requests.ReadTimeout, not wrapped as
#: a connection error ("Max retries exceeded"); total=0: the callers retry
#: on their own terms (within a window's deadline, or with backoff).
NO_RETRY = Retry(total=0, read=False, raise_on_status=False)


def connect(pcfg: PrometheusSourceConfig) -> tuple[PrometheusConnect, requests.Session]:
    """A ``prometheus-api-client`` connection with the configured TLS, headers and
    bearer token and none of the library's own retries, and its session (the
    collector's instant queries and the training job's range queries share it)."""
    session = requests.Session()
    session.verify = str(pcfg.ca_file) if pcfg.ca_file else pcfg.tls_verify
    headers = {k: v.get_secret_value() for k, v in pcfg.headers.items()}
    token = read_secret(pcfg.bearer_token, pcfg.bearer_token_file)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    prom = PrometheusConnect(
        url=str(pcfg.url).rstrip("/"),
        headers=headers,
        retry=NO_RETRY,
        session=session,
        method=pcfg.method,
    )
    return prom, session


class PromClient:
    """Instant queries through ``prometheus-api-client``, with our own retry policy.

    The library's built-in retries (three, one second apart) are switched
    off: the source retries within the window's deadline instead.
    """

    def __init__(self, pcfg: PrometheusSourceConfig) -> None:
        self.url = str(pcfg.url).rstrip("/")
        self._method = pcfg.method
        self._prom, session = connect(pcfg)
        # One connection per query in flight (the library's adapter keeps 10).
        adapter = HTTPAdapter(pool_maxsize=pcfg.concurrency, max_retries=NO_RETRY)
        session.mount(self.url, adapter)
        self._session = session

    def query(self, expr: str, at: float, timeout: float) -> list[Row]:
        """One instant query on the library's session, its answer decoded with orjson.

        ``custom_query`` decodes with the standard ``json`` module, holding the
        GIL for a large share of a window's time when a few MB of rows arrive on
        several threads at once; the request itself is the one it would send.
        """
        params = {"query": expr, "time": f"{at:.3f}", "timeout": f"{timeout:.3f}"}
        # A long query (new histograms named one by one) goes in the body: URLs that
        # long are refused by many proxies in front of Prometheus.
        method = "POST" if len(expr) > LONG_QUERY else self._method
        try:
            response = self._session.request(
                method=method,
                url=f"{self.url}/api/v1/query",
                params=params if method == "GET" else None,
                data=params if method == "POST" else None,
                headers=self._prom.headers,
                timeout=timeout,
            )
            if response.status_code != 200:
                raise PrometheusApiClientException(
                    f"HTTP Status Code {response.status_code} ({response.content[:300]!r})"
                )
            result = orjson.loads(response.content)["data"]["result"]
        except PrometheusApiClientException as exc:
            m = _STATUS.search(str(exc))
            status = int(m.group(1)) if m else 0
            raise QueryError(
                f"HTTP {status or '?'}: {_short(str(exc))}", retryable=status in RETRYABLE_STATUS
            ) from exc
        except requests.Timeout as exc:
            raise QueryError(f"no answer within {timeout:.1f}s", retryable=True) from exc
        except requests.ConnectionError as exc:
            raise QueryError(f"unreachable: {_root_cause(exc)}", retryable=True) from exc
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            raise QueryError(f"bad response: {_short(repr(exc))}", retryable=True) from exc
        if not isinstance(result, list):
            raise QueryError(f"not an instant vector: {_short(repr(result))}", retryable=False)
        return result

    def close(self) -> None:
        self._session.close()  # ours; PrometheusConnect.close() only exists from 0.7.1


@dataclass
class PromCycleReport(CycleReport):
    """A window built from Prometheus; ``skipped`` says why none was produced."""

    queries: int = 0
    attempts: int = 0  # HTTP requests, retries included
    query_seconds: float = 0.0  # from the first query sent to the last answer
    fold_seconds: float = 0.0  # rows → batches, on this process
    rows: int = 0
    left_out: list[str] = field(default_factory=list)
    restarted: int = 0  # pods counted in full (restarted, or started in the window)
    new_series: int = 0  # pods with latency series that began in the window
    guessed: int = 0  # family queries sent on the last window's pod sets, with the info query
    guessed_unused: int = 0  # ... and then not needed (sent again for the real pod sets)
    #: "raw": raw series only; "recorded": the recording rules' rows (plus raw rows
    #: for ``raw_pods`` pods' workloads and the ``raw_families`` whose rule missed it).
    mode: str = "raw"
    raw_pods: int = 0
    recorded_rows: int = 0  # rows taken from the rules (the rest came from raw queries)
    rules_wait_seconds: float = 0.0  # waiting for rule evaluations to cover the window
    raw_families: list[str] = field(default_factory=list)
    recorded_note: str | None = None  # why recorded rows were not (all) used


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class _PodSets:
    """The pods a window's queries name (see :class:`~pipeline.collect.promql.Window`)."""

    exclude: tuple[PodId, ...] = ()
    restarted: tuple[PodId, ...] = ()
    new_series: tuple[PodId, ...] = ()
    bare: tuple[PodId, ...] = ()

    def apply(self, w: Window) -> Window:
        return replace(
            w,
            exclude=self.exclude,
            restarted=self.restarted,
            new_series=self.new_series,
            bare=self.bare,
        )


@dataclass
class _Budget:
    deadline: float  # time.monotonic()
    queries: int = 0
    attempts: int = 0  # requests sent (a query cancelled while queued sent none)
    closed: bool = False  # the window is done: queued requests are not sent any more
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, client: QueryClient, expr: str, at: float, timeout: float) -> Sequence[Row]:
        """On a worker thread: count the request once it is really sent, then send it."""
        with self.lock:
            if self.closed:
                raise QueryError("window already done", retryable=False)
            self.attempts += 1
        return client.query(expr, at, timeout)

    def close(self) -> None:
        with self.lock:
            self.closed = True


def labels_of(pcfg: PrometheusSourceConfig) -> Labels:
    lc = pcfg.labels
    return Labels(lc.namespace, lc.pod, tuple(lc.workload.items()))


def rules_for(cfg: MeshwatchConfig, families: Sequence[Family] | None = None) -> RuleSet:
    """The recording rules a collector with ``cfg`` reads (``deploy/prometheus/generate-rules``)."""
    template = Window(
        t1=cfg.window.seconds,
        seconds=cfg.window.seconds,
        selector=cfg.prometheus.selector,
        labels=labels_of(cfg.prometheus),
        exclude_ports=tuple(cfg.collector.exclude_ports),
    )
    fams = golden_families() if families is None else families
    return recording_rules(template, fams, settle_seconds=cfg.prometheus.query_delay_seconds)


class PrometheusSource:
    """Builds each window from Prometheus; plug into :class:`Collector` as ``source``."""

    def __init__(
        self,
        cfg: MeshwatchConfig,
        *,
        name: str = "collector",
        client: QueryClient | None = None,
        families: Sequence[Family] | None = None,
        deadline_seconds: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.pcfg = cfg.prometheus
        self.name = name
        self.labels = labels_of(self.pcfg)
        self.families = tuple(families) if families is not None else golden_families()
        self.client: QueryClient = client if client is not None else PromClient(self.pcfg)
        #: Time all of a window's queries share (default: the window's length).
        self.deadline_seconds = deadline_seconds or cfg.window.seconds
        #: The pod sets the last window found, to send its queries before the info query answers.
        #: None after a window whose guess was wrong: the next one waits for the info query,
        #: so a mesh that restarts pods every window pays for a wrong guess at most every
        #: other window.
        self._guess: _PodSets | None = _PodSets()
        self._pool = ThreadPoolExecutor(
            max_workers=self.pcfg.concurrency, thread_name_prefix="meshwatch-promql"
        )
        #: The recording rules this configuration reads (``prometheus.recorded``),
        #: and whether the last window found them loaded.
        self.rules: RuleSet | None = None
        if self.pcfg.recorded != "off":
            self.rules = self.rule_set()
        self._rules_seen = self.pcfg.recorded == "on"

    def rule_set(self) -> RuleSet:
        """The recording rules matching this configuration (``deploy/prometheus/``)."""
        return rules_for(self.cfg, self.families)

    @property
    def settle_seconds(self) -> float:
        """How long after a window's end to build it (scrapes in flight must land).

        With recording rules a window's rows exist once every rule has been
        evaluated for it: ``query_delay_seconds`` to one window later (each
        rule group runs at its own phase), so windows are built a window later.
        """
        if self.rules is not None and self._rules_seen:
            return self.pcfg.query_delay_seconds + self.cfg.window.seconds
        return self.pcfg.query_delay_seconds

    def window(self, window_end: float) -> Window:
        return Window(
            t1=window_end,
            seconds=self.cfg.window.seconds,
            selector=self.pcfg.selector,
            labels=self.labels,
            exclude_ports=tuple(self.cfg.collector.exclude_ports),
        )

    def plan(self, w: Window) -> list[tuple[Family, str]]:
        """Every family query of a window, with the family whose rows it returns."""
        return [(fam, q) for fam in self.families for q in family_queries(w, fam)]

    async def build_window(self, window_end: float) -> tuple[PromCycleReport, list[GoldenBatch]]:
        """All GoldenBatches of the window ending at ``window_end``, or a skip report.

        From the recording rules when ``prometheus.recorded`` asks for them and
        they are loaded (:meth:`_build_recorded`), else from raw series.
        """
        if self.rules is None:
            return await self._build_raw(window_end)
        return await self._build_recorded(window_end, self.rules)

    async def _build_raw(
        self, window_end: float, note: str | None = None
    ) -> tuple[PromCycleReport, list[GoldenBatch]]:
        """All GoldenBatches of the window from raw series, or a skip report.

        The family queries depend on the pods the info query sorts out
        (excluded, restarted, with new series). Rather than wait for it, the
        queries the previous window's pod sets imply are sent together with it:
        pods that are down stay down, and a window without restarts asks
        exactly what the last one asked. Only the queries the info query
        changes are sent again (``guessed_unused`` counts the wasted ones);
        a guess is never used for its answer, only the query text decides
        which answer belongs to which query.
        """
        started = time.perf_counter()
        report = PromCycleReport(window_end=window_end, recorded_note=note)
        budget = _Budget(time.monotonic() + self.deadline_seconds)
        w = self.window(window_end)
        sent: dict[str, asyncio.Task[Sequence[Row]]] = {}

        def send(expr: str) -> asyncio.Task[Sequence[Row]]:
            task = sent.get(expr)
            if task is None:
                task = sent[expr] = asyncio.create_task(self._query(expr, w.t1, budget))
            return task

        try:
            q_started = time.perf_counter()
            info_t, new_t = send(info_query(w)), send(new_series_query(w))
            guessed = [] if self._guess is None else self.plan(self._guess.apply(w))
            for _, q in guessed:
                send(q)
            report.guessed = len(guessed)
            info, new = await info_t, await new_t
            cov = self._cover(report, w, [*info, *new])
            reason = cov.skip_reason(w.t1, self.pcfg.selector)
            if reason is not None:
                budget.close()
                report.queries, report.attempts = budget.queries, budget.attempts
                return self._skip(report, reason, started), []
            pods = _PodSets(
                exclude=tuple(cov.excluded),
                restarted=tuple(cov.restarted),
                new_series=tuple(cov.new_series),
                bare=tuple(cov.bare),
            )
            w = pods.apply(w)
            plan = self.plan(w)
            needed = {q for _, q in plan}
            report.guessed_unused = sum(q not in needed for _, q in guessed)
            # A restart is news for one window only; after a wrong guess, do not guess.
            hit = self._guess is None or report.guessed_unused == 0
            self._guess = replace(pods, restarted=()) if hit else None
            rows = await asyncio.gather(*(send(q) for _, q in plan))
            report.query_seconds = time.perf_counter() - q_started
        except QueryError as exc:
            budget.close()  # before counting: nothing more is sent for this window
            report.queries = budget.queries
            report.attempts = budget.attempts
            return self._skip(report, f"Prometheus {self.pcfg.url}: {exc.reason}", started), []
        finally:
            budget.close()
            await self._cancel(sent.values())
        report.queries = budget.queries
        report.attempts = budget.attempts
        results = [(fam, r) for (fam, _), r in zip(plan, rows, strict=True)]
        return await self._finish(report, cov, results, started)

    async def _finish(
        self,
        report: PromCycleReport,
        cov: Coverage,
        results: Sequence[tuple[Family, Sequence[Row]]],
        started: float,
    ) -> tuple[PromCycleReport, list[GoldenBatch]]:
        """Rows of every family → batches, off the event loop; the report completed."""
        window_end = report.window_end
        f_started = time.perf_counter()
        folded = await asyncio.to_thread(
            fold,
            cov,
            results,
            self.labels,
            window_end=window_end,
            window_seconds=self.cfg.window.seconds,
            cluster=self.cfg.cluster,
            collector=self.name,
            exclude_ports=self.cfg.collector.exclude_ports,
        )
        report.fold_seconds = time.perf_counter() - f_started
        if folded.dropped_rows:
            log.debug("%s: %d row(s) of no counted pod", self.name, folded.dropped_rows)
        report.rows = folded.rows
        report.batches = len(folded.batches)
        report.samples = sum(len(b.samples) for b in folded.batches)
        report.seconds = time.perf_counter() - started
        if report.left_out:
            log.info(
                "%s: window %s leaves out %d pod(s) without data at an edge: %s",
                self.name,
                _iso(window_end),
                len(report.left_out),
                report.left_out[:5],
            )
        return report, folded.batches

    def _cover(self, report: PromCycleReport, w: Window, info: Sequence[Row]) -> Coverage:
        cov = cover(
            read_info(info, self.labels),
            self.labels,
            t1=w.t1,
            window=w.seconds,
            stale=self.pcfg.stale_after_seconds,
        )
        report.targets = len(cov.counted) + len(cov.down) + len(cov.left_out)
        report.up = len(cov.counted)
        report.down = [f"{t.pod}: {why}" for t, why in cov.down]
        report.left_out = [f"{t.pod}: {why}" for t, why in cov.left_out]
        report.restarted, report.new_series = len(cov.restarted), len(cov.new_series)
        return cov

    # -- recorded mode ----------------------------------------------------------------------

    async def _evaluations(
        self, rules: RuleSet, window_end: float, budget: _Budget, report: PromCycleReport
    ) -> tuple[dict[str, float], dict[str, str]] | None:
        """Per rule, the instant of its evaluation that covered the window, or why there is none.

        None when no rule of this fingerprint has written anything lately (not
        loaded). A rule whose evaluation for the window is still to come is
        polled for until the window's deadline; one whose later evaluations
        exist without this window's was missed or failed (its rows are not used).
        """
        w = self.cfg.window.seconds
        span = 2 * w
        # An evaluation covers the window end t1 from t1 + delay to t1 + delay + w;
        # [q - 2w, q] holds it, and holds only the evaluations of this and nearby windows.
        latest = window_end + rules.settle_seconds + span
        first = time.perf_counter()
        while True:
            at = min(time.time(), latest)
            report.rules_wait_seconds = time.perf_counter() - first
            rows = await self._query(rules.sentinel_query(span), at, budget)
            if not rows:
                return None
            found: dict[str, float] = {}
            missing: dict[str, str] = {}
            newest: dict[str, float] = {}
            for row in rows:
                name = row["metric"].get("__name__", "")
                for ts, v in row.get("values", ()):
                    end = float(v)
                    newest[name] = max(newest.get(name, end), end)
                    if abs(end - window_end) < 1e-3:
                        found[name] = float(ts)
            pending = []
            for rule in rules.rules:
                if rule.record in found:
                    continue
                if newest.get(rule.record, -math.inf) > window_end or at >= latest:
                    missing[rule.record] = "no evaluation of its rule for this window"
                else:
                    pending.append(rule.record)
            if not pending:
                return found, missing
            if budget.deadline - time.monotonic() < 0.3:
                for r in pending:
                    missing[r] = "its rule had not been evaluated for this window in time"
                return found, missing
            await asyncio.sleep(0.2)

    async def _build_recorded(
        self, window_end: float, rules: RuleSet
    ) -> tuple[PromCycleReport, list[GoldenBatch]]:
        """The window from the recording rules' rows, exactly as the raw mode builds it.

        The rules hold the raw queries with no pod named. Every workload with a
        pod the raw mode would name as restarted, down or left out, or without
        a workload label, is asked in the raw shape instead, restricted to that
        workload's pods, and its rows from the rules are dropped
        (:func:`~pipeline.collect.promwindow.raw_scope`). Latency series new in
        the window are added from a query of their own (the rules' ``increase``
        leaves them out, as the raw mode's does). A family whose rule
        missed the window is asked raw whole (``auto``) or skips the window
        (``on``). Rules not loaded: the raw mode (``auto``) or a skip (``on``).
        """
        started = time.perf_counter()
        auto = self.pcfg.recorded == "auto"
        budget = _Budget(time.monotonic() + self.deadline_seconds)
        report = PromCycleReport(window_end=window_end, mode="recorded")
        w = self.window(window_end)
        sent: list[asyncio.Task[Sequence[Row]]] = []

        def send(expr: str, at: float) -> asyncio.Task[Sequence[Row]]:
            task = asyncio.create_task(self._query(expr, at, budget))
            sent.append(task)
            return task

        try:
            q_started = time.perf_counter()
            evals = await self._evaluations(rules, window_end, budget, report)
            if evals is None:
                self._rules_seen = not auto
                note = f"recording rules {rules.fingerprint} not found in Prometheus"
                if auto:
                    budget.close()
                    return await self._build_raw(window_end, note)
                report.queries, report.attempts = budget.queries, budget.attempts
                return self._skip(report, note, started), []
            self._rules_seen = True
            found, missing = evals
            if missing and not auto:
                report.queries, report.attempts = budget.queries, budget.attempts
                first = next(iter(missing.items()))
                why = (
                    f"{len(missing)} recording rule(s) without this window ({first[0]}: {first[1]})"
                )
                return self._skip(report, why, started), []
            info_t = send(info_query(w), w.t1)
            new_t = send(new_histograms_query(w), w.t1)
            by_rule = {r.record: r for r in rules.rules}
            reads = [
                (by_rule[name], send(rules.read_query(by_rule[name]), te))
                for name, te in found.items()
            ]
            info, new_hists = await info_t, await new_t
            cov = self._cover(report, w, [*info, *_as_new_series(new_hists, self.labels)])
            reason = cov.skip_reason(w.t1, self.pcfg.selector)
            if reason is not None:
                budget.close()
                report.queries, report.attempts = budget.queries, budget.attempts
                return self._skip(report, reason, started), []
            hists = [row["metric"] for row in new_hists]
            pods = _PodSets(
                exclude=tuple(cov.excluded),
                restarted=tuple(cov.restarted),
                new_series=tuple(cov.new_series),
                bare=tuple(cov.bare),
            )
            scope = raw_scope(cov)
            report.raw_pods = len(scope.pods)
            new_only = tuple(p for p in cov.new_series if p not in scope.pods)
            whole = sorted({by_rule[name].family.name for name in missing})
            report.raw_families = whole
            if missing:
                report.recorded_note = f"{len(missing)} rule(s) missed the window: raw {whole}"
            raw: list[tuple[Family, _Take, asyncio.Task[Sequence[Row]]]] = []
            for fam in self.families:
                if fam.name in whole:
                    for q in family_queries(pods.apply(w), fam):
                        raw.append((fam, "all", send(q, w.t1)))
                    continue
                if scope:
                    only = replace(pods.apply(w), only=tuple(sorted(scope.pods)))
                    for q in family_queries(only, fam):
                        raw.append((fam, "in", send(q, w.t1)))
                if new_only:
                    # (Its pod matcher also reads same-named pods elsewhere: rows of
                    # workloads in scope are dropped, they come whole from raw.)
                    for q in new_series_sums(replace(w, new_series=new_only), fam, hists):
                        raw.append((fam, "out", send(q, w.t1)))
            results = await self._gather_recorded(window_end, reads, raw, scope, whole, report)
            # Query time: from the sentinel query that found every evaluation done.
            report.query_seconds = time.perf_counter() - q_started - report.rules_wait_seconds
        except QueryError as exc:
            budget.close()
            report.queries, report.attempts = budget.queries, budget.attempts
            return self._skip(report, f"Prometheus {self.pcfg.url}: {exc.reason}", started), []
        except _NotCoveredError as exc:
            budget.close()
            report.queries, report.attempts = budget.queries, budget.attempts
            return self._skip(report, str(exc), started), []
        finally:
            budget.close()
            await self._cancel(sent)
        report.queries, report.attempts = budget.queries, budget.attempts
        return await self._finish(report, cov, results, started)

    async def _gather_recorded(
        self,
        window_end: float,
        reads: Sequence[tuple[RecordedRule, asyncio.Task[Sequence[Row]]]],
        raw: Sequence[tuple[Family, _Take, asyncio.Task[Sequence[Row]]]],
        scope: RawScope,
        whole: Sequence[str],
        report: PromCycleReport,
    ) -> list[tuple[Family, Sequence[Row]]]:
        results: list[tuple[Family, Sequence[Row]]] = []
        for rule, task in reads:
            rows = await task
            if rule.family.name in whole:
                continue  # another rule of the family missed the window: all of it raw
            got = sentinel_of(rows)
            if got is None or abs(got - window_end) > 1e-3:
                # The evaluation the sentinel query named is not the one read: never
                # use rows of another window.
                raise _NotCoveredError(
                    f"{rule.record}: evaluation read covers {got}, not the window"
                )
            kept = recorded_rows(rows, scope, self.labels)
            report.recorded_rows += len(kept)
            results.append((rule.family, kept))
        for fam, take, task in raw:
            rows = await task
            if take != "all":
                rows = scoped_rows(rows, scope, self.labels, inside=take == "in")
            results.append((fam, rows))
        return results

    @staticmethod
    async def _cancel(tasks: Iterable[asyncio.Task[Sequence[Row]]]) -> None:
        """Drop guessed queries no plan needed (and the rest, after a failure)."""
        tasks = list(tasks)
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled():
                t.exception()  # retrieved: a failed guess is not an unhandled error
        await asyncio.gather(*pending, return_exceptions=True)

    def _skip(self, report: PromCycleReport, reason: str, started: float) -> PromCycleReport:
        report.skipped = reason
        report.seconds = time.perf_counter() - started
        log.warning(
            "%s: window ending %s skipped, no batch produced: %s",
            self.name,
            _iso(report.window_end),
            reason,
        )
        return report

    async def _query(self, expr: str, at: float, budget: _Budget) -> Sequence[Row]:
        """One instant query, retried with doubling backoff until the window's deadline."""
        loop = asyncio.get_running_loop()
        backoff = self.pcfg.backoff_seconds
        last: QueryError | None = None
        tries = 0
        budget.queries += 1
        for attempt in range(1, self.pcfg.max_attempts + 1):
            remaining = budget.deadline - time.monotonic()
            if remaining <= 0.05:
                break
            timeout = min(self.pcfg.timeout_seconds, remaining)
            tries += 1
            try:
                call = loop.run_in_executor(
                    self._pool, budget.attempt, self.client, expr, at, timeout
                )
                return await asyncio.wait_for(call, timeout + 0.5)
            except QueryError as exc:
                if not exc.retryable:
                    raise
                last = exc
            except TimeoutError:
                last = QueryError(f"no answer within {timeout:.1f}s", retryable=True)
            log.debug("%s: query attempt %d failed: %s", self.name, attempt, last.reason)
            pause = min(backoff, budget.deadline - time.monotonic())
            if attempt == self.pcfg.max_attempts or pause <= 0:
                break
            await asyncio.sleep(pause)
            backoff *= 2
        why = last.reason if last is not None else "no time left in the window"
        raise QueryError(f"{why} (gave up after {tries} attempt(s))", retryable=False)

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
