"""The ``train`` and ``models`` subcommands' arguments, without their weight.

Every ``meshwatch`` command builds the whole parser; importing the training
job there would load scikit-learn, scipy and skops (~120 MiB and a second of
start-up) into the collector and the alerter too. The commands themselves live
in :mod:`pipeline.train.cli` and are imported only when one of them runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from pipeline.train import cli

        command: Callable[[argparse.Namespace], int] = getattr(cli, name)
        return command(args)

    return run


def add_commands(sub: Any) -> None:
    """Add ``train`` and ``models`` to the main parser's subcommands."""

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", type=Path, default=None, help="YAML config file")
        sp.add_argument("--bootstrap", default=None, help="override kafka.bootstrap_servers")
        sp.add_argument("--registry", type=Path, default=None, help="override models.registry_dir")

    tr = sub.add_parser(
        "train",
        help="train the models from history, evaluate, publish if no worse",
        description=(
            "Read history (the golden topic between --since and --until, or a JSONL file), "
            "train and calibrate the models, compare with production on held-back history "
            "and labelled simulator scenarios, write an HTML report and publish if no worse. "
            "Exit codes: 0 published, 1 error, 2 configuration, 3 not better, 4 no data."
        ),
    )
    common(tr)
    tr.add_argument("input", nargs="?", type=Path, default=None, help="JSONL history file")
    tr.add_argument(
        "--since",
        "--start",
        dest="since",
        default=None,
        help="range start (ISO or unix; default until-train_hours)",
    )
    tr.add_argument(
        "--until", "--end", dest="until", default=None, help="range end (ISO or unix; default now)"
    )
    tr.add_argument(
        "--source",
        choices=("golden", "prometheus"),
        default=None,
        help="history without an input file: the golden topic or Prometheus range queries "
        "(default: models.history_source)",
    )
    tr.add_argument(
        "--prometheus-url", default=None, help="override prometheus.url (with --source prometheus)"
    )
    tr.add_argument("--force", action="store_true", help="publish even if not better")
    tr.add_argument(
        "--workload-share",
        type=float,
        default=1.0,
        help="train on this share of the workloads (by key hash, before decoding; default 1)",
    )
    tr.add_argument(
        "--segments",
        type=int,
        default=None,
        help="read the golden topic in this many time segments spread over the range "
        "(0: all of it; default models.train_segments)",
    )
    tr.add_argument(
        "--segment-minutes",
        type=float,
        default=None,
        help="sampled minutes per segment (default models.train_segment_minutes)",
    )
    tr.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="minutes judged before each segment to warm the baselines "
        "(default models.train_warmup_minutes)",
    )
    tr.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes reading the golden topic's partitions (default models.train_workers; "
        "0: one per CPU)",
    )
    tr.add_argument(
        "--default",
        action="store_true",
        help="rebuild the default artifact shipped in models/default/ from simulated history",
    )
    tr.add_argument("--report", type=Path, default=None, help="report folder")
    tr.add_argument(
        "--metrics-address", default=None, help="host:port to serve the run's /metrics on"
    )
    tr.add_argument("--no-event", action="store_true", help="do not announce on the models topic")
    tr.add_argument(
        "--scenario-windows",
        type=int,
        default=290,
        help="windows of labelled simulator scenarios to evaluate on (0: skip)",
    )
    tr.set_defaults(func=_lazy("cmd_train"))

    md = sub.add_parser("models", help="list, inspect, promote and roll back model versions")
    md_sub = md.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ls = md_sub.add_parser("list", help="versions in the registry")
    common(ls)
    ls.set_defaults(func=_lazy("cmd_models_list"))
    sh = md_sub.add_parser("show", help="a version's manifest, verified")
    common(sh)
    sh.add_argument("version", nargs="?", default=None, help="default: production")
    sh.set_defaults(func=_lazy("cmd_models_show"))
    pr = md_sub.add_parser("promote", help="make VERSION production and tell the detectors")
    common(pr)
    pr.add_argument("version")
    pr.add_argument("--no-event", action="store_true", help="do not announce on the models topic")
    pr.set_defaults(func=_lazy("cmd_models_promote"))
    rb = md_sub.add_parser("rollback", help="back to the previous production version")
    common(rb)
    rb.add_argument("--no-event", action="store_true", help="do not announce on the models topic")
    rb.set_defaults(func=_lazy("cmd_models_rollback"))
