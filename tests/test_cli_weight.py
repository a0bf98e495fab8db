"""Stages that do not score with trained models must not load scikit-learn.

The collector and the alerter build the same argument parser as ``train``; a
top-level import there once put scikit-learn, scipy and skops (~120 MiB) into
every process. A fresh interpreter shows what a command really imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("sklearn", "skops", "matplotlib")


def test_building_the_parser_and_the_alerter_loads_no_training_stack() -> None:
    code = (
        "import json, sys\n"
        "import pipeline.cli\n"
        "pipeline.cli.build_parser()\n"
        "import pipeline.alert.stage, pipeline.collect.service\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []


def test_a_models_command_still_runs_through_the_lazy_entry(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "models", "list", "--registry", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "shipped default model" in out.stdout
