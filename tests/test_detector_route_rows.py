"""RouteRows: a message's rows from its workload's previous message must be
exactly the rows the per-sample lookup gives, whatever the messages do."""

from __future__ import annotations

import numpy as np

from models.detector import DetectorParams, RouteDetector
from pipeline.detect.columnar import RouteParts
from pipeline.detect.engine import RouteRows


def _parts(ns: str, wl: str, route: str, direction: str = "inbound") -> RouteParts:
    # fresh strings, as each decoded batch brings them
    return ("".join(ns), "deployment", "".join(wl), direction, "".join(route))


def _check(
    rr: RouteRows, plain: RouteRows, det: RouteDetector, msgs: list[tuple[str, list[RouteParts]]]
) -> None:
    parts = [p for _, ps in msgs for p in ps]
    spans = [len(ps) for _, ps in msgs]
    got = rr(det, parts, spans)
    want = plain(det, parts)
    assert got.dtype == np.int64
    assert got.tolist() == want.tolist()


def test_cached_rows_equal_the_per_sample_lookup() -> None:
    det = RouteDetector(DetectorParams())
    rr, plain = RouteRows(), RouteRows()
    a = [_parts("ns", "a", f"GET /{i}") for i in range(4)]
    b = [_parts("ns", "b", f"GET /{i}") for i in range(3)]
    # first sight, then the same order (cache hit), a reordering, a new
    # route, a dropped route, a workload key reused for other routes, an
    # empty message, and the same workload twice in one batch
    batches = [
        [("ns/a", a), ("ns/b", b)],
        [("ns/a", list(a)), ("ns/b", list(b))],
        [("ns/a", a[::-1]), ("ns/b", b)],
        [("ns/a", [*a, _parts("ns", "a", "POST /new")]), ("ns/b", b[1:])],
        [("ns/a", b), ("ns/b", [])],
        [("ns/a", a), ("ns/a", a[:2]), ("ns/b", b)],
    ]
    for msgs in batches:
        _check(rr, plain, det, msgs)
    # eight distinct routes, each with one row
    assert len(rr.row_of) == 8 and len(set(rr.row_of.values())) == 8


def test_a_new_detector_starts_a_new_map() -> None:
    rr = RouteRows()
    msgs = [_parts("ns", "a", "GET /x"), _parts("ns", "a", "GET /y")]
    first = rr(RouteDetector(DetectorParams()), msgs, [2])
    other = RouteDetector(DetectorParams())
    other.rows_for(["unrelated|inbound|GET /z"])
    again = rr(other, msgs, [2])
    assert first.tolist() == [0, 1]
    assert again.tolist() == [1, 2]
