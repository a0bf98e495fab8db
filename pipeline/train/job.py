"""``meshwatch train``: history → features → models → evaluation → registry.

A one-shot job (a laptop or a Kubernetes CronJob run it the same way). Its
exit code says what happened, so a scheduler can alert on the right thing:

====  =========================================================
0     a candidate was published and promoted to production
1     error (broker, registry, an unexpected failure)
2     configuration error
3     not better: the candidate was worse than production (not published)
4     no data: too little history in the range to train on
====  =========================================================

``--default`` instead trains on simulated history and writes the artifact
shipped with the package (``models/default/``), evaluated the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.learned import fit
from models.registry import DEFAULT_DIR, ArtifactError, Loaded, Registry, write_dir
from pipeline.config import MeshwatchConfig
from pipeline.train import simulated
from pipeline.train.dataset import Dataset, DatasetBuilder, merge
from pipeline.train.evaluate import Evaluation, compare, evaluate
from pipeline.train.parallel import Reader, WorkerError

EXIT_PUBLISHED = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_NOT_BETTER = 3
EXIT_NO_DATA = 4
DEFAULT_HISTORY_WINDOWS = 1440  # 4 simulated hours
SCENARIO_WINDOWS = 290


@dataclass
class TrainOptions:
    since: float
    until: float
    source: str = "golden"  # golden | file | simulated | prometheus
    file: Path | None = None
    force: bool = False
    default: bool = False
    publish_event: bool = True
    max_rows: int = 300_000
    scenario_windows: int = SCENARIO_WINDOWS
    simulated_windows: int = DEFAULT_HISTORY_WINDOWS
    report_dir: Path | None = None
    seed: int = 0
    workload_share: float = 1.0
    #: golden-topic history: segments of the range and worker processes; None
    #: takes ``models.train_segments`` etc. (see :func:`_read_golden`)
    segments: int | None = None
    segment_minutes: float | None = None
    warmup_minutes: float | None = None
    workers: int | None = None
    #: what each worker process runs (a module-level function; tests replace it)
    reader: Reader | None = None


@dataclass
class TrainResult:
    exit_code: int
    version: str | None = None
    reasons: list[str] = field(default_factory=list)
    candidate: Evaluation | None = None
    production: Evaluation | None = None
    dataset: Dataset | None = None
    report: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    #: what of the range was read, how, and by how many workers (golden topic)
    history: dict[str, Any] = field(default_factory=dict)


def _read(
    builder: DatasetBuilder,
    cfg: MeshwatchConfig,
    opts: TrainOptions,
    advance: Any,
    stats: dict[str, int],
) -> None:
    from pipeline.train.history import file_chunks

    if opts.source == "file":
        assert opts.file is not None
        builder.add_all(file_chunks(opts.file, advance))
    elif opts.source == "prometheus":
        from pipeline.train.prometheus_history import prometheus_chunks

        builder.add_all(prometheus_chunks(cfg, opts.since, opts.until, progress=advance,
                                          stats=stats))  # fmt: skip
    elif opts.source == "simulated":
        for _, out, _sim in simulated.batches(opts.simulated_windows, seed=opts.seed + 101):
            samples = [s for b in out for s in b.samples]
            advance(len(samples))
            builder.add(samples)
    else:
        raise ValueError(f"unknown history source {opts.source!r}")


def _read_golden(
    cfg: MeshwatchConfig, opts: TrainOptions, advance: Any, result: TrainResult
) -> Dataset:
    """The golden topic's history: time segments of the range (or all of it), the
    partitions split over worker processes, their reservoirs merged.

    The range is ``(since, until]`` narrowed to the history the topic holds;
    ``models.train_segments`` segments of warm-up + sampled minutes are spread
    over it (all of it when they would cover it anyway).
    """
    from pipeline.train.history import Segment, describe_plan, plan_segments, topic_bounds
    from pipeline.train.parallel import (
        ReadTask,
        default_workers,
        read_parallel,
        read_partitions,
        split_partitions,
    )
    from pipeline.train.positions import partition_sizes

    m = cfg.models
    segments = m.train_segments if opts.segments is None else opts.segments
    seg_min = m.train_segment_minutes if opts.segment_minutes is None else opts.segment_minutes
    warm_min = m.train_warmup_minutes if opts.warmup_minutes is None else opts.warmup_minutes
    workers = opts.workers if opts.workers is not None else m.train_workers
    workers = workers or default_workers()
    bounds = topic_bounds(cfg, opts.since, opts.until)
    if bounds is None:
        result.history = {"segments": 0, "share_read": 0.0, "note": "no history in the range"}
        return merge([], opts.max_rows)
    lo, hi = bounds
    plan = plan_segments(lo, hi, segments=segments, segment_s=seg_min * 60.0,
                         warmup_s=warm_min * 60.0)  # fmt: skip
    result.history = describe_plan(plan, lo, hi)
    if plan[0].whole:  # all of (since, until]: the bounds may miss the last batch
        plan = [Segment(opts.since, opts.since, opts.until, whole=True)]
    parts_all = list(range(cfg.topics.specs["golden"].partitions))
    groups = split_partitions(parts_all, workers, partition_sizes(cfg) if workers > 1 else None)
    tasks = [
        ReadTask(cfg, g, tuple(plan), opts.since, opts.until, max_rows=opts.max_rows,
                 seed=opts.seed, workload_share=opts.workload_share, name=f"worker {i}")
        for i, g in enumerate(groups)
    ]  # fmt: skip
    parts = read_parallel(tasks, progress=advance, reader=opts.reader or read_partitions)
    stats: dict[str, int] = {}
    for p in parts:
        for k, v in p.stats.items():
            stats[k] = stats.get(k, 0) + v
    result.history.update(
        workers=len(tasks),
        worker_peak_rss_mib=[round(p.peak_rss_mib, 1) for p in parts],
        worker_cpu_s=[round(p.cpu_seconds, 1) for p in parts],
        records=stats,
    )
    return merge(parts, opts.max_rows)


def run(cfg: MeshwatchConfig, opts: TrainOptions, console: Console | None = None) -> TrainResult:
    console = console or Console(stderr=True)
    mcfg = cfg.models
    budget = mcfg.false_alert_budget
    result = TrainResult(EXIT_ERROR)
    registry = Registry.at(Path(mcfg.registry_dir))
    progress = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress:
        # 1. history → features
        t0 = time.perf_counter()
        task = progress.add_task("read history + features", total=None, info="")
        builder = DatasetBuilder(cfg.detector, max_rows=opts.max_rows, seed=opts.seed)
        stats: dict[str, int] = {}
        seen = [0]

        def advance(n: int) -> None:
            seen[0] += n
            progress.update(task, advance=n, info=f"{seen[0]:,} samples")

        from pipeline.train.prometheus_history import HistoryUnavailableError

        try:
            if opts.source == "golden":
                ds = _read_golden(cfg, opts, advance, result)
            else:
                _read(builder, cfg, opts, advance, stats)
                ds = builder.finish()
        except HistoryUnavailableError as exc:  # transient: the CronJob retries exit 1
            result.exit_code = EXIT_ERROR
            result.reasons.append(str(exc))
            return result
        except WorkerError as exc:  # a partial history would train a model that misses routes
            result.exit_code = EXIT_ERROR
            result.reasons.append(f"reading history failed: {exc}")
            return result
        progress.update(task, total=seen[0], completed=seen[0])
        result.dataset = ds
        result.timings["history"] = time.perf_counter() - t0
        if len(ds) < mcfg.min_training_windows:
            result.exit_code = EXIT_NO_DATA
            result.reasons.append(
                f"only {len(ds):,} judged route-windows in the range "
                f"(at least {mcfg.min_training_windows:,} needed)"
            )
            return result

        # 2. train + calibrate
        t0 = time.perf_counter()
        task = progress.add_task("train + calibrate", total=1, info="")
        holdout = ds.holdout(mcfg.holdout_fraction)
        model = fit(
            ds.features,
            ds.judged,
            ds.labels,
            holdout=holdout,
            false_alert_budget=budget,
            seed=opts.seed,
            routes=ds.route,  # per-route parameters where a route has enough history
            route_min_windows=mcfg.route_min_windows,
            route_quantile=mcfg.route_quantile,
        )
        progress.update(task, completed=1, info=", ".join(model.kinds))
        result.timings["train"] = time.perf_counter() - t0
        if not model.kinds:
            result.exit_code = EXIT_NO_DATA
            result.reasons.append("no kind had enough judged windows to train on")
            return result

        # 3. evaluate: held-back history and labelled scenarios
        t0 = time.perf_counter()
        task = progress.add_task("evaluate", total=2, info="labelled scenarios")
        scen = scenario_dataset(cfg, opts)
        progress.update(task, advance=1, info="candidate vs production")
        production = _production(registry, opts, result)
        rows = np.flatnonzero(holdout)
        result.candidate = evaluate("candidate", model, ds, rows, scen, budget)
        if production is not None:
            result.production = evaluate(
                f"production {production.version}", production.model, ds, rows, scen, budget
            )
        progress.update(task, advance=1, info="")
        result.timings["evaluate"] = time.perf_counter() - t0
        ok, reasons = compare(result.candidate, result.production, budget)
        result.reasons += reasons

        # 4. report
        t0 = time.perf_counter()
        task = progress.add_task("report", total=1, info="")
        from pipeline.train.report import write_report

        report_dir = opts.report_dir or Path(mcfg.reports_dir) / time.strftime(
            "train-%Y%m%dT%H%M%SZ", time.gmtime()
        )
        result.report = write_report(report_dir, result, model, ds, holdout, scen, budget)
        _add_history_to_summary(report_dir, result)
        progress.update(task, completed=1, info=str(result.report))
        result.timings["report"] = time.perf_counter() - t0

        # 5. publish
        task = progress.add_task("publish", total=1, info="")
        if not ok and not opts.force:
            result.exit_code = EXIT_NOT_BETTER
            progress.update(task, completed=1, info="not published")
            return result
        if opts.force and not ok:
            result.reasons.append("published anyway (--force)")
        manifest_args = _manifest_args(ds, opts, result, budget)
        if opts.default:
            result.manifest = write_dir(DEFAULT_DIR, model, **manifest_args)
            result.version = "default"
        else:
            result.version = registry.publish(model, **manifest_args)
            previous = registry.production()
            registry.promote(result.version)
            if opts.publish_event:
                from pipeline.registry.events import ModelEvent, publish_event

                publish_event(
                    cfg,
                    ModelEvent(
                        action="publish",
                        version=result.version,
                        previous=previous,
                        registry=str(registry.storage.describe()),
                    ),
                )
        progress.update(task, completed=1, info=f"version {result.version}")
    result.exit_code = EXIT_PUBLISHED
    return result


def _production(registry: Registry, opts: TrainOptions, result: TrainResult) -> Loaded | None:
    try:
        if opts.default:
            return None  # the default is being rebuilt: nothing to compare with
        return registry.load_production()
    except ArtifactError as exc:
        result.reasons.append(f"production model unusable, compared with nothing: {exc}")
        return None


def scenario_dataset(cfg: MeshwatchConfig, opts: TrainOptions) -> Dataset | None:
    if opts.scenario_windows <= 0:
        return None
    hist = simulated.history(
        opts.scenario_windows, scenario=simulated.evaluation_scenario(), seed=opts.seed + 7
    )
    builder = DatasetBuilder(cfg.detector, max_rows=10**9, labeller=hist.anomalous)
    builder.add(hist.samples)
    return builder.finish()


def _manifest_args(
    ds: Dataset, opts: TrainOptions, result: TrainResult, budget: float
) -> dict[str, Any]:
    return {
        "training": {
            "source": opts.source if opts.source != "file" else f"file:{opts.file}",
            "window_start": ds.t_min,
            "window_end": ds.t_max,
            "samples": ds.samples_seen,
            "routes": ds.routes_seen,
            "windows": ds.windows_seen,
            "rows_sampled": len(ds),
            "workload_share": opts.workload_share,
            "history": result.history,
        },
        "metrics": {
            "candidate": result.candidate.as_dict() if result.candidate else {},
            "production": result.production.as_dict() if result.production else {},
            "reasons": result.reasons,
        },
        "false_alert_budget": budget,
        "note": "built by meshwatch train --default" if opts.default else "meshwatch train",
    }


def _add_history_to_summary(report_dir: Path, result: TrainResult) -> None:
    """summary.json also says what share of the range was read, and how."""
    import json

    path = report_dir / "summary.json"
    if result.history and path.exists():
        summary = json.loads(path.read_text())
        summary["history"] = result.history
        path.write_text(json.dumps(summary, indent=1, default=str))


def summary_table(result: TrainResult) -> Table:
    table = Table(title="meshwatch train")
    table.add_column("kind")
    table.add_column("flagged held-back (cand.)", justify="right")
    table.add_column("flagged held-back (prod.)", justify="right")
    table.add_column("AUC baseline", justify="right")
    table.add_column("AUC cand.", justify="right")
    table.add_column("AUC prod.", justify="right")
    table.add_column("recall cand.", justify="right")
    cand = result.candidate or Evaluation("candidate")
    prod = result.production or Evaluation("production")

    def f(d: dict[str, float], k: str, spec: str) -> str:
        return format(d[k], spec) if k in d else "–"

    for k in sorted(set(cand.flag_rate) | set(cand.auc)):
        table.add_row(
            k,
            f(cand.flag_rate, k, ".2e"),
            f(prod.flag_rate, k, ".2e"),
            f(cand.baseline_auc, k, ".4f"),
            f(cand.auc, k, ".4f"),
            f(prod.auc, k, ".4f"),
            f(cand.recall, k, ".2f"),
        )
    return table


__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_BETTER",
    "EXIT_NO_DATA",
    "EXIT_PUBLISHED",
    "TrainOptions",
    "TrainResult",
    "run",
    "summary_table",
]
