"""The reliability tests, run long: many SIGKILLs, a broker outage of minutes, a sink down 10 min.

Each scenario is the corresponding test in ``tests/`` with its size turned
up through environment variables, run by pytest in a child process (the
tests print one summary line each, collected here). The sink outage mostly
waits, so it runs beside the others.

    python bench/reliability.py                          # the full set (~15 min)
    python bench/reliability.py --kill-runs 2 --kills 6 --outage 60 --sink-down 60
    python bench/reliability.py --kill-runs 0 --poison-runs 0 --outage 30 --sink-down 30 \\
        --collector-kills 10                             # one scenario's worth, quickly

What each scenario asserts is in its test's docstring: nothing lost
(findings equal an uninterrupted reference run; every incident notified),
no duplicate notice except one in flight at an alerter SIGKILL (same
notification id), poison only and all in the DLQ.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    name: str
    test: str
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    started: float = 0.0
    seconds: float = 0.0
    output: str = ""

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", self.test],
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait(self) -> bool:
        assert self.proc is not None
        self.output, _ = self.proc.communicate()
        self.seconds = time.monotonic() - self.started
        return self.proc.returncode == 0

    def summary(self) -> list[str]:
        keep = ("SIGKILL", "poison", "broker down", "sink down", "collector:", "passed", "failed")
        return [ln.strip() for ln in self.output.splitlines() if any(k in ln for k in keep)][-6:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kill-runs", type=int, default=3, help="runs of the SIGKILL test")
    p.add_argument("--kills", type=int, default=12, help="SIGKILLs per run")
    p.add_argument("--poison-runs", type=int, default=3)
    p.add_argument("--collector-kills", type=int, default=10)
    p.add_argument("--outage", type=float, default=180.0, help="broker outage, seconds")
    p.add_argument("--sink-down", type=float, default=600.0, help="sink outage, seconds")
    p.add_argument("--seed", type=int, default=20261127)
    args = p.parse_args()

    background = Run(
        "sink down",
        "tests/test_reliability_sink.py",
        {"MESHWATCH_RELIABILITY_SINK_DOWN": str(args.sink_down)},
    )
    runs = [
        Run(
            f"SIGKILL run {i + 1}",
            "tests/test_reliability_kill.py",
            {
                "MESHWATCH_RELIABILITY_KILLS": str(args.kills),
                "MESHWATCH_RELIABILITY_SEED": str(args.seed + i),
            },
        )
        for i in range(args.kill_runs)
    ]
    runs += [
        Run(
            f"poison run {i + 1}",
            "tests/test_reliability_poison.py",
            {"MESHWATCH_RELIABILITY_SEED": str(args.seed + i)},
        )
        for i in range(args.poison_runs)
    ]
    runs.append(
        Run(
            "collector SIGKILLs",
            "tests/test_reliability_collector.py",
            {
                "MESHWATCH_RELIABILITY_COLLECTOR_KILLS": str(args.collector_kills),
                "MESHWATCH_RELIABILITY_SEED": str(args.seed),
            },
        )
    )
    runs.append(
        Run(
            "broker outage",
            "tests/test_reliability_broker.py",
            {"MESHWATCH_RELIABILITY_OUTAGE": str(args.outage)},
        )
    )
    background.start()
    ok = True
    for run in runs:
        run.start()
        good = run.wait()
        ok &= good
        print(f"## {run.name}: {'ok' if good else 'FAILED'} in {run.seconds:.0f}s", flush=True)
        for line in run.summary():
            print(f"   {line}", flush=True)
    good = background.wait()
    ok &= good
    print(f"## {background.name}: {'ok' if good else 'FAILED'} in {background.seconds:.0f}s")
    for line in background.summary():
        print(f"   {line}")
    if not ok:
        for run in [*runs, background]:
            if run.proc is not None and run.proc.returncode != 0:
                print(f"--- {run.name} output tail ---\n{run.output[-4000:]}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
