"""``meshwatch``: one command line for every stage and tool.

Each stage runs in the foreground until SIGTERM or Ctrl-C, which drain the
batch in hand, commit and exit 0 — what a Kubernetes Deployment expects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import __version__
from pipeline.config import ConfigError, MeshwatchConfig, effective_config, load_config

if TYPE_CHECKING:
    from pipeline.stage.loop import Processor

log = logging.getLogger("meshwatch")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(max(logging.WARNING, getattr(logging, level)))


def _load(args: argparse.Namespace) -> MeshwatchConfig:
    overrides: dict[str, object] = {}
    if getattr(args, "bootstrap", None):
        overrides["kafka"] = {"bootstrap_servers": args.bootstrap}
    if getattr(args, "metrics_address", None):
        overrides["observe"] = {"address": args.metrics_address}
    cfg = load_config(args.config, overrides or None)
    from pipeline.observe.logs import configure

    configure(args.log_level or cfg.log_level, cfg.observe.log_format)
    return cfg


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: draining and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


# -- commands ---------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"configuration {exc.source} is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
    data = effective_config(cfg)
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")
    print(f"# configuration OK ({args.file or 'defaults + environment'})", file=sys.stderr)
    return EXIT_OK


def cmd_broker(args: argparse.Namespace) -> int:
    from pipeline.kafka.embedded import EmbeddedBroker
    from pipeline.kafka.topics import ensure_topics

    stop = _stop_on_signals()
    with EmbeddedBroker(port=args.port) as broker:
        cfg = load_config(args.config, {"kafka": {"bootstrap_servers": [broker.bootstrap]}})
        ensure_topics(cfg)
        print(f"embedded broker (Tansu) listening on {broker.bootstrap}", flush=True)
        print("topics: " + ", ".join(sorted(cfg.topics.name(r) for r in cfg.topics.specs)))
        print("Ctrl-C to stop (everything it holds is lost)", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                print("the broker exited:\n" + broker.log_tail(), file=sys.stderr)
                return EXIT_ERROR
    return EXIT_OK


def _run_stage(cfg: MeshwatchConfig, processor: Processor, topic: str, group: str) -> int:
    from pipeline.kafka.topics import ensure_topics
    from pipeline.observe.endpoint import ObservabilityEndpoint
    from pipeline.stage.loop import StageRunner

    stop = _stop_on_signals()
    # a stage that keeps metrics of its own (the detector's route scores) has
    # them served on the same /metrics
    metrics = getattr(processor, "metrics", None)
    runner = StageRunner(cfg, processor, topic, group, stop=stop, metrics=metrics)
    endpoint = None
    if cfg.observe.enabled:
        endpoint = ObservabilityEndpoint(
            cfg.observe.address, runner.metrics.registry, live=runner.live, ready=runner.is_ready
        ).start()
    try:
        ensure_topics(cfg)
        runner.run()
    finally:
        if endpoint is not None:
            endpoint.stop()
    return EXIT_OK


def cmd_detect(args: argparse.Namespace) -> int:
    from pipeline.detect.stage import DetectorProcessor

    cfg = _load(args)
    processor = DetectorProcessor(cfg, group_id=args.group)
    from pipeline.registry.follow import follow_models

    follow_models(cfg, processor.engine.scoring)  # trained models: load, then follow promotions
    return _run_stage(cfg, processor, cfg.topics.golden, args.group)


def cmd_alert(args: argparse.Namespace) -> int:
    from pipeline.alert.stage import AlerterProcessor

    cfg = _load(args)
    processor = AlerterProcessor(cfg)
    try:
        return _run_stage(cfg, processor, cfg.topics.findings, args.group)
    finally:
        processor.close()


def cmd_alert_test(args: argparse.Namespace) -> int:
    """Send a clearly marked test notification through one configured sink."""
    import time

    from pipeline.alert.delivery import DeliveryOutcome, deliver, make_client
    from pipeline.alert.message import Notification, render_links, sample_notification
    from pipeline.alert.sinks import build_sink
    from pipeline.alert.sinks.redact import redact_text
    from pipeline.schema import finding_id

    cfg = _load(args)
    entries = {s.name: s for s in cfg.alerter.sinks}
    entry = entries.get(args.destination)
    if entry is None:
        known = ", ".join(sorted(entries)) or "none"
        print(
            f"alert test: no sink named {args.destination!r} (configured: {known})", file=sys.stderr
        )
        return EXIT_CONFIG
    try:
        sink = build_sink(entry)
    except (OSError, ValueError) as exc:
        print(
            f"alert test: sink {entry.name!r} cannot be built: {redact_text(str(exc))}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    now = time.time()
    sample = sample_notification(now)
    firing = sample_notification(now, links=render_links(cfg.alerter.links, sample.finding))

    def resolved(refs: dict[str, str]) -> Notification:
        f = firing.finding
        done = f.model_copy(
            update={
                "status": "resolved",
                "observed": 60.0,
                "id": finding_id(f.route_key, f.kind, f.window_end, "resolved"),
            }
        )
        incident = firing.incident.model_copy(
            update={"status": "resolved", "last_finding": done, "sink_refs": {sink.name: refs}}
        )
        return Notification(incident, done, "resolved", test=True, links=dict(firing.links))

    async def run() -> list[tuple[str, DeliveryOutcome]]:
        retry = cfg.alerter.retry
        async with make_client(retry.timeout_seconds) as client:
            results = [("firing", await deliver(sink, firing, client, retry))]
            if args.resolve and results[0][1].delivered:
                n = resolved(dict(results[0][1].refs))
                results.append(("resolved", await deliver(sink, n, client, retry)))
            return results

    results = asyncio.run(run())
    for action, outcome in results:
        verdict = "delivered" if outcome.delivered else "FAILED"
        print(f"test {action} to {sink.name!r} ({entry.type}): {verdict}")
        print(f"  status:   {outcome.last_status if outcome.last_status is not None else '-'}")
        print(f"  attempts: {outcome.attempts} (waited {outcome.waited_seconds:.1f} s)")
        print(f"  refs:     {json.dumps(outcome.refs, sort_keys=True)}")
        if outcome.error:
            kind = "permanent" if outcome.permanent else "gave up"
            print(f"  error:    {redact_text(outcome.error)} ({kind})")
    return EXIT_OK if all(o.delivered for _, o in results) else EXIT_ERROR


def _silence_cfg(args: argparse.Namespace) -> MeshwatchConfig:
    cfg = _load(args)
    from pipeline.kafka.topics import ensure_topics

    ensure_topics(cfg)
    return cfg


def cmd_silence_add(args: argparse.Namespace) -> int:
    """Mute incidents matching every MATCHER for a while; prints the new silence's id."""
    import getpass
    import time

    from pipeline.alert.silences import new_silence, parse_duration, parse_time, write_silence

    now = time.time()
    try:
        starts = parse_time(args.starts_at, now) if args.starts_at else now
        if args.ends_at:
            ends = parse_time(args.ends_at, now)
        else:
            ends = starts + parse_duration(args.duration)
        author = args.author or getpass.getuser()
        silence = new_silence(
            args.matchers,
            starts_at=starts,
            ends_at=ends,
            created_by=author,
            comment=args.comment,
            now=now,
        )
    except ValueError as exc:
        print(f"silence add: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    write_silence(_silence_cfg(args), silence)
    print(silence.id)
    return EXIT_OK


def cmd_silence_list(args: argparse.Namespace) -> int:
    import time

    from pipeline.alert.silences import format_silences, read_silences

    now = time.time()
    found = read_silences(_silence_cfg(args)).values()
    shown = [s for s in found if args.all or s.state(now) != "expired"]
    if args.json:
        print(json.dumps([s.model_dump(mode="json", by_alias=True) for s in shown], indent=2))
    else:
        print(format_silences(shown, now))
    return EXIT_OK


def cmd_silence_expire(args: argparse.Namespace) -> int:
    import time

    from pipeline.alert.silences import expired, read_silences, write_silence

    cfg = _silence_cfg(args)
    known = read_silences(cfg)
    missing = [sid for sid in args.ids if sid not in known]
    if missing:
        print(f"silence expire: no silence with id {', '.join(missing)}", file=sys.stderr)
        return EXIT_CONFIG
    now = time.time()
    for sid in args.ids:
        if known[sid].state(now) == "expired":
            print(f"{sid}: already expired")
            continue
        write_silence(cfg, expired(known[sid], now))
        print(f"{sid}: expired")
    return EXIT_OK


def cmd_collect(args: argparse.Namespace) -> int:
    from pipeline.collect.discovery import DiscoveryError
    from pipeline.collect.service import CollectorService, MetricsAddressError
    from pipeline.kafka.clients import make_producer
    from pipeline.kafka.topics import ensure_topics

    cfg = _load(args)
    if (
        cfg.collector.source != "prometheus"
        and cfg.collector.discovery.kind == "static"
        and not cfg.collector.targets
    ):
        print("collector.targets is empty: nothing to scrape", file=sys.stderr)
        return EXIT_CONFIG
    ensure_topics(cfg)
    producer = make_producer(cfg.kafka, "collector")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with CollectorService(cfg, producer) as service:
            await service.run(stop)

    try:
        asyncio.run(main())
    except DiscoveryError as exc:
        print(f"collector.discovery: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except MetricsAddressError as exc:
        print(f"collector.metrics_address / observe.address: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        producer.flush(timeout=10)
        producer.close(timeout=10)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo.run import run_demo

    return run_demo(
        duration=args.duration,
        scenario=args.scenario,
        window_seconds=args.window,
        out_dir=args.out,
        live=not args.no_live,
    )


def cmd_backtest(args: argparse.Namespace) -> int:
    from pipeline.backtest.inputs import (
        PLAIN_DETECTOR_KINDS,
        InputError,
        parse_time,
        read_golden_csv,
        read_golden_jsonl,
        read_plain_csv,
        read_topic,
    )
    from pipeline.backtest.run import backtest, write_outputs

    cfg = _load(args)
    kinds: tuple[str, ...] | None = None
    try:
        if args.input is None:
            if args.start is None or args.end is None:
                print(
                    "backtest: give an INPUT file, or --from and --to for the topic",
                    file=sys.stderr,
                )
                return EXIT_CONFIG
            topic = args.topic or cfg.topics.golden
            samples = read_topic(cfg.kafka, topic, parse_time(args.start), parse_time(args.end))
            source = f"{topic} [{args.start}, {args.end})"
        else:
            fmt = args.format
            if fmt == "auto":
                fmt = _guess_format(args.input, args.kind)
            if fmt == "plain-csv":
                if args.kind is None:
                    print("backtest: a plain timestamp,value CSV needs --kind", file=sys.stderr)
                    return EXIT_CONFIG
                samples, _ = read_plain_csv(args.input, args.kind, requests=args.requests)
                kinds = PLAIN_DETECTOR_KINDS[args.kind]
            elif fmt == "golden-csv":
                samples = read_golden_csv(args.input)
            else:
                samples = read_golden_jsonl(args.input)
            source = str(args.input)
    except (InputError, OSError) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return EXIT_ERROR
    result = backtest(samples, cfg.detector, kinds=kinds)
    written = write_outputs(result, args.out, charts=args.charts)
    fired = len(result.alerts())
    print(
        f"backtest of {source}: {result.samples} samples in {result.windows} windows, "
        f"{fired} finding(s) fired, {len(result.findings) - fired} resolved"
    )
    for path in written:
        print(f"  wrote {path}")
    return EXIT_OK


def _guess_format(path: Path, kind: str | None) -> str:
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "golden-jsonl"
    with path.open() as fh:
        header = fh.readline().lower()
    if "window_end" in header and "namespace" in header:
        return "golden-csv"
    return "plain-csv"


# -- parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshwatch",
        description="Streaming anomaly detection for the Linkerd service mesh.",
    )
    p.add_argument("--version", action="version", version=f"meshwatch {__version__}")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(name: str, help_: str, group: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("-c", "--config", type=Path, default=None, help="YAML config file")
        sp.add_argument("--bootstrap", default=None, help="override kafka.bootstrap_servers")
        sp.add_argument(
            "--metrics-address",
            default=None,
            help="override observe.address (host:port of /metrics, /healthz, /readyz)",
        )
        if group:
            sp.add_argument("--group", default=group, help=f"consumer group (default {group})")
        return sp

    cfg = sub.add_parser("config", help="inspect configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = cfg_sub.add_parser(
        "check", help="validate a config file and print the effective config, secrets masked"
    )
    check.add_argument("file", nargs="?", type=Path, default=None)
    check.add_argument("--format", choices=["yaml", "json"], default="yaml")
    check.set_defaults(func=cmd_config_check)

    br = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu)")
    br.add_argument("--port", type=int, default=9092)
    br.add_argument("-c", "--config", type=Path, default=None)
    br.set_defaults(func=cmd_broker)

    stage("collect", "scrape proxies each window and produce GoldenBatches").set_defaults(
        func=cmd_collect
    )
    stage("detect", "consume GoldenBatches and produce Findings", "detector").set_defaults(
        func=cmd_detect
    )
    alert = stage("alert", "turn Findings into incidents and notify sinks", "alerter")
    alert.set_defaults(func=cmd_alert)
    alert_sub = alert.add_subparsers(dest="alert_command", metavar="ACTION")
    alert_test = alert_sub.add_parser(
        "test",
        help="send a marked test notification through one configured sink",
        description=(
            "Send a clearly marked test notification through the sink named DESTINATION "
            "and print the result; exit 0 if delivered, 1 if not, 2 for an unknown name."
        ),
    )
    alert_test.add_argument("destination", metavar="DESTINATION", help="a sink's name")
    alert_test.add_argument(
        "-c", "--config", type=Path, default=argparse.SUPPRESS, help="YAML config file"
    )
    alert_test.add_argument(
        "--resolve", action="store_true", help="also send the resolve (closes tickets and pages)"
    )
    alert_test.set_defaults(func=cmd_alert_test)

    silence = sub.add_parser(
        "silence",
        help="mute incidents for a while (add, list, expire)",
        description=(
            "Silences mute notifications about incidents whose labels match every matcher "
            "(namespace, workload, workload_kind, direction, route, route_key, kind, severity; "
            "operators =, !=, =~, !~; regular expressions match the whole value). Muted "
            "incidents are still tracked; what is owed is sent when the silence ends."
        ),
    )
    silence_sub = silence.add_subparsers(dest="silence_command", required=True, metavar="ACTION")

    def silence_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = silence_sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("-c", "--config", type=Path, default=None, help="YAML config file")
        sp.add_argument("--bootstrap", default=None, help="override kafka.bootstrap_servers")
        return sp

    s_add = silence_cmd("add", "add a silence; prints its id")
    s_add.add_argument(
        "matchers", nargs="+", metavar="MATCHER", help='e.g. namespace=shop workload=~"web|api"'
    )
    when = s_add.add_mutually_exclusive_group()
    when.add_argument("-d", "--duration", default="1h", help="how long, e.g. 30m, 2h (default 1h)")
    when.add_argument("--ends-at", default=None, help="end time, ISO 8601 with offset")
    s_add.add_argument("--starts-at", default=None, help="start time (default now)")
    s_add.add_argument("-m", "--comment", default="", help="why (shown in list)")
    s_add.add_argument("--author", default=None, help="who (default: the login name)")
    s_add.set_defaults(func=cmd_silence_add)
    s_list = silence_cmd("list", "list active and pending silences")
    s_list.add_argument("-a", "--all", action="store_true", help="include expired ones")
    s_list.add_argument("--json", action="store_true", help="JSON instead of a table")
    s_list.set_defaults(func=cmd_silence_list)
    s_expire = silence_cmd("expire", "end silences now")
    s_expire.add_argument("ids", nargs="+", metavar="ID")
    s_expire.set_defaults(func=cmd_silence_expire)

    demo = sub.add_parser(
        "demo",
        help="everything on one machine: broker, simulated mesh, all stages, a webhook",
        description=(
            "Start the embedded broker, a simulated Linkerd mesh, the collector, the "
            "detector, the alerter and a local webhook receiver; inject a fault once the "
            "baselines are warm and show it alerted and resolved."
        ),
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    demo.add_argument("--scenario", type=Path, default=None, help="fault scenario YAML")
    demo.add_argument("--window", type=float, default=1.0, help="window length in seconds")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    demo.add_argument("--no-live", action="store_true", help="plain log lines, no live display")
    demo.set_defaults(func=cmd_demo)

    bt = sub.add_parser(
        "backtest",
        help="run the detectors over recorded history; write scores, findings and charts",
        description=(
            "Run the detectors over recorded golden history and write per-point scores "
            "and findings (CSV and JSON) and PNG charts. INPUT is JSON lines of "
            "GoldenBatches or GoldenSamples, a CSV of GoldenSamples, or a plain "
            "timestamp,value CSV of one metric (with --kind); without INPUT, the golden "
            "topic between --from and --to is read."
        ),
    )
    bt.add_argument("input", nargs="?", type=Path, default=None, help="history file")
    bt.add_argument(
        "--format",
        choices=["auto", "golden-jsonl", "golden-csv", "plain-csv"],
        default="auto",
        help="input format (default: by extension and header)",
    )
    bt.add_argument(
        "--kind",
        choices=["latency", "error_rate", "errors", "traffic", "tls_failure", "cert_ttl"],
        default=None,
        help="what the value of a plain CSV is",
    )
    bt.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="plain CSV: nominal requests per window behind a ratio (default 1000)",
    )
    bt.add_argument("--from", dest="start", default=None, help="topic range start (ISO or unix)")
    bt.add_argument("--to", dest="end", default=None, help="topic range end (ISO or unix)")
    bt.add_argument("--topic", default=None, help="topic to read (default: the golden topic)")
    bt.add_argument("--bootstrap", default=None, help="override kafka.bootstrap_servers")
    bt.add_argument("-c", "--config", type=Path, default=None, help="YAML config file")
    bt.add_argument("--out", type=Path, default=Path("backtest-out"), help="output folder")
    bt.add_argument("--charts", type=int, default=4, help="PNG charts to draw (default 4)")
    bt.set_defaults(func=cmd_backtest)

    from pipeline.train.commands import add_commands  # train, models list|show|promote|rollback

    add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level or "INFO" if args.command != "demo" else "WARNING")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration {exc.source} is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from kafka.errors import KafkaError

        from pipeline.kafka.embedded import BrokerError

        if isinstance(exc, KafkaError | BrokerError):
            print(f"meshwatch: Kafka problem: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(
                "  check kafka.bootstrap_servers (and security settings) in the config",
                file=sys.stderr,
            )
            return EXIT_ERROR
        raise


if __name__ == "__main__":
    raise SystemExit(main())
