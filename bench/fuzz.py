"""Long fuzz runs: the hypothesis properties with many examples, then atheris (coverage-guided).

1. ``tests/test_fuzz_decoders.py`` and ``tests/test_fuzz_exposition.py`` with
   ``MESHWATCH_FUZZ_EXAMPLES`` examples per property (default 3,000);
2. atheris, if installed (``pip install atheris``), for ``--seconds`` per
   target on: the exposition parser, every message decoder, the detector's
   fast decoder and the config loader. A target fails on any exception
   other than its documented one; atheris stops and prints the input.

    python bench/fuzz.py                       # 3,000 examples; 60 s per atheris target
    python bench/fuzz.py --examples 500 --seconds 10
    python bench/fuzz.py --only-atheris exposition --seconds 600
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGETS = ("exposition", "messages", "golden_fast", "config")


def target(name: str) -> None:
    """Run one atheris target in this process (called in a child per target)."""
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    with atheris.instrument_imports():
        from pydantic import BaseModel, ValidationError

        from pipeline.alert.outbox import OutboxEntry
        from pipeline.alert.silences import Silence
        from pipeline.collect.exposition import ExpositionError, parse, parse_strict
        from pipeline.config import ConfigError, load_config
        from pipeline.detect.columnar import decode_golden
        from pipeline.schema import (
            DeadLetter,
            Finding,
            GoldenBatch,
            GoldenSample,
            Incident,
            decode,
        )

    models: list[type[BaseModel]] = [
        GoldenBatch,
        GoldenSample,
        Finding,
        Incident,
        DeadLetter,
        Silence,
        OutboxEntry,
    ]
    cfg_path = Path(tempfile.mkdtemp()) / "fuzz.yaml"

    def exposition(data: bytes) -> None:
        exp = parse(data)
        assert all("internal parser error" not in e.message for e in exp.errors)
        with contextlib.suppress(ExpositionError):
            parse_strict(data)

    def messages(data: bytes) -> None:
        if not data:
            return
        model = models[data[0] % len(models)]
        with contextlib.suppress(ValidationError):
            decode(model, data[1:])

    def golden_fast(data: bytes) -> None:
        with contextlib.suppress(ValidationError):
            decode_golden(data)

    def config(data: bytes) -> None:
        cfg_path.write_bytes(data)
        with contextlib.suppress(ConfigError):
            load_config(cfg_path)

    fn = {"exposition": exposition, "messages": messages, "golden_fast": golden_fast}.get(
        name, config
    )
    atheris.Setup(sys.argv[:1] + sys.argv[3:], fn)
    atheris.Fuzz()


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--target":
        target(sys.argv[2])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--examples", type=int, default=3000)
    p.add_argument("--seconds", type=int, default=60, help="per atheris target")
    p.add_argument("--only-atheris", choices=TARGETS, default=None)
    p.add_argument("--skip-hypothesis", action="store_true")
    args = p.parse_args()
    ok = True
    if not args.skip_hypothesis and args.only_atheris is None:
        started = time.monotonic()
        rc = subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/test_fuzz_decoders.py",
                "tests/test_fuzz_exposition.py",
            ],
            cwd=REPO,
            env={**os.environ, "MESHWATCH_FUZZ_EXAMPLES": str(args.examples)},
        )
        print(
            f"## hypothesis, {args.examples} examples per property: "
            f"{'ok' if rc == 0 else 'FAILED'} in {time.monotonic() - started:.0f}s",
            flush=True,
        )
        ok &= rc == 0
    if importlib.util.find_spec("atheris") is None:
        print("## atheris is not installed (pip install atheris): coverage-guided runs skipped")
        return 0 if ok else 1
    for name in [args.only_atheris] if args.only_atheris else TARGETS:
        started = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--target",
                name,
                f"-max_total_time={args.seconds}",
                "-max_len=65536",
                "-timeout=10",
                "-print_final_stats=1",
                f"-artifact_prefix={tempfile.gettempdir()}/meshwatch-fuzz-{name}-",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        stats = [ln for ln in proc.stderr.splitlines() if ln.startswith("stat::")]
        runs = next((ln.split(":")[-1].strip() for ln in stats if "number_of_executed" in ln), "?")
        verdict = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        print(
            f"## atheris {name}: {verdict}, {runs} executions in {time.monotonic() - started:.0f}s",
            flush=True,
        )
        if proc.returncode != 0:
            ok = False
            print(
                "\n".join(ln for ln in proc.stderr.splitlines() if "Instrumenting" not in ln)[
                    -4000:
                ]
            )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
