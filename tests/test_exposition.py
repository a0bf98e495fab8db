"""Tests for the proxy exposition parser.

The fixtures are real linkerd2-proxy captures kept outside the repo (in the
shared folder next to it); tests that need them skip when it is absent, the
rest (malformed input, properties) always run.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.collect.exposition import (
    MAX_LINE_CHARS,
    Exposition,
    ExpositionError,
    ParseError,
    Sample,
    _scan_sample,
    parse,
    parse_strict,
)

# --------------------------------------------------------------------------
# helpers


def _shared_dir() -> Path | None:
    candidates = []
    env = os.environ.get("MESHWATCH_SHARED")
    if env:
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "shared")
    for cand in candidates:
        if (cand / "fixtures" / "proxy-metrics").is_dir():
            return cand
    return None


SHARED = _shared_dir()
FIXTURE_NAMES = [
    "01-linkerd2-prommatch-sampleMetrics-2022.prom",
    "02-linkerd2-obfuscate-input-2021.prom",
    "03-datadog-linkerd_v2-fixture-2019-excerpts.prom",
    "04-linkerd2-proxy-v2.329-outbound-route-openmetrics-2025.prom",
    "05-linkerd2-proxy-promclient-process-section-2023.prom",
]


@pytest.fixture(scope="module")
def fixtures_dir() -> Path:
    if SHARED is None:
        pytest.skip("shared folder with proxy-metrics fixtures not found (set MESHWATCH_SHARED)")
    return SHARED / "fixtures" / "proxy-metrics"


def _load(fixtures_dir: Path, prefix: str) -> str:
    (path,) = fixtures_dir.glob(f"{prefix}-*.prom")
    return path.read_text(encoding="utf-8")


def _one(exp: Exposition, name: str, labels: dict[str, str]) -> float:
    """Value of the single sample with exactly this name and label set."""
    hits = [s for s in exp.samples if s.name == name and s.labels == labels]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} matches"
    return hits[0].value


def _le_values(exp: Exposition, bucket_name: str, **match: str) -> list[str]:
    return [
        s.labels["le"]
        for s in exp.samples
        if s.name == bucket_name and all(s.labels.get(k) == v for k, v in match.items())
    ]


LEGACY_LE = [
    "1", "2", "3", "4", "5", "10", "20", "30", "40", "50",
    "100", "200", "300", "400", "500", "1000", "2000", "3000", "4000", "5000",
    "10000", "20000", "30000", "40000", "50000", "+Inf",
]  # fmt: skip

PROM_SA_2019 = "linkerd-prometheus.linkerd.serviceaccount.identity.linkerd.cluster.local"

INBOUND_4191_2022 = {
    "direction": "inbound",
    "target_addr": "0.0.0.0:4191",
    "target_ip": "0.0.0.0",
    "target_port": "4191",
    "tls": "no_identity",
    "no_tls_reason": "no_tls_from_remote",
    "srv_kind": "default",
    "srv_name": "all-unauthenticated",
    "authz_kind": "default",
    "authz_name": "all-unauthenticated",
}

# --------------------------------------------------------------------------
# real fixtures


def test_every_fixture_parses_cleanly(fixtures_dir: Path) -> None:
    files = sorted(p.name for p in fixtures_dir.glob("*.prom"))
    assert files == FIXTURE_NAMES
    for name in files:
        exp = parse((fixtures_dir / name).read_bytes())
        assert exp.errors == [], name
        assert exp.samples, name


def test_fixture_01_legacy_2022(fixtures_dir: Path) -> None:
    exp = parse(_load(fixtures_dir, "01"))
    assert exp.errors == []
    assert len(exp.samples) == 199
    assert exp.eof is False  # legacy-only capture: no prom-client section

    # `# POD ...` and bare `#` comment lines are ignored, not errors.
    assert exp.samples[0] == Sample(
        "inbound_http_authz_allow_total",
        {
            "target_addr": "0.0.0.0:4191",
            "target_ip": "0.0.0.0",
            "target_port": "4191",
            "srv_kind": "default",
            "srv_name": "all-unauthenticated",
            "authz_kind": "default",
            "authz_name": "all-unauthenticated",
            "tls": "no_identity",
            "no_tls_reason": "no_tls_from_remote",
        },
        30.0,
        None,
    )

    # Histogram: integer le, buckets then _count then _sum.
    hist = {**INBOUND_4191_2022, "status_code": "200"}
    assert _le_values(exp, "response_latency_ms_bucket") == LEGACY_LE
    assert _one(exp, "response_latency_ms_bucket", {**hist, "le": "1"}) == 29
    assert _one(exp, "response_latency_ms_bucket", {**hist, "le": "+Inf"}) == 29
    assert _one(exp, "response_latency_ms_count", hist) == 29
    assert _one(exp, "response_latency_ms_sum", hist) == 0
    names = [s.name for s in exp.samples if s.name.startswith("response_latency_ms")]
    assert names == ["response_latency_ms_bucket"] * 26 + [
        "response_latency_ms_count",
        "response_latency_ms_sum",
    ]

    dst = {
        "addr": "linkerd-dst-headless.linkerd.svc.cluster.local:8086",
        "tls": "true",
        "server_id": "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
        "status_code": "200",
    }
    assert _one(exp, "control_response_latency_ms_bucket", {**dst, "le": "1"}) == 0
    assert _one(exp, "control_response_latency_ms_bucket", {**dst, "le": "2"}) == 1
    assert _one(exp, "control_response_latency_ms_sum", dst) == 2
    ident = {
        "addr": "linkerd-identity-headless.linkerd.svc.cluster.local:8080",
        "tls": "true",
        "server_id": "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local",
        "status_code": "200",
    }
    assert _one(exp, "control_response_latency_ms_sum", ident) == 12
    assert _le_values(exp, "control_response_latency_ms_bucket", addr=ident["addr"]) == LEGACY_LE
    # ≤ 2.12 style: grpc_status only present on gRPC responses.
    assert (
        _one(
            exp,
            "control_response_total",
            {**ident, "classification": "success", "grpc_status": "0"},
        )
        == 1
    )

    # A raw label value with spaces and parentheses.
    (build,) = [s for s in exp.samples if s.name == "proxy_build_info"]
    assert build.labels["rust_version"] == "rustc 1.59.0 (9d1b2106e 2022-02-23)"
    assert build.value == 1

    tcp_in = {
        "direction": "inbound",
        "peer": "src",
        "target_addr": "0.0.0.0:4191",
        "target_ip": "0.0.0.0",
        "target_port": "4191",
        "tls": "no_identity",
        "no_tls_reason": "no_tls_from_remote",
        "srv_kind": "default",
        "srv_name": "all-unauthenticated",
    }
    assert _one(exp, "tcp_write_bytes_total", tcp_in) == 63256
    assert _one(exp, "tcp_close_total", {**tcp_in, "errno": ""}) == 29
    assert _one(exp, "process_cpu_seconds_total", {}) == 0.07
    assert _one(exp, "identity_cert_expiration_timestamp_seconds", {}) == 1651053543

    assert exp.types["response_latency_ms"] == "histogram"
    assert exp.types["identity_cert_refresh_count"] == "counter"
    assert exp.types["stack_poll_total_ms"] == "counter"
    assert exp.family_of("response_latency_ms_bucket") == "response_latency_ms"
    assert exp.family_of("response_latency_ms_sum") == "response_latency_ms"
    # Two families whose names are prefixes of each other stay apart.
    assert exp.family_of("stack_poll_total") == "stack_poll_total"
    assert exp.family_of("stack_poll_total_ms") == "stack_poll_total_ms"
    assert sum(1 for s in exp.samples if s.name == "stack_poll_total") == 27
    assert exp.helps["tcp_open_total"] == "Total count of opened connections"


def test_fixture_02_policy_labels_2021(fixtures_dir: Path) -> None:
    exp = parse(_load(fixtures_dir, "02"))
    assert exp.errors == []
    assert [s.value for s in exp.samples] == [1319, 7, 1, 3147]
    assert {s.labels["srv_name"] for s in exp.samples} == {"default:all-unauthenticated"}
    assert exp.samples[3].labels == {
        "target_addr": "10.42.0.63:8090",
        "target_ip": "10.42.0.63",
        "target_port": "8090",
        "srv_name": "default:all-unauthenticated",
        "saz_name": "default:all-unauthenticated",
        "tls": "true",
        "client_id": "default.default.serviceaccount.identity.linkerd.cluster.local",
    }
    assert exp.types == {"inbound_http_authz_allow_total": "counter"}


def test_fixture_03_datadog_2019(fixtures_dir: Path) -> None:
    exp = parse(_load(fixtures_dir, "03"))
    assert exp.errors == []
    assert len(exp.samples) == 271
    assert exp.eof is False

    # Families declared with HELP/TYPE but no samples.
    empty = {
        "retry_skipped_total",
        "route_actual_retry_skipped_total",
        "control_retry_skipped_total",
    }
    for fam in empty:
        assert exp.types[fam] == "counter"
    with_samples = {exp.family_of(s.name) for s in exp.samples}
    assert set(exp.types) - with_samples == empty

    assert (
        _one(
            exp,
            "request_total",
            {
                "direction": "inbound",
                "tls": "no_identity",
                "no_tls_reason": "not_provided_by_remote",
            },
        )
        == 852
    )
    # authority before direction: order in the text does not matter.
    first_auth = exp.samples[1]
    assert first_auth.labels == {
        "authority": "linkerd-destination.linkerd.svc.cluster.local:8086",
        "direction": "inbound",
        "tls": "true",
        "client_id": "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local",
    }
    hist = {
        "direction": "inbound",
        "tls": "no_identity",
        "no_tls_reason": "not_provided_by_remote",
        "status_code": "200",
    }
    assert _one(exp, "response_latency_ms_bucket", {**hist, "le": "1"}) == 705
    assert _one(exp, "response_latency_ms_bucket", {**hist, "le": "2"}) == 814
    assert _one(exp, "response_latency_ms_count", hist) == 852
    assert _one(exp, "response_latency_ms_sum", hist) == 2314
    assert _le_values(exp, "tcp_connection_duration_ms_bucket") == LEGACY_LE

    route = {"direction": "inbound", "dst": "172.17.0.17:9996", "status_code": "200"}
    assert _one(exp, "route_response_latency_ms_bucket", {**route, "le": "1"}) == 234
    assert _one(exp, "route_response_latency_ms_sum", route) == 186

    close = {"direction": "inbound", "peer": "src", "tls": "no_identity"}
    close["no_tls_reason"] = "not_provided_by_remote"
    assert _one(exp, "tcp_close_total", {**close, "errno": "EPIPE"}) == 1
    assert _one(exp, "tcp_close_total", {**close, "errno": ""}) == 556
    assert _one(exp, "tcp_connection_duration_ms_sum", {**close, "errno": ""}) == 168
    assert _one(exp, "process_resident_memory_bytes", {}) == 15806464
    assert (
        _one(
            exp,
            "response_total",
            {
                "authority": "linkerd-prometheus.linkerd.svc.cluster.local:9090",
                "direction": "outbound",
                "dst_control_plane_ns": "linkerd",
                "dst_deployment": "linkerd-prometheus",
                "dst_namespace": "linkerd",
                "dst_pod": "linkerd-prometheus-84df7f64c-bb6l4",
                "dst_pod_template_hash": "84df7f64c",
                "dst_service": "linkerd-prometheus",
                "dst_serviceaccount": "linkerd-prometheus",
                "tls": "true",
                "server_id": PROM_SA_2019,
                "status_code": "200",
                "classification": "success",
            },
        )
        == 16275
    )


ROUTE_2025 = {
    "parent_group": "core",
    "parent_kind": "Service",
    "parent_namespace": "simple-app",
    "parent_name": "simple-app-v1",
    "parent_port": "80",
    "parent_section_name": "",
    "route_group": "",
    "route_kind": "default",
    "route_namespace": "",
    "route_name": "http",
}
BACKEND_2025 = {
    "backend_group": "core",
    "backend_kind": "Service",
    "backend_namespace": "simple-app",
    "backend_name": "simple-app-v1",
    "backend_port": "80",
    "backend_section_name": "",
}


def test_fixture_04_openmetrics_routes_2025(fixtures_dir: Path) -> None:
    exp = parse(_load(fixtures_dir, "04"))
    assert exp.errors == []
    assert len(exp.samples) == 19
    # The capture was filtered by its author and does NOT contain `# EOF`
    # (only its SOURCE comment mentions it).
    assert exp.eof is False

    req = "outbound_http_route_request_duration_seconds"
    labels = {**ROUTE_2025, "hostname": ""}
    # prom-client order: _sum, _count, then buckets with float le first.
    assert [s.name for s in exp.samples[:3]] == [f"{req}_sum", f"{req}_count", f"{req}_bucket"]
    assert _one(exp, f"{req}_sum", labels) == 0.5594713199999999
    assert _one(exp, f"{req}_count", labels) == 284
    assert _le_values(exp, f"{req}_bucket") == ["0.05", "0.5", "1.0", "10.0", "+Inf"]
    assert _one(exp, f"{req}_bucket", {**labels, "le": "1.0"}) == 284
    assert exp.types[req] == "histogram"
    assert exp.units[req] == "seconds"

    be = "outbound_http_route_backend_response_duration_seconds"
    be_labels = {**ROUTE_2025, **BACKEND_2025}
    assert _one(exp, f"{be}_sum", be_labels) == 0.4626854930000003
    assert _le_values(exp, f"{be}_bucket") == [
        "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "10.0", "+Inf",
    ]  # fmt: skip

    # Counter declared without _total, sampled with it.
    statuses = "outbound_http_route_request_statuses"
    assert exp.types[statuses] == "counter"
    assert statuses not in {s.name for s in exp.samples}
    assert _one(exp, f"{statuses}_total", {**labels, "http_status": "200", "error": ""}) == 284
    assert exp.family_of(f"{statuses}_total") == statuses
    assert exp.family_of(f"{be}_bucket") == be
    assert exp.family_of(f"{be}_count") == be


def test_fixture_05_promclient_process_section_2023(fixtures_dir: Path) -> None:
    exp = parse(_load(fixtures_dir, "05"))
    assert exp.errors == []
    assert exp.eof is True
    assert len(exp.samples) == 9
    assert _one(exp, "process_start_time_seconds", {}) == 1701829321.4647413
    assert _one(exp, "process_uptime_seconds_total", {}) == 51.986633717
    assert _one(exp, "process_cpu_seconds_total", {}) == 0.04
    assert _one(exp, "process_max_fds", {}) == 1048576
    assert exp.types["process_cpu_seconds"] == "counter"
    assert exp.family_of("process_cpu_seconds_total") == "process_cpu_seconds"
    assert exp.units == {
        "process_start_time_seconds": "seconds",
        "process_uptime_seconds": "seconds",
        "process_cpu_seconds": "seconds",
        "process_virtual_memory_bytes": "bytes",
        "process_resident_memory_bytes": "bytes",
    }
    assert exp.samples[0].labels == {
        "date": "2023-12-06T02:15:30Z",
        "git_sha": "9c29322d5",
        "profile": "release",
        "vendor": "code@ver-sea",
        "version": "0.0.0-dev.9c29322d5",
    }


def test_full_body_legacy_then_openmetrics(fixtures_dir: Path) -> None:
    """A 2.15+ body is the legacy families followed by the prom-client section."""
    legacy = _load(fixtures_dir, "03")
    om = _load(fixtures_dir, "04") + _load(fixtures_dir, "05")
    exp = parse(legacy + om)
    assert exp.errors == []
    assert exp.eof is True
    assert len(exp.samples) == 271 + 19 + 9
    assert exp.family_of("response_latency_ms_bucket") == "response_latency_ms"
    assert exp.family_of("outbound_http_route_request_statuses_total") == (
        "outbound_http_route_request_statuses"
    )
    # Both process_cpu declarations are kept under their own names.
    assert exp.types["process_cpu_seconds_total"] == "counter"
    assert exp.types["process_cpu_seconds"] == "counter"


def test_fast_path_matches_scanner_on_fixtures(fixtures_dir: Path) -> None:
    for name in FIXTURE_NAMES:
        text = (fixtures_dir / name).read_text(encoding="utf-8")
        lines = [ln for ln in text.split("\n") if ln and not ln.startswith("#")]
        assert parse(text).samples == [_scan_sample(ln) for ln in lines], name


def _canonical(exp: Exposition) -> Counter[tuple[str, tuple[tuple[str, str], ...], object]]:
    out: Counter[tuple[str, tuple[tuple[str, str], ...], object]] = Counter()
    for s in exp.samples:
        name = s.name
        # prometheus_client renames the samples of a counter declared
        # without _total to name_total (its OpenMetrics model); mirror that.
        if exp.types.get(name) == "counter" and not name.endswith("_total"):
            name += "_total"
        out[(name, tuple(sorted(s.labels.items())), _val(s.value))] += 1
    return out


def _val(v: float) -> object:
    return "NaN" if math.isnan(v) else float(v)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_cross_check_with_prometheus_client(fixtures_dir: Path, name: str) -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as om_families,
    )
    from prometheus_client.parser import text_string_to_metric_families

    text = (fixtures_dir / name).read_text(encoding="utf-8")
    families = None
    for ref_parser in (text_string_to_metric_families, om_families):
        try:
            families = list(ref_parser(text))
            break
        except ValueError:
            continue
    if families is None:
        pytest.skip(f"neither prometheus_client parser accepts {name}")
    ref: Counter[tuple[str, tuple[tuple[str, str], ...], object]] = Counter(
        (s.name, tuple(sorted(s.labels.items())), _val(s.value))
        for fam in families
        for s in fam.samples
    )
    ours = _canonical(parse(text))
    assert ours == ref
    assert sum(ours.values()) > 0


@pytest.mark.parametrize("prefix", ["04", "05"])
def test_cross_check_with_strict_openmetrics_parser(fixtures_dir: Path, prefix: str) -> None:
    """The prom-client captures are valid OpenMetrics once the SOURCE header
    (OpenMetrics allows no free comments) is dropped and `# EOF` ensured."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    text = _load(fixtures_dir, prefix).split("\n", 1)[1]
    if "# EOF" not in text:
        text += "# EOF\n"
    families = list(text_string_to_metric_families(text))  # type: ignore[no-untyped-call]
    exp = parse(text)
    assert exp.errors == []
    assert exp.eof is True
    ref = Counter(
        (s.name, tuple(sorted(s.labels.items())), _val(s.value), s.timestamp)
        for fam in families
        for s in fam.samples
    )
    ours = Counter(
        (s.name, tuple(sorted(s.labels.items())), _val(s.value), s.timestamp) for s in exp.samples
    )
    assert ours == ref
    assert exp.types == {fam.name: fam.type for fam in families}
    assert exp.units == {fam.name: fam.unit for fam in families if fam.unit}
    owner = {(r.name, tuple(sorted(r.labels.items()))): f.name for f in families for r in f.samples}
    for s in exp.samples:
        assert exp.family_of(s.name) == owner[(s.name, tuple(sorted(s.labels.items())))]


# --------------------------------------------------------------------------
# malformed input


MIXED = "\n".join(
    [
        "# HELP foo_total A foo.",  # 1
        "# TYPE foo_total counter",  # 2
        'foo_total{a="x"} 1',  # 3
        'foo_total{a="y',  # 4  unterminated quote / truncated
        'foo_total{a="z"} 2',  # 5
        r'foo_total{a="b\q"} 3',  # 6  bad escape
        'foo_total{a="n"} NaN',  # 7  NaN is a value, not an error
        'foo_total{a="m"}',  # 8  missing value
        'foo_total{a="d",a="e"} 4',  # 9  duplicate label
        'foo_total{a="t"} 12abc',  # 10 non-numeric value
        'foo_total{a="w"} 5 1700000000000',  # 11 timestamp
        "foo_total{a=",  # 12 truncated
        "foo_total",  # 13 missing value, no labels
        'foo_total{a="v"} +Inf',  # 14
        'foo_total{a="v2"} -Inf 17',  # 15
        'foo_total{a="q"} 1 2 3',  # 16 trailing junk
        "9lives 1",  # 17 bad name
        'foo_total{a="r"} 1_000',  # 18 Python-only float syntax
        r'foo_total{a="tab\t"} 1',  # 19 only \\, \" and \n are escapes
        'foo_total{a="s"} \u0661',  # 20 non-ASCII digit
    ]
)


def test_malformed_lines_are_reported_and_skipped() -> None:
    exp = parse(MIXED)
    assert [e.line_no for e in exp.errors] == [4, 6, 8, 9, 10, 12, 13, 16, 17, 18, 19, 20]
    by_line = {e.line_no: e.message for e in exp.errors}
    assert by_line[4] == "unterminated label value for 'a'"
    assert by_line[6].startswith("invalid escape '\\q' in value of label 'a'")
    assert by_line[8] == "missing value"
    assert by_line[9] == "duplicate label name 'a'"
    assert by_line[10] == "invalid value '12abc'"
    assert by_line[12].startswith("truncated line")
    assert by_line[13] == "missing value"
    assert by_line[16].startswith("unexpected text after timestamp")
    assert by_line[17].startswith("expected metric name")
    assert by_line[18] == "invalid value '1_000'"
    assert by_line[19].startswith("invalid escape '\\t' in value of label 'a'")
    assert by_line[20] == "invalid value '\u0661'"

    got = [(s.labels["a"], s.value, s.timestamp) for s in exp.samples]
    assert got[0] == ("x", 1.0, None)
    assert got[1] == ("z", 2.0, None)
    assert got[2][0] == "n"
    assert math.isnan(got[2][1])
    assert got[2][2] is None
    assert got[3:] == [
        ("w", 5.0, 1700000000000.0),
        ("v", math.inf, None),
        ("v2", -math.inf, 17.0),
    ]
    assert exp.types == {"foo_total": "counter"}


def test_error_display_format() -> None:
    exp = parse('ok 1\n\n\nfoo{a="b')
    (err,) = exp.errors
    assert err == ParseError(4, 'foo{a="b', "unterminated label value for 'a'")
    assert str(err) == "line 4: unterminated label value for 'a' in 'foo{a=\"b'"


def test_huge_line_rejected_without_parsing() -> None:
    huge = 'big{a="' + "x" * (MAX_LINE_CHARS + 10) + '"} 1'
    exp = parse(f"before 1\n{huge}\nafter 2\n")
    assert [(s.name, s.value) for s in exp.samples] == [("before", 1.0), ("after", 2.0)]
    (err,) = exp.errors
    assert err.line_no == 2
    assert err.message.startswith("line too long")
    assert len(err.line) <= 201


def test_line_at_limit_still_parses() -> None:
    value = "x" * (MAX_LINE_CHARS - len('big{a=""} 1'))
    exp = parse(f'big{{a="{value}"}} 1')
    assert exp.errors == []
    assert exp.samples[0].labels["a"] == value


def test_invalid_utf8_bytes() -> None:
    body = b'good 1\n\xff\xfe\x00junk 2\nhalf{a="caf\xc3"} 3\nok{a="caf\xc3\xa9"} 4\n'
    exp = parse(body)
    assert [e.line_no for e in exp.errors] == [2, 3]
    assert exp.errors[0].message == "invalid UTF-8 (byte 0xff at column 1)"
    assert exp.errors[1].message == "invalid UTF-8 (byte 0xc3 at column 12)"
    assert exp.samples == [Sample("good", {}, 1.0, None), Sample("ok", {"a": "café"}, 4.0, None)]


def test_binary_junk_in_str() -> None:
    exp = parse('a 1\n\x00\x01\x02\x7f\nb 2\n}{"\\ 3\n')
    assert [e.line_no for e in exp.errors] == [2, 4]
    assert [s.name for s in exp.samples] == ["a", "b"]


def test_valid_edge_syntax() -> None:
    text = "\n".join(
        [
            "empty{} 1",
            "bare 2",
            r'esc{a="q\"uote",b="back\\slash",c="new\nline",d="x,y=\"z\""} 3',
            'trailing{a="1",} 4',
            'spaced { a = "1" , b="2" } 5',
            "  indented 6",
            "\t# indented comment",
            "tabs\t7\t8",
            "exp 1e-3",
            "nan nan",
            'h_bucket{le="+Inf",le2="x"} 9',
            'withex_bucket{le="0.5"} 10 # {trace_id="abc"} 0.4 1.7e9',
            "name_only_ex 11 # {} 1",
            "",
        ]
    )
    exp = parse_strict(text)
    s = exp.samples
    assert s[0] == Sample("empty", {}, 1.0, None)
    assert s[1] == Sample("bare", {}, 2.0, None)
    assert s[2].labels == {"a": 'q"uote', "b": "back\\slash", "c": "new\nline", "d": 'x,y="z"'}
    assert s[3] == Sample("trailing", {"a": "1"}, 4.0, None)
    assert s[4] == Sample("spaced", {"a": "1", "b": "2"}, 5.0, None)
    assert s[5] == Sample("indented", {}, 6.0, None)
    assert s[6] == Sample("tabs", {}, 7.0, 8.0)
    assert s[7].value == 0.001
    assert math.isnan(s[8].value)
    assert s[9] == Sample("h_bucket", {"le": "+Inf", "le2": "x"}, 9.0, None)
    assert s[10] == Sample("withex_bucket", {"le": "0.5"}, 10.0, None)
    assert s[11] == Sample("name_only_ex", {}, 11.0, None)
    assert len(s) == 12


def test_crlf_and_bom() -> None:
    exp = parse_strict(b'\xef\xbb\xbf# TYPE x gauge\r\nx{a="1"} 1\r\n\r\n# EOF\r\n\r')
    assert exp.samples == [Sample("x", {"a": "1"}, 1.0, None)]
    assert exp.types == {"x": "gauge"}
    assert exp.eof is True


def test_bucket_label_cache_does_not_leak_between_series() -> None:
    text = "\n".join(
        [
            "# TYPE h histogram",
            'h_bucket{a="1",le="1"} 1',
            'h_bucket{a="1",le="+Inf"} 2',
            'h_count{a="1"} 2',
            'h_bucket{a="2",le="1"} 3',
            'h_bucket{le="1",a="1"} 4',  # le first, same base as series a=1
            'h_bucket{a="1",le="1",b="x"} 5',  # le in the middle
            'h_bucket{a=",le=",le="7"} 6',  # the text ',le="' inside a value
            'h_bucket{a="1",le="1",le="2"} 7',  # duplicate le
            'h_bucket{a="1",,le="1"} 8',  # double comma
            'h_bucket{b=",le=",c=",x"} 9',  # a fake ',le="' that looks like a pair
            'h_bucket{a="1",le="1"} 10',
            'h_count{a="1"} 11',
            'h_bucket{le="1",a="1",le="2"} 12',  # duplicate le, both ends
            'h_bucket{le="1",,a="1"} 13',  # double comma after a leading le
        ]
    )
    exp = parse(text)
    assert [(s.labels, s.value) for s in exp.samples] == [
        ({"a": "1", "le": "1"}, 1.0),
        ({"a": "1", "le": "+Inf"}, 2.0),
        ({"a": "1"}, 2.0),
        ({"a": "2", "le": "1"}, 3.0),
        ({"a": "1", "le": "1"}, 4.0),
        ({"a": "1", "le": "1", "b": "x"}, 5.0),
        ({"a": ",le=", "le": "7"}, 6.0),
        ({"b": ",le=", "c": ",x"}, 9.0),
        ({"a": "1", "le": "1"}, 10.0),
        ({"a": "1"}, 11.0),
    ]
    assert [(e.line_no, e.message) for e in exp.errors] == [
        (9, "duplicate label name 'le'"),
        (10, "expected label name at column 16, found ','"),
        (14, "duplicate label name 'le'"),
        (15, "expected label name at column 17, found ','"),
    ]
    # Each sample owns its dict.
    exp.samples[0].labels["mutated"] = "yes"
    assert "mutated" not in exp.samples[1].labels
    assert "mutated" not in exp.samples[2].labels


def test_comment_lines() -> None:
    text = "\n".join(
        [
            "# POD web-abc (1 of 2)",
            "#",
            "# HELP esc Line one\\nback\\\\slash",
            "# TYPE esc gauge",
            "# TYPE esc counter",  # conflicting redeclaration
            "# TYPE other flux",  # unknown type
            "# TYPE",  # malformed
            "# TYPE 0bad gauge",  # bad name
            "# UNIT esc seconds",
            "#TYPE not_a_directive counter",
            "esc 1",
            "# EOF",
            "# POD web-def (2 of 2)",  # diagnostics concatenates pods
            "after_eof 2",
            "# EOF",
        ]
    )
    exp = parse(text)
    assert exp.helps["esc"] == "Line one\nback\\slash"
    assert exp.types == {"esc": "gauge"}
    assert exp.units == {"esc": "seconds"}
    assert exp.eof is True
    assert [s.name for s in exp.samples] == ["esc", "after_eof"]
    assert [e.line_no for e in exp.errors] == [5, 6, 7, 8]
    assert "conflicting TYPE" in exp.errors[0].message
    assert exp.errors[1].message == "unknown metric type 'flux'"


def test_family_of_respects_types() -> None:
    exp = parse(
        "# TYPE g gauge\n# TYPE s summary\n# TYPE c counter\n# TYPE c_total counter\n"
        "g_count 1\ns_count 1\ns_sum 1\ns 1\nc_total 1\n"
    )
    assert exp.family_of("g_count") == "g_count"  # a gauge has no _count
    assert exp.family_of("s_count") == "s"
    assert exp.family_of("s_bucket") == "s_bucket"  # a summary has no buckets
    assert exp.family_of("c_total") == "c_total"  # exact declaration wins
    assert exp.family_of("undeclared_total") == "undeclared_total"


def test_parse_strict_raises_with_all_errors() -> None:
    with pytest.raises(ExpositionError) as info:
        parse_strict(MIXED)
    assert [e.line_no for e in info.value.errors] == [4, 6, 8, 9, 10, 12, 13, 16, 17, 18, 19, 20]
    assert "line 4: unterminated label value for 'a'" in str(info.value)
    assert parse_strict("x 1").samples == [Sample("x", {}, 1.0, None)]


def test_wrong_argument_type() -> None:
    with pytest.raises(TypeError):
        parse(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# properties

_METRIC_NAMES = st.one_of(
    st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,15}", fullmatch=True),
    st.from_regex(r"[a-z]{1,6}_bucket", fullmatch=True),
)
_LABEL_NAMES = st.one_of(
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True), st.just("le")
)
_LABEL_VALUES = st.text(
    alphabet=st.one_of(st.sampled_from('"\\\n{},= le#\t'), st.characters(codec="utf-8")),
    max_size=16,
)
_VALUES = st.floats(allow_nan=True, allow_infinity=True)
_TIMESTAMPS = st.one_of(st.none(), st.integers(min_value=-(2**53), max_value=2**53))


def _render_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _render_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def _bodies(draw: st.DrawFn) -> list[tuple[str, dict[str, str], float, int | None]]:
    # A few shared label sets, so the per-parse caches see repeats.
    label_sets = draw(
        st.lists(st.dictionaries(_LABEL_NAMES, _LABEL_VALUES, max_size=4), min_size=1, max_size=3)
    )
    rows = draw(
        st.lists(
            st.tuples(
                _METRIC_NAMES,
                st.sampled_from(label_sets),
                _LABEL_VALUES,
                st.booleans(),
                _VALUES,
                _TIMESTAMPS,
            ),
            min_size=1,
            max_size=12,
        )
    )
    out = []
    for name, base, le, add_le, value, ts in rows:
        labels = dict(base)
        if add_le:
            labels["le"] = le
        out.append((name, labels, value, ts))
    return out


def _render(rows: list[tuple[str, dict[str, str], float, int | None]], trailing: bool) -> str:
    lines = []
    for name, labels, value, ts in rows:
        block = ",".join(f'{k}="{_render_label(v)}"' for k, v in labels.items())
        if trailing and block:
            block += ","
        line = f"{name}{{{block}}} {_render_value(value)}" if labels or trailing else name
        if not labels and not trailing:
            line += f" {_render_value(value)}"
        if ts is not None:
            line += f" {ts}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _same_sample(a: Sample, b: Sample) -> bool:
    same_value = (math.isnan(a.value) and math.isnan(b.value)) or a.value == b.value
    return a.name == b.name and a.labels == b.labels and same_value and a.timestamp == b.timestamp


def _same(a: Sample, name: str, labels: dict[str, str], value: float, ts: int | None) -> bool:
    same_value = (math.isnan(a.value) and math.isnan(value)) or a.value == value
    same_ts = a.timestamp is None if ts is None else a.timestamp == float(ts)
    return a.name == name and a.labels == labels and same_value and same_ts


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_bodies(), trailing=st.booleans())
def test_roundtrip_rendered_samples(
    rows: list[tuple[str, dict[str, str], float, int | None]], trailing: bool
) -> None:
    text = _render(rows, trailing)
    exp = parse(text)
    assert exp.errors == []
    assert len(exp.samples) == len(rows)
    for got, (name, labels, value, ts) in zip(exp.samples, rows, strict=True):
        assert _same(got, name, labels, value, ts), (got, name, labels, value, ts)
    # The fast path and the exact scanner must agree line by line.
    scanned = [_scan_sample(ln) for ln in text.split("\n") if ln]
    assert len(scanned) == len(exp.samples)
    for a, b in zip(exp.samples, scanned, strict=True):
        assert _same_sample(a, b), (a, b)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_never_raises_on_arbitrary_input(data: str | bytes) -> None:
    exp = parse(data)
    assert all("internal parser error" not in e.message for e in exp.errors)
    for e in exp.errors:
        assert isinstance(e, ParseError)
        assert e.line_no >= 1


_LINE_PIECES = st.sampled_from(
    ["a", "a_bucket", "{", "}", '"', "\\", "=", ",", " ", "le", 'le="', "1", "NaN", "#", "\n"]
)


@settings(max_examples=400)
@given(st.lists(_LINE_PIECES, max_size=25).map("".join))
def test_fast_path_agrees_with_scanner_on_noise(text: str) -> None:
    """Near-valid junk is where a fast path and an exact scanner drift apart."""
    exp = parse(text)
    assert all("internal parser error" not in e.message for e in exp.errors)
    expected_samples = []
    expected_errors = []
    for no, raw in enumerate(text.split("\n"), 1):
        line = raw.lstrip(" \t")
        if not line.strip() or line.startswith("#"):
            continue
        try:
            expected_samples.append(_scan_sample(line))
        except Exception:
            expected_errors.append(no)
    assert [e.line_no for e in exp.errors] == expected_errors
    assert len(exp.samples) == len(expected_samples)
    for a, b in zip(exp.samples, expected_samples, strict=True):
        assert _same_sample(a, b), (a, b)
