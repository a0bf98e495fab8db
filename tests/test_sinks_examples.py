"""``config/examples/<sink>.yaml``: each one loads, and its sink builds once its secrets exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from pipeline.alert.sinks import build_sink
from pipeline.config import ConsoleSink, Sink, config_dir, load_config

EXAMPLES = sorted((config_dir() / "examples").glob("*.yaml"))
SINK_TYPES = sorted(
    cls.model_fields["type"].default
    for cls in get_args(get_args(Sink)[0])
    if cls is not ConsoleSink
)


def test_every_sink_type_has_an_example() -> None:
    assert sorted(p.stem for p in EXAMPLES) == SINK_TYPES


def with_secrets(entry: BaseModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Provide every secret the entry names: write its files, set its variables."""
    update: dict[str, Any] = {}
    for name in type(entry).model_fields:
        value = getattr(entry, name)
        if value is None:
            continue
        if name.endswith("_file"):
            path = tmp_path / name
            path.write_text("https://example.invalid/hooks/secret-from-file\n")
            update[name] = path
        elif name.endswith("_env"):
            monkeypatch.setenv(value, "https://example.invalid/hooks/secret-from-env")
    return entry.model_copy(update=update)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_loads_and_builds(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(path)
    (entry,) = cfg.alerter.sinks
    assert entry.type == path.stem
    named = [n for n in type(entry).model_fields if n.endswith(("_file", "_env"))]
    inline = [
        n
        for n in type(entry).model_fields
        if n + "_file" in type(entry).model_fields and getattr(entry, n) is not None
    ]
    assert not inline, f"{path.name} puts a secret inline: {inline}"
    if entry.type not in ("alertmanager",):
        assert any(getattr(entry, n) is not None for n in named), "secrets via *_file or *_env"
    sink = build_sink(with_secrets(entry, tmp_path, monkeypatch))
    assert sink.name == entry.name
    assert "secret-from" not in repr(sink)


def test_a_named_environment_variable_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAGERDUTY_ROUTING_KEY", raising=False)
    (entry,) = load_config(config_dir() / "examples" / "pagerduty.yaml").alerter.sinks
    with pytest.raises(ValueError, match="PAGERDUTY_ROUTING_KEY is not set"):
        build_sink(entry)
