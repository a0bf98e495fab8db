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
    runner = StageRunner(cfg, processor, topic, group, stop=stop)
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
    return _run_stage(cfg, DetectorProcessor(cfg), cfg.topics.golden, args.group)


def cmd_alert(args: argparse.Namespace) -> int:
    from pipeline.alert.stage import AlerterProcessor

    cfg = _load(args)
    processor = AlerterProcessor(cfg)
    try:
        return _run_stage(cfg, processor, cfg.topics.findings, args.group)
    finally:
        processor.close()


def cmd_collect(args: argparse.Namespace) -> int:
    from pipeline.collect.collector import Collector
    from pipeline.collect.targets import Target
    from pipeline.kafka.clients import make_producer
    from pipeline.kafka.topics import ensure_topics

    cfg = _load(args)
    if not cfg.collector.targets:
        print("collector.targets is empty: nothing to scrape", file=sys.stderr)
        return EXIT_CONFIG
    targets = [
        Target(t.url, t.namespace, t.workload, t.kind, t.pod or t.url)
        for t in cfg.collector.targets
    ]
    ensure_topics(cfg)
    producer = make_producer(cfg.kafka, "collector")
    collector = Collector(cfg, lambda: targets, producer)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await collector.run(stop)

    try:
        asyncio.run(main())
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
    stage("alert", "turn Findings into incidents and notify sinks", "alerter").set_defaults(
        func=cmd_alert
    )

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
