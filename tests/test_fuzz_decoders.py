"""Every wire decoder and the config loader, fed hostile input by hypothesis.

The contract under test: a decoder either returns a message or raises its
documented error (:class:`pydantic.ValidationError` for messages,
:class:`ConfigError` for configuration), whatever the bytes — invalid
UTF-8, broken or deeply nested JSON, wrong types, valid messages with one
field swapped for junk, self-referencing YAML. Anything else (a
``RecursionError``, a ``KeyError`` from a validator, a hang caught by the
deadline) is a bug: the stage loop would dead-letter the message, but the
config loader would crash a stage at start-up with a traceback instead of a
clear message.

Examples are bounded so the file runs in seconds; ``bench/fuzz.py`` runs
the same properties for much longer.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from pipeline.alert.outbox import OutboxEntry
from pipeline.alert.silences import Silence
from pipeline.config import ConfigError, load_config
from pipeline.detect.columnar import decode_golden
from pipeline.schema import (
    DeadLetter,
    Finding,
    GoldenBatch,
    GoldenSample,
    Incident,
    decode,
    describe_error,
    encode,
)
from tests.test_reliability_support import (
    valid_dead_letter,
    valid_finding,
    valid_golden_batch,
    valid_incident,
)

#: Per-example budget: far above what any decode needs (< 5 ms), far below a hang.
DEADLINE_MS = 2000
FUZZ = settings(
    max_examples=int(os.environ.get("MESHWATCH_FUZZ_EXAMPLES", "100")),
    deadline=DEADLINE_MS,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["+Inf", "NaN", "-Inf", "", "firing", "inbound", "meshwatch.finding/v1"]),
)
JSON_VALUES = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)

VALID: dict[str, Callable[[], BaseModel]] = {
    "golden_batch": valid_golden_batch,
    "finding": valid_finding,
    "incident": valid_incident,
    "dead_letter": valid_dead_letter,
}
MODELS: dict[str, type[BaseModel]] = {
    "golden_batch": GoldenBatch,
    "finding": Finding,
    "incident": Incident,
    "dead_letter": DeadLetter,
}
ALL_MODELS: list[type[BaseModel]] = [
    GoldenBatch,
    GoldenSample,
    Finding,
    Incident,
    DeadLetter,
    Silence,
    OutboxEntry,
]


def decode_or_validation_error(model: type[BaseModel], raw: bytes) -> BaseModel | None:
    """Decode; a ValidationError is an accepted outcome and must describe itself."""
    try:
        return decode(model, raw)
    except ValidationError as exc:
        error = exc
    assert describe_error(error)  # the DLQ reason is never empty
    return None


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _replace(obj[head], rest, value)}
    copy = list(obj)
    copy[head] = _replace(obj[head], rest, value)
    return copy


def _delete(obj: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        if isinstance(obj, dict):
            return {k: v for k, v in obj.items() if k != path[0]}
        return [v for i, v in enumerate(obj) if i != path[0]]
    head = path[0]
    if isinstance(obj, dict):
        return {**obj, head: _delete(obj[head], path[1:])}
    copy = list(obj)
    copy[head] = _delete(obj[head], path[1:])
    return copy


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes:
    """A valid message of ``kind`` with one field replaced, deleted or added."""
    doc = json.loads(encode(VALID[kind]()))
    paths = _paths(doc)
    path = draw(st.sampled_from(paths))
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace" or not path:
        doc = _replace(doc, path, draw(JSON_VALUES))
    elif action == "delete":
        doc = _delete(doc, path)
    else:
        target = draw(st.sampled_from([p for p in paths if not p] + [path[:-1]]))
        parent = doc
        for p in target:
            parent = parent[p]
        if isinstance(parent, dict):
            doc = _replace(doc, target, {**parent, draw(st.text(max_size=10)): draw(JSON_VALUES)})
    return json.dumps(doc, allow_nan=True).encode()


@st.composite
def byte_damage(draw: st.DrawFn, kind: str) -> bytes:
    """A valid encoding with bytes flipped, cut or spliced (invalid UTF-8 included)."""
    raw = bytearray(encode(VALID[kind]()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:]
        else:
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
@FUZZ
@given(raw=st.one_of(st.binary(max_size=400), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_arbitrary_bytes_and_json_raise_only_validation_errors(
    model: type[BaseModel], raw: bytes
) -> None:
    decode_or_validation_error(model, raw)


@pytest.mark.parametrize("kind", sorted(VALID))
@FUZZ
@given(data=st.data())
def test_mutated_valid_messages_decode_or_fail_cleanly(kind: str, data: st.DataObject) -> None:
    raw = data.draw(st.one_of(mutated(kind), byte_damage(kind)))
    got = decode_or_validation_error(MODELS[kind], raw)
    if got is not None:
        # Whatever is accepted must survive a round trip unchanged: a stage
        # that accepts a message must be able to re-emit it (state, DLQ).
        assert decode(MODELS[kind], encode(got)) == got


@FUZZ
@given(raw=st.one_of(mutated("golden_batch"), byte_damage("golden_batch")))
def test_detector_fast_decoder_agrees_with_the_contract(raw: bytes) -> None:
    """``decode_golden`` (msgspec first, pydantic fallback) fails only with ValidationError.

    It may accept more than pydantic does (the columnar checks reject those
    later), but never a message whose basic shape is wrong.
    """
    try:
        got = decode_golden(raw)
    except ValidationError:
        return
    assert got.workload_key
    assert math.isfinite(got.window_end)
    assert got.window_seconds > 0


@pytest.mark.parametrize("depth", [100, 1_000, 100_000])
def test_deeply_nested_json_is_a_validation_error(depth: int) -> None:
    raw = b"[" * depth + b"]" * depth
    for model in ALL_MODELS:
        with pytest.raises(ValidationError):
            decode(model, raw)
    with pytest.raises(ValidationError):
        decode_golden(raw)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_valid_message_round_trips(kind: str) -> None:
    """Regression: a Finding whose evidence had a gap (value None, dropped by
    encode) could not be decoded by the alerter and went to the DLQ."""
    message = VALID[kind]()
    assert decode(MODELS[kind], encode(message)) == message


def test_a_finding_without_observed_value_or_band_round_trips() -> None:
    """Regression: observed/expected_low/expected_high None were dropped by
    encode() and then required by decode: the finding was dead-lettered."""
    f = valid_finding().model_copy(
        update={"observed": None, "expected_low": None, "expected_high": None}
    )
    assert decode(Finding, encode(f)) == f


def test_huge_message_is_rejected_as_a_whole() -> None:
    """5 MB of a valid-looking string field: decoded or refused, never a crash."""
    good = json.loads(encode(valid_finding()))
    good["explanation"] = "x" * 5_000_000
    assert decode(Finding, json.dumps(good).encode()).explanation == good["explanation"]
    good["score"] = "9" * 5000  # a number far out of range, as text
    with pytest.raises(ValidationError):
        decode(Finding, json.dumps(good).encode())


# -- configuration ----------------------------------------------------------------

YAML_PIECES = st.sampled_from(
    [
        "kafka:",
        "  bootstrap_servers: ",
        "[",
        "]",
        "{",
        "}",
        ": ",
        "- ",
        "&a ",
        "*a",
        "!!python/object:os.system ",
        "!!binary ",
        "'",
        '"',
        "\n",
        "  ",
        "\t",
        "detector:",
        "  warmup_windows: ",
        "-1",
        "1e309",
        ".nan",
        "~",
        "alerter:",
        "  sinks:",
        "    - type: webhook",
        "      url: ",
        "topics:",
        "  prefix: ",
        "x" * 50,
        "\x00",
        "\ufeff",
    ]
)


def config_problems(load: Callable[[], object]) -> list[str] | None:
    """None when the config loads; its problems when it raises ConfigError (anything
    else propagates and fails the test)."""
    try:
        load()
    except ConfigError as exc:
        return exc.problems
    return None


def _load_text(tmp: Path, text: str) -> None:
    path = tmp / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    problems = config_problems(lambda: load_config(path))
    assert problems is None or (problems and all(isinstance(p, str) and p for p in problems))


@FUZZ
@given(text=st.one_of(st.lists(YAML_PIECES, max_size=30).map("".join), st.text(max_size=300)))
def test_config_files_load_or_fail_with_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    _load_text(tmp_path_factory.mktemp("cfg"), text)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_config_files_of_any_bytes_fail_with_config_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    """Regression (atheris): a file that is not UTF-8 escaped as UnicodeDecodeError."""
    path = tmp_path_factory.mktemp("cfg") / "bytes.yaml"
    path.write_bytes(raw)
    problems = config_problems(lambda: load_config(path))
    assert problems is None or problems


@FUZZ
@given(
    section=st.sampled_from(["kafka", "detector", "alerter", "topics", "window", "observe"]),
    key=st.text(max_size=20),
    value=JSON_VALUES,
)
def test_config_overrides_of_any_type_fail_with_config_error(
    section: str, key: str, value: Any
) -> None:
    problems = config_problems(lambda: load_config(None, {section: {key: value}}))
    assert problems is None or problems


@pytest.mark.parametrize(
    "text",
    [
        "a: &a [*a]\n",  # a list that contains itself
        "alerter: &s {sinks: [*s]}\n",
        "x: &a [*a, *a, *a]\ny: &b [*a, *a, *a]\nz: [*b, *b, *b, *b]\n",  # alias fan-out
        "!!python/object/apply:os.system ['true']\n",
        "\x00\x01\x02",
    ],
)
def test_hostile_yaml_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


ENV_VALUES = st.one_of(st.text(max_size=60), JSON_VALUES.map(json.dumps))


@FUZZ
@given(
    var=st.sampled_from(
        [
            "MESHWATCH_KAFKA__BOOTSTRAP_SERVERS",
            "MESHWATCH_KAFKA__SESSION_TIMEOUT_MS",
            "MESHWATCH_DETECTOR__WARMUP_WINDOWS",
            "MESHWATCH_ALERTER__SINKS",
            "MESHWATCH_TOPICS__PREFIX",
            "MESHWATCH_LOG_LEVEL",
        ]
    ),
    value=ENV_VALUES,
)
def test_environment_values_fail_with_config_error(var: str, value: str) -> None:
    if "\x00" in value:
        value = value.replace("\x00", "")  # the OS refuses NUL in the environment
    old = os.environ.get(var)
    os.environ[var] = value
    try:
        problems = config_problems(lambda: load_config(None))
        assert problems is None or problems
    finally:
        if old is None:
            del os.environ[var]
        else:
            os.environ[var] = old
