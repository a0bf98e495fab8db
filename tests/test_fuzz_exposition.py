"""The proxy ``/metrics`` parser fed damaged real bodies and pathological ones.

``tests/test_exposition.py`` already checks the grammar on generated lines.
This adds what a scrape of a broken or hostile target looks like: real
proxy bodies (``shared/fixtures/proxy-metrics``) with bytes flipped, lines
cut, spliced and repeated, and a few shapes built to make a careless parser
go quadratic or deep. :func:`parse` must never raise, must report bad
lines as :class:`ParseError` with a line number in range, must keep every
line that was not touched, and must finish within the deadline;
:func:`parse_strict` raises only :class:`ExpositionError`.
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.collect.exposition import (
    MAX_LINE_CHARS,
    ExpositionError,
    ParseError,
    parse,
    parse_strict,
)
from tests.conftest import shared_dir

FUZZ = settings(
    max_examples=int(os.environ.get("MESHWATCH_FUZZ_EXAMPLES", "100")),
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def bodies() -> list[bytes]:
    root = shared_dir()
    if root is None:
        return []
    return [p.read_bytes() for p in sorted((root / "fixtures" / "proxy-metrics").glob("*.prom"))]


BODIES = bodies()
needs_fixtures = pytest.mark.skipif(
    not BODIES, reason="../shared/fixtures/proxy-metrics (real proxy bodies) is not beside the repo"
)


@st.composite
def damaged(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(original, damaged) where only a few places of a real body were touched."""
    original = draw(st.sampled_from(BODIES))
    raw = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "splice", "repeat", "insert"]))
        at = draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at : at + draw(st.integers(1, 200))]
        elif op == "splice":
            raw[at:at] = draw(st.sampled_from([b"{", b"}", b'"', b"\\", b"=", b",", b"\n", b"#"]))
        elif op == "repeat":
            end = min(len(raw), at + draw(st.integers(1, 80)))
            raw[at:at] = raw[at:end] * draw(st.integers(2, 50))
        else:
            raw[at:at] = draw(st.binary(min_size=1, max_size=30))
    return original, bytes(raw)


def check(body: bytes | str) -> None:
    exp = parse(body)
    n_lines = (body.count(b"\n") if isinstance(body, bytes) else body.count("\n")) + 1
    for e in exp.errors:
        assert isinstance(e, ParseError)
        assert 1 <= e.line_no <= n_lines
        assert "internal parser error" not in e.message, e
        assert len(e.line) <= 400  # shown cut, never the whole hostile line
    if exp.errors:
        with pytest.raises(ExpositionError):
            parse_strict(body)
    else:
        assert parse_strict(body).samples == exp.samples


@needs_fixtures
@FUZZ
@given(pair=damaged())
def test_damaged_real_bodies_lose_only_damaged_lines(pair: tuple[bytes, bytes]) -> None:
    original, body = pair
    check(body)
    # every sample line that survived byte-identical (before any # EOF) is still parsed
    before = {ln for ln in original.split(b"\n") if ln and not ln.startswith(b"#")}
    head = body.split(b"# EOF")[0].split(b"\n")
    kept = [ln for ln in head[:-1] if ln in before]
    got = {(s.name, s.value) for s in parse(body).samples}
    for ln in kept:
        (one,) = parse(ln + b"\n").samples
        same = one.value != one.value or (one.name, one.value) in got  # NaN never equals
        assert same, (ln, "dropped although untouched")


@FUZZ
@given(st.binary(max_size=4000))
def test_arbitrary_bytes(body: bytes) -> None:
    check(body)


PATHOLOGICAL = {
    "one long label block": "m{" + ",".join(f'l{i}="v"' for i in range(20_000)) + "} 1\n",
    "unterminated quotes": 'm{a="' + "\\" * 50_000 + "\n",
    "braces": "{" * 60_000 + "\n" + "}" * 60_000 + "\n",
    "escapes": 'm{a="' + '\\"' * 30_000 + '"} 1\n',
    "many tiny lines": "a 1\n" * 200_000,
    "many bad lines": "}{\n" * 100_000,
    "line at the limit": "m " + "9" * (MAX_LINE_CHARS - 2) + "\n",
    "line past the limit": 'm{a="' + "x" * (MAX_LINE_CHARS * 4) + '"} 1\n',
    "comments": "# HELP m " + "\\n" * 50_000 + "\n# TYPE m counter\n" * 10_000,
    "nul bytes": 'm\x00{a="\x00"} 1\n' * 10_000,
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_bodies_finish_in_linear_time(name: str) -> None:
    """Each is at most a few MB; a linear parser does any of them in well under a
    second even on a loaded machine, a quadratic one takes minutes."""
    body = PATHOLOGICAL[name]
    started = time.perf_counter()
    check(body)
    check(body.encode())
    assert time.perf_counter() - started < 20, name


def test_a_body_of_only_huge_lines_keeps_the_good_one() -> None:
    body = ("x" * (MAX_LINE_CHARS + 10) + "\n") * 20 + 'good{a="b"} 7\n'
    exp = parse(body)
    assert [s.value for s in exp.samples] == [7.0]
    assert len(exp.errors) == 20
