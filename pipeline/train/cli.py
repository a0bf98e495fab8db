"""``meshwatch train`` and ``meshwatch models list|show|promote|rollback``.

Registered into the main parser by :func:`add_commands` (kept here so the
main command line stays one screen of stage commands).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from models.registry import ArtifactError, Registry, manifest_text
from pipeline.config import MeshwatchConfig, load_config
from pipeline.train.job import (
    EXIT_ERROR,
    EXIT_NO_DATA,
    EXIT_NOT_BETTER,
    EXIT_PUBLISHED,
    TrainOptions,
    run,
    summary_table,
)

EXIT_OK = 0
EXIT_CONFIG = 2


def _when(text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        return t.timestamp()


def _cfg(args: argparse.Namespace) -> MeshwatchConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "bootstrap", None):
        overrides["kafka"] = {"bootstrap_servers": args.bootstrap}
    if getattr(args, "registry", None):
        overrides["models"] = {"registry_dir": str(args.registry)}
    if getattr(args, "prometheus_url", None):
        overrides["prometheus"] = {"url": args.prometheus_url}
    return load_config(args.config, overrides or None)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    if not 0 < args.workload_share <= 1:
        print("--workload-share must be in (0, 1]", file=sys.stderr)
        return EXIT_CONFIG
    for name in ("segments", "segment_minutes", "warmup_minutes", "workers"):
        value = getattr(args, name, None)
        if value is not None and (value < 0 or (name == "segment_minutes" and value == 0)):
            flag = "--" + name.replace("_", "-")
            print(f"{flag} must be {'> 0' if name == 'segment_minutes' else '>= 0'}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
    until = _when(args.until, time.time())
    since = _when(args.since, until - cfg.models.train_hours * 3600.0)
    source = "simulated" if args.default else ("file" if args.input else "golden")
    if source == "golden":  # no input file: --source, else models.history_source
        source = getattr(args, "source", None) or cfg.models.history_source
    opts = TrainOptions(
        since=since,
        until=until,
        source=source,
        file=args.input,
        force=args.force,
        default=args.default,
        publish_event=not args.no_event,
        report_dir=args.report,
        scenario_windows=args.scenario_windows,
        workload_share=args.workload_share,
        segments=getattr(args, "segments", None),
        segment_minutes=getattr(args, "segment_minutes", None),
        warmup_minutes=getattr(args, "warmup_minutes", None),
        workers=getattr(args, "workers", None),
    )
    console = Console(stderr=True)
    metrics = _serve_metrics(args.metrics_address)
    try:
        result = run(cfg, opts, console)
    except ArtifactError as exc:
        console.print(f"[red]registry error:[/red] {exc}")
        return EXIT_ERROR
    if metrics is not None:
        metrics(result.exit_code, result.timings)
    out = Console()
    if result.candidate is not None:
        out.print(summary_table(result))
    for reason in result.reasons:
        out.print(f"  - {reason}")
    if result.history.get("range_hours") is not None:
        from pipeline.train.history import plan_text

        out.print(f"history: {plan_text(result.history)}; "
                  f"{result.history.get('workers', 1)} worker(s)")  # fmt: skip
    if result.report:
        out.print(f"report: {result.report}")
    verdict = {
        EXIT_PUBLISHED: f"published {result.version}",
        EXIT_NOT_BETTER: "not published: the candidate is worse than production (exit 3)",
        EXIT_NO_DATA: "not published: not enough history (exit 4)",
    }.get(result.exit_code, "failed")
    out.print(verdict)
    return result.exit_code


def _serve_metrics(address: str | None) -> Any:
    """While the job runs, /metrics says it is running; at the end, how it went."""
    if not address:
        return None
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    host, _, port = address.rpartition(":")
    registry = CollectorRegistry()
    running = Gauge("meshwatch_train_running", "1 while a training run is in progress",
                    registry=registry)  # fmt: skip
    exit_code = Gauge("meshwatch_train_exit_code", "Exit code of the run", registry=registry)
    phase = Gauge("meshwatch_train_phase_seconds", "Seconds per phase", ["phase"],
                  registry=registry)  # fmt: skip
    start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=registry)
    running.set(1)

    def done(code: int, timings: dict[str, float]) -> None:
        running.set(0)
        exit_code.set(code)
        for name, secs in timings.items():
            phase.labels(name).set(secs)

    return done


def _registry(args: argparse.Namespace) -> tuple[MeshwatchConfig, Registry]:
    cfg = _cfg(args)
    return cfg, Registry.at(Path(cfg.models.registry_dir))


def cmd_models_list(args: argparse.Namespace) -> int:
    _, reg = _registry(args)
    prod = reg.production()
    table = Table(title=f"models in {reg.storage.describe()}")
    for col in ("version", "created", "routes", "samples", "kinds", "in production"):
        table.add_column(col)
    for v in reg.versions():
        try:
            m = reg.manifest(v)
        except ArtifactError as exc:
            table.add_row(v, "unreadable", "", "", str(exc), "")
            continue
        tr = m.get("training", {})
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m.get("created_at", 0)))
        table.add_row(
            v,
            created,
            str(tr.get("routes", "")),
            str(tr.get("samples", "")),
            ",".join(m.get("kinds", [])),
            "yes" if v == prod else "",
        )
    Console().print(table)
    if prod is None:
        print("no production version: detectors use the shipped default model")
    return EXIT_OK


def cmd_models_show(args: argparse.Namespace) -> int:
    _, reg = _registry(args)
    version = args.version or reg.production()
    if version is None:  # what the detectors use then: the shipped default
        from models.registry import DEFAULT_DIR, load_dir

        try:
            print(manifest_text(load_dir(DEFAULT_DIR).manifest))
        except ArtifactError as exc:
            print(f"no production version, and the shipped default is unusable: {exc}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_ERROR
        print("no production version: this is the shipped default (verified)")
        return EXIT_OK
    try:
        manifest = reg.manifest(version)
        reg.load(version)
        status = "verified: checksums and versions match"
    except ArtifactError as exc:
        status = f"UNUSABLE: {exc}"
        if version not in reg.versions():
            print(str(exc), file=sys.stderr)
            return EXIT_ERROR
        manifest = reg.manifest(version)
    print(manifest_text(manifest))
    print(status)
    return EXIT_OK if status.startswith("verified") else EXIT_ERROR


def _announce(cfg: MeshwatchConfig, reg: Registry, action: str, pointer: dict[str, Any],
              previous: str | None, no_event: bool) -> int:  # fmt: skip
    print(f"production is now {pointer['version']} (was {previous or 'none'})")
    if no_event:
        return EXIT_OK
    from pipeline.registry.events import ModelEvent, publish_event

    try:
        publish_event(
            cfg,
            ModelEvent(
                action=action,
                version=str(pointer["version"]),
                previous=previous,
                registry=reg.storage.describe(),
            ),
        )
    except Exception as exc:  # the pointer moved; detectors see it at their next start
        print(f"could not publish the models event: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"announced on {cfg.topics.models}")
    return EXIT_OK


def cmd_models_promote(args: argparse.Namespace) -> int:
    cfg, reg = _registry(args)
    previous = reg.production()
    try:
        pointer = reg.promote(args.version)
    except ArtifactError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return _announce(cfg, reg, "promote", pointer, previous, args.no_event)


def cmd_models_rollback(args: argparse.Namespace) -> int:
    cfg, reg = _registry(args)
    previous = reg.production()
    try:
        pointer = reg.rollback()
    except ArtifactError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return _announce(cfg, reg, "rollback", pointer, previous, args.no_event)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=1))
