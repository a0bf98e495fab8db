"""Configuration: file + environment, secrets masked, precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, MeshwatchConfig, config_dir, load_config

REPO = Path(__file__).resolve().parents[1]


def test_default_yaml_restates_the_defaults() -> None:
    from_file = load_config(config_dir() / "default.yaml").model_dump(mode="json")
    assert from_file == MeshwatchConfig().model_dump(mode="json")


def test_environment_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  client_id: from-file\n  bootstrap_servers: a:1,b:2\n")
    monkeypatch.setenv("MESHWATCH_KAFKA__CLIENT_ID", "from-env")
    monkeypatch.setenv("MESHWATCH_DETECTOR__FIRE_AFTER", "1")
    cfg = load_config(f)
    assert cfg.kafka.client_id == "from-env"
    assert cfg.kafka.bootstrap_servers == ["a:1", "b:2"]
    assert cfg.detector.fire_after == 1


def test_topic_names_carry_prefix_and_version() -> None:
    cfg = load_config(None, {"topics": {"prefix": "x."}})
    assert cfg.topics.golden == "x.golden.v1"
    assert cfg.topics.dlq == "x.dlq.v1"
    assert cfg.topics.specs["incidents"].compacted


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "kafka:\n  bootstrap_servers: [nohost]\n",
            "kafka.bootstrap_servers: Value error, 'nohost' is not host:port",
        ),
        ("kafka:\n  bootstrap_server: [a:1]\n", "kafka.bootstrap_server: unknown setting"),
        ("detector:\n  fire_after: 4\n  fire_window: 3\n", "fire_after must be <= fire_window"),
        ("window:\n  seconds: -1\n", "window.seconds: Input should be greater than 0"),
        ("kafka:\n  security_protocol: SASL_SSL\n", "needs sasl_mechanism"),
        ("alerter:\n  sinks:\n    - type: pager\n", "alerter.sinks.0"),
        ("alerter:\n  sinks:\n    - type: slack\n", "exactly one of webhook_url"),
        ("kafka: [1, 2\n", "invalid YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_invalid_configs_name_the_path(tmp_path: Path, yaml_text: str, expected: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_config_check_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "kafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: PLAIN\n"
        "  sasl_plain_username: u\n  sasl_plain_password: hunter2\n"
        "alerter:\n  sinks:\n    - type: slack\n"
        "      webhook_url: https://hooks.slack.com/services/T0/B0/SECRETVALUE\n"
    )
    assert main(["config", "check", str(f)]) == 0
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err
    assert "SECRETVALUE" not in out.out + out.err
    assert "**********" in out.out
    assert "sasl_plain_username: u" in out.out


def test_config_check_exits_non_zero_with_each_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  linger_ms: -5\n  acks: maybe\n")
    assert main(["config", "check", str(f)]) == 2
    err = capsys.readouterr().err
    assert "kafka.linger_ms" in err and "kafka.acks" in err


def test_bootstrap_servers_from_the_environment_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESHWATCH_KAFKA__BOOTSTRAP_SERVERS", "kafka-0:9092, kafka-1:9092")
    assert load_config().kafka.bootstrap_servers == ["kafka-0:9092", "kafka-1:9092"]


def test_a_malformed_environment_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHWATCH_KAFKA__EXTRA", "{not json")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.source == "environment"
    assert "MESHWATCH_" in info.value.problems[0]
