"""Parse rate: meshwatch's exposition parser vs prometheus_client's.

The collector parses every pod's ``/metrics`` every window, so parser cost
scales with the size of the mesh. This compares both parsers on the same
real proxy text in the same process, alternating repetitions so that noise
from a shared machine hits both sides alike, and keeps the best of each.

    python bench/parse_rate.py                 # the proxy-metrics fixtures
    python bench/parse_rate.py --text FILE     # any exposition body
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pipeline.collect.exposition import parse


def _shared_dir() -> Path | None:
    env = os.environ.get("MESHWATCH_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared")
    for cand in candidates:
        if (cand / "fixtures" / "proxy-metrics").is_dir():
            return cand
    return None


def _ref_parse(text: str) -> int:
    """Fully consume prometheus_client's generator; return the sample count."""
    return sum(len(fam.samples) for fam in text_string_to_metric_families(text))


@dataclass
class Row:
    label: str
    lines: int
    ours_samples: int
    ref_samples: int
    ours_s: float
    ref_s: float


def _best(fn: Callable[[], object], number: int, repeat: int) -> float:
    timer = timeit.Timer(fn)
    return min(timer.repeat(repeat=repeat, number=number)) / number


def _measure(label: str, text: str, repeat: int, min_time: float) -> Row:
    # Calibrate each side so one repetition lasts about min_time.
    def calibrate(fn: Callable[[], object]) -> int:
        timer = timeit.Timer(fn)
        number, took = timer.autorange()
        return max(1, int(number * min_time / max(took, 1e-9)))

    def ours() -> object:
        return parse(text)

    def ref() -> object:
        return _ref_parse(text)

    n_ours, n_ref = calibrate(ours), calibrate(ref)
    best_ours = best_ref = float("inf")
    for _ in range(repeat):  # alternate, so drift hits both sides
        best_ours = min(best_ours, _best(ours, n_ours, 1))
        best_ref = min(best_ref, _best(ref, n_ref, 1))
    result = parse(text)
    if result.errors:
        print(f"warning: {label}: {len(result.errors)} parse errors, e.g. {result.errors[0]}")
    return Row(
        label=label,
        lines=text.count("\n") + (0 if text.endswith("\n") else 1),
        ours_samples=len(result.samples),
        ref_samples=_ref_parse(text),
        ours_s=best_ours,
        ref_s=best_ref,
    )


def _load_inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.text:
        return [(Path(f).name, Path(f).read_text(encoding="utf-8")) for f in args.text]
    shared = _shared_dir()
    if shared is None:
        sys.exit(
            "parse_rate: shared folder with fixtures/proxy-metrics not found "
            "(expected ../shared next to the repo, or set MESHWATCH_SHARED); "
            "or pass --text FILE"
        )
    inputs = []
    for path in sorted((shared / "fixtures" / "proxy-metrics").glob("*.prom")):
        text = path.read_text(encoding="utf-8")
        try:
            _ref_parse(text)
        except Exception as exc:  # the reference must parse it for a fair race
            print(f"skipping {path.name}: prometheus_client cannot parse it ({exc!r})")
            continue
        inputs.append((path.name, text))
    if not inputs:
        sys.exit("parse_rate: no fixture that prometheus_client can parse")
    return inputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--text", action="append", metavar="FILE", help="exposition file (repeatable)")
    ap.add_argument("--repeat", type=int, default=7, help="repetitions per side (best kept)")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per repetition")
    args = ap.parse_args(argv)

    inputs = _load_inputs(args)
    if len(inputs) > 1:
        # One body per file, joined: the size of a small multi-pod dump.
        inputs.append(
            ("ALL (concatenated)", "".join(t if t.endswith("\n") else t + "\n" for _, t in inputs))
        )

    rows = [_measure(label, text, args.repeat, args.min_time) for label, text in inputs]

    head = (
        f"{'input':<42}{'lines':>7}{'samples':>8}"
        f"{'ours lines/s':>14}{'ours samp/s':>13}{'ref lines/s':>13}{'ref samp/s':>12}{'ratio':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        flag = "" if r.ours_samples == r.ref_samples else f"  (ref saw {r.ref_samples} samples)"
        print(
            f"{r.label[:40]:<42}{r.lines:>7}{r.ours_samples:>8}"
            f"{r.lines / r.ours_s:>14,.0f}{r.ours_samples / r.ours_s:>13,.0f}"
            f"{r.lines / r.ref_s:>13,.0f}{r.ref_samples / r.ref_s:>12,.0f}"
            f"{r.ref_s / r.ours_s:>7.1f}x{flag}"
        )
    print(
        f"\nbest of {args.repeat} (alternating), ~{args.min_time}s per repetition; "
        "ratio = prometheus_client time / meshwatch time; "
        f"Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
