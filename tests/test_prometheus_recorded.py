"""The Prometheus source's recorded mode: meshwatch's recording rules, a real Prometheus.

1. The rules, pure: each is the raw window query evaluated at one aligned
   instant with a sentinel row; ``promtool`` accepts the shipped file and it
   matches the default configuration; rows are split between rules and raw
   queries by workload.
2. The real Prometheus (Debian package ``prometheus``) loading the rules and
   scraping a realtime simulated mesh: recorded windows agree with the direct
   scrape (counts exactly, quantiles within one bucket) and with the raw mode,
   across pod restarts; ``auto`` without the rules is the raw mode (and ``on``
   skips), and turns to the rules once they are loaded.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.collect.collector import Collector
from pipeline.collect.prometheus_source import PromCycleReport, PrometheusSource, rules_for
from pipeline.collect.promql import (
    EXACT_HISTOGRAMS,
    RULES_LABEL,
    SENTINEL_LABEL,
    Labels,
    Window,
    family_queries,
    golden_families,
    new_series_sums,
)
from pipeline.collect.promwindow import (
    Coverage,
    RawScope,
    raw_scope,
    recorded_rows,
    scoped_rows,
)
from pipeline.collect.scrape import make_scrape_client
from pipeline.collect.targets import Target
from pipeline.config import MeshwatchConfig, load_config
from pipeline.schema import GoldenBatch
from pipeline.simulate import SimulatedMesh
from pipeline.simulate.prometheus import LocalPrometheus, PrometheusError, find_prometheus
from tests.test_prometheus_source import (
    FAULTS,
    T1,
    GateClock,
    _sleep_until,
    assert_same_batches,
    info_rows,
    mixed_mesh,
    steady,
)

REPO = Path(__file__).resolve().parents[1]
RULES_FILE = REPO / "deploy" / "prometheus" / "meshwatch-rules.yaml"
GENERATE = REPO / "deploy" / "prometheus" / "generate-rules"
LABELS = Labels()


def make_cfg(url: str = "http://127.0.0.1:9", window: float = 5.0, **prom: Any) -> MeshwatchConfig:
    return load_config(
        None,
        {
            "cluster": "rec-test",
            "window": {"seconds": window, "scrape_timeout_seconds": min(window, 2.0)},
            "collector": {"source": "prometheus"},
            "prometheus": {"url": url, **prom},
        },
    )


# -- 1. the rules, pure ------------------------------------------------------------------


def test_each_rule_is_the_raw_query_at_one_aligned_instant_with_a_sentinel() -> None:
    cfg = make_cfg(window=10.0, query_delay_seconds=2.0)
    rules = rules_for(cfg)
    w = Window(t1=10.0, seconds=10.0, selector='job="linkerd-proxy"', labels=LABELS)
    raw = [q for f in golden_families() for q in family_queries(w, f)]
    assert [r.raw for r in rules.rules] == raw
    for r in rules.rules:
        # One point per evaluation: the last multiple of 10 s at or before te - 2 s.
        assert f"last_over_time(({r.raw})[10000ms:10000ms] offset 2000ms)" in r.expr
        assert f'label_replace(floor(vector(time() - 2) / 10) * 10, "{SENTINEL_LABEL}"' in r.expr
        assert r.expr.endswith(f'"{RULES_LABEL}", "{rules.fingerprint}", "", "")')
    groups = rules.to_yaml_obj()["groups"]
    assert isinstance(groups, list) and len(groups) == len(rules.rules)
    assert {g["interval"] for g in groups} == {"10000ms"}  # one evaluation per window
    # Another window length, delay or selector: another fingerprint (those rules are not read).
    others = [
        make_cfg(window=5.0, query_delay_seconds=2.0),
        make_cfg(window=10.0, query_delay_seconds=1.0),
        make_cfg(window=10.0, query_delay_seconds=2.0, selector='job="proxies"'),
    ]
    assert len({rules.fingerprint, *(rules_for(c).fingerprint for c in others)}) == 4


def test_shipped_rules_are_current_and_promtool_accepts_them(tmp_path: Path) -> None:
    check = subprocess.run(
        [sys.executable, str(GENERATE), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    shipped = yaml.safe_load(RULES_FILE.read_text())
    want = rules_for(load_config(REPO / "config" / "default.yaml")).to_yaml_obj()
    assert shipped == want
    promtool = find_prometheus()
    tool = None if promtool is None else Path(promtool).with_name("promtool")
    if tool is None or not tool.exists():
        pytest.skip("no promtool (Debian package prometheus)")
    out = subprocess.run(
        [str(tool), "check", "rules", str(RULES_FILE)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(want['groups'])} rules found" in out.stdout  # type: ignore[arg-type]


def test_new_histogram_queries_name_them_and_parse_with_promtool(tmp_path: Path) -> None:
    """Few new histograms: each named by all its labels; many: one superset selector."""
    if shutil.which("promtool") is None:
        pytest.skip("no promtool (Debian package prometheus)")
    w = Window(
        t1=T1,
        seconds=10.0,
        selector='job="linkerd-proxy"',
        labels=LABELS,
        new_series=(("shop", "web-0"),),
    )
    fam = next(f for f in golden_families() if f.name == "route_response_latency_ms_bucket")

    def hist(route: str) -> dict[str, str]:
        return {
            "__name__": "route_response_latency_ms_sum",
            "mw_info": "new_hist",
            "namespace": "shop",
            "pod": "web-0",
            "direction": "inbound",
            "rt_route": route,
        }

    few = new_series_sums(w, fam, [hist("GET /a"), hist("GET /b")])
    assert len(few) == 1 and 'rt_route="GET /a"' in few[0] and 'rt_route="GET /b"' in few[0]
    assert "mw_info" not in few[0]
    many = new_series_sums(w, fam, [hist(f"GET /{i}") for i in range(EXACT_HISTOGRAMS + 1)])
    assert len(many) == 1 and 'rt_route=~"GET /0|GET /1|' in many[0]
    assert new_series_sums(w, fam, [hist("GET /a") | {"pod": "web-9"}]) == []  # not a new pod
    rules = [{"record": f"mw:q{i}", "expr": e} for i, e in enumerate([*few, *many])]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_runs_a_bucket_rule_to_the_exact_window(tmp_path: Path) -> None:
    """A per-workload bucket rule in Prometheus' own rule engine (``promtool test rules``).

    Two pods of one workload, the second writing ``le`` as newer proxies do
    (``"1.0"``), and a histogram new in the window: evaluated at 30 s, the rule
    holds exactly the buckets of the window ending at 20 s that went up, summed
    per workload, and its sentinel naming that window. The new histogram is
    not in it (the recorded mode adds new series by a query of its own).
    """
    promtool = find_prometheus()
    tool = None if promtool is None else Path(promtool).with_name("promtool")
    if tool is None or not tool.exists():
        pytest.skip("no promtool (Debian package prometheus)")
    rules = rules_for(make_cfg(window=10.0, query_delay_seconds=2.0))
    rule = next(r for r in rules.rules if r.record.endswith("route_response_latency_ms_bucket:0"))
    groups = rules.to_yaml_obj()["groups"]
    group = next(g for g in groups if g["name"] == rule.group)  # type: ignore[attr-defined]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [group]}))
    # Cumulative buckets at 0 and 10 s, then at 20 and 30 s (evaluated at 30 s: 10-20 s).
    before = [0, 0, 1, 2, 2, 5, 5, 5, 5, 5, 6, *([6] * 13), 6, 7]
    after = [0, 1, 3, 4, 4, 9, 9, 9, 9, 9, 12, *([12] * 13), 12, 14]
    fresh = [0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, *([2] * 13), 2, 3]  # new at 20 s
    series: list[dict[str, str]] = []
    want: dict[tuple[str, str], float] = {}

    def add(pod: str, route: str, at10: list[int] | None, at20: list[int], newer: bool) -> None:
        """The pod's 26 bucket series (``at10`` None: none before 20 s) and its window rows."""
        for i, le in enumerate(LEGACY):
            style = f"{float(le)}" if newer and le != "+Inf" else le
            values = " ".join(["_" if at10 is None else str(at10[i])] * 2 + [str(at20[i])] * 2)
            labels = (
                f'job="linkerd-proxy", namespace="shop", pod="{pod}", deployment="web", '
                f'direction="inbound", rt_route="{route}", le="{style}"'
            )
            series.append(
                {"series": f"route_response_latency_ms_bucket{{{labels}}}", "values": values}
            )
            if at10 is not None:
                want[(route, style)] = want.get((route, style), 0.0) + at20[i] - at10[i]

    add("web-0", "GET /", before, after, newer=False)
    add("web-1", "GET /", before, after, newer=True)
    add("web-0", "POST /", None, fresh, newer=False)
    name = f'__name__="{rule.record}", '
    exp = [
        {
            "labels": (
                f'{{{name}namespace="shop", deployment="web", direction="inbound", '
                f'rt_route="{route}", le="{le}", {RULES_LABEL}="{rules.fingerprint}"}}'
            ),
            "value": v,
        }
        for (route, le), v in want.items()
        if v != 0
    ]
    sentinel = f'{{{name}{SENTINEL_LABEL}="1", {RULES_LABEL}="{rules.fingerprint}"}}'
    exp.append({"labels": sentinel, "value": 20})  # the window that ends at 20 s
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "10s",
        "tests": [
            {
                "interval": "10s",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": rule.record, "eval_time": "30s", "exp_samples": exp},
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    out = subprocess.run(
        [str(tool), "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # 24 finite buckets went up in each le style (le=1 did not), +Inf is one row for both
    # pods, and the sentinel: no row of the new histogram.
    assert len(exp) == 2 * 24 + 1 + 1


LEGACY = [
    *(str(b) for b in (1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500)),
    *(str(b) for b in (1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000)),
    "+Inf",
]


def _target(ns: str, pod: str, wl: str, kind: str = "deployment") -> Target:
    return Target(url=f"http://{pod}", namespace=ns, workload=wl, kind=kind, pod=pod)


def test_odd_pods_take_their_whole_workload_to_raw_rows() -> None:
    cov = Coverage()
    for t in (
        _target("shop", "web-0", "web"),
        _target("shop", "web-1", "web"),
        _target("shop", "api-0", "api"),
        _target("pay", "db-0", "db", "statefulset"),
        _target("tools", "debug", "debug", "pod"),
    ):
        cov.counted[(t.namespace, t.pod)] = t
    cov.restarted.append(("shop", "web-1"))
    cov.left_out.append((_target("pay", "db-1", "db", "statefulset"), "no sample at window start"))
    scope = raw_scope(cov)
    assert scope.pods == {
        ("shop", "web-0"),
        ("shop", "web-1"),
        ("pay", "db-0"),
        ("pay", "db-1"),
        ("tools", "debug"),
    }

    def r(v: float, **labels: str) -> dict[str, Any]:
        return {"metric": {RULES_LABEL: "fp", **labels}, "value": [0, str(v)]}

    rows = [
        r(3, namespace="shop", deployment="web", le="10"),  # a workload in scope
        r(4, namespace="shop", deployment="api", le="10"),
        r(5, namespace="shop", pod="web-0", direction="inbound"),  # a pod in scope
        r(6, namespace="shop", pod="api-0", direction="inbound"),
        r(7, namespace="prod", pod="web-0", direction="inbound"),  # same name, elsewhere
        r(1.7e9, **{SENTINEL_LABEL: "1"}),
    ]
    kept = recorded_rows(rows, scope, LABELS)
    assert [float(x["value"][1]) for x in kept] == [4, 6, 7]
    assert [float(x["value"][1]) for x in recorded_rows(rows, RawScope(), LABELS)] == [
        3,
        4,
        5,
        6,
        7,
    ]
    assert [float(x["value"][1]) for x in scoped_rows(rows, scope, LABELS)] == [3, 5]


class ScriptedPrometheus:
    """Answers the recorded mode's queries from a script (decisions only; no PromQL run).

    Sentinels: every rule evaluated for ``T1`` at ``T1 + 3`` except ``missing`` (whose
    later evaluation exists). A rule read answers its sentinel and one row of
    ``web``; the info query says the pods of ``pods``; raw queries answer nothing
    and are kept in ``raw``.
    """

    def __init__(self, pods: dict[str, dict[str, Any]], missing: tuple[str, ...] = ()) -> None:
        self.pods = pods
        self.missing = missing
        self.raw: list[str] = []
        self.read_at: dict[str, float] = {}

    def query(self, expr: str, at: float, timeout: float) -> list[dict[str, Any]]:
        rules = rules_for(make_cfg(window=10.0, query_delay_seconds=2.0))
        if expr.startswith("{__name__=~"):
            out = []
            for r in rules.rules:
                ends = [(T1 + 13, T1 + 10)] if r.record in self.missing else [(T1 + 3, T1)]
                out.append(
                    {"metric": {"__name__": r.record}, "values": [[t, str(e)] for t, e in ends]}
                )
            return out
        if '"mw_info", "up"' in expr:
            return info_rows(self.pods)
        if expr.startswith("last_over_time(meshwatch:window:"):
            record = expr.split("(", 1)[1].split("{", 1)[0]
            self.read_at[record] = at
            sentinel = {"metric": {SENTINEL_LABEL: "1"}, "value": [at, str(T1)]}
            row = {
                "metric": {"namespace": "shop", "pod": "web-0", "direction": "inbound"},
                "value": [at, "1"],
            }
            return [sentinel, row]
        if "mw_info" not in expr:
            self.raw.append(expr)
        return []

    def close(self) -> None:
        pass


def scripted(mode: str, client: ScriptedPrometheus) -> PrometheusSource:
    cfg = make_cfg(window=10.0, query_delay_seconds=2.0, recorded=mode)
    return PrometheusSource(cfg, client=client, deadline_seconds=5.0)


def test_rules_are_read_at_their_evaluation_and_odd_pods_go_raw() -> None:
    pods = {"web-0": steady(), "web-1": steady(start=T1 - 5, start0=T1 - 86400)}
    client = ScriptedPrometheus(pods)
    src = scripted("on", client)
    rep, batches = asyncio.run(src.build_window(T1))
    asyncio.run(src.aclose())
    assert rep.skipped is None and rep.mode == "recorded" and rep.raw_families == []
    assert set(client.read_at.values()) == {T1 + 3}  # each rule at the evaluation named T1
    assert rep.restarted == 1 and rep.raw_pods == 2  # web-1 restarted: all of web raw
    assert client.raw and all('pod=~"web-0|web-1"' in q for q in client.raw)
    assert rep.recorded_rows == 0  # web's rows from the rules were dropped
    assert [b.pods_up for b in batches] == [("web-0", "web-1")]
    client = ScriptedPrometheus({"web-0": steady(), "web-1": steady()})
    src = scripted("on", client)
    rep, _ = asyncio.run(src.build_window(T1))
    asyncio.run(src.aclose())
    assert rep.raw_pods == 0 and client.raw == [] and rep.recorded_rows > 0


def test_a_missed_evaluation_is_raw_in_auto_and_a_skip_in_on() -> None:
    pods = {"web-0": steady(), "web-1": steady()}
    rule = "meshwatch:window:route_response_latency_ms_bucket:0"
    client = ScriptedPrometheus(pods, missing=(rule,))
    src = scripted("on", client)
    rep, batches = asyncio.run(src.build_window(T1))
    asyncio.run(src.aclose())
    assert batches == [] and rep.skipped is not None and rule in rep.skipped
    client = ScriptedPrometheus(pods, missing=(rule,))
    src = scripted("auto", client)
    rep, _ = asyncio.run(src.build_window(T1))
    asyncio.run(src.aclose())
    assert rep.skipped is None and rep.raw_families == ["route_response_latency_ms_bucket"]
    # The whole family raw (its other rule's rows are not used), nothing else.
    fam = next(f for f in golden_families() if f.name == "route_response_latency_ms_bucket")
    raw_of_family = family_queries(scripted("off", client).window(T1), fam)
    assert sorted(client.raw) == sorted(raw_of_family)
    assert rule not in client.read_at


# -- 2. the real Prometheus --------------------------------------------------------------


class RulesPrometheus(LocalPrometheus):
    """The real Prometheus with ``rule_files`` (loaded at start or on the next reload)."""

    rule_files: tuple[str, ...] = ()

    def _write(self) -> None:
        super()._write()
        if self.rule_files:
            cfg = yaml.safe_load(self.config_path.read_text())
            cfg["rule_files"] = list(self.rule_files)
            self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def load_rules(self, rules_path: Path) -> None:
        self.rule_files = (str(rules_path),)
        self.set_targets(self._targets)  # rewrite the config and reload


def _start(tmp: Path, rules: Path | None = None) -> RulesPrometheus:
    binary = find_prometheus()
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install prometheus (.ci/run does)")
    prom = RulesPrometheus(tmp, binary=binary, scrape_interval=1.0)
    if rules is not None:
        prom.rule_files = (str(rules),)
    try:
        prom.start()
    except PrometheusError as exc:
        pytest.skip(f"prometheus does not start here: {exc}")
    return prom


def write_rules(cfg: MeshwatchConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(rules_for(cfg).to_yaml_obj(), sort_keys=False))
    return path


async def until(cond: Callable[[], Any], limit: float, what: str) -> None:
    """Poll a condition (Prometheus is another process) until it holds or time is up."""
    deadline = time.time() + limit
    while not await asyncio.to_thread(cond):
        if time.time() > deadline:
            pytest.fail(f"{what} within {limit}s")
        await asyncio.sleep(0.2)


def all_up(prom: LocalPrometheus, n: int) -> Callable[[], bool]:
    def check() -> bool:
        rows = prom.query('count(up{job="linkerd-proxy"} == 1)')
        return bool(rows) and int(float(rows[0]["value"][1])) == n

    return check


def counts(batches: list[GoldenBatch]) -> tuple[int, int]:
    reqs = [s.requests for b in batches for s in b.samples]
    fails = [s.failures for b in batches for s in b.samples]
    assert min(reqs, default=0) >= 0 and min(fails, default=0) >= 0, "a negative delta"
    return sum(reqs), sum(fails)


@pytest.fixture
def rules_prometheus(tmp_path: Path) -> Iterator[tuple[RulesPrometheus, MeshwatchConfig]]:
    cfg = make_cfg(window=5.0, query_delay_seconds=1.0, recorded="on")
    prom = _start(tmp_path / "prom", write_rules(cfg, tmp_path / "rules.yaml"))
    cfg = make_cfg(prom.url, window=5.0, query_delay_seconds=1.0, recorded="on")
    try:
        yield prom, cfg
    finally:
        prom.stop()


def test_recorded_windows_agree_with_the_direct_scrape_and_the_raw_mode(
    rules_prometheus: tuple[RulesPrometheus, MeshwatchConfig],
) -> None:
    """The held-mesh setup of the raw agreement test, read through the recording rules.

    Every window is first taken by the direct scrape at its end (the mesh held
    from ``hold`` seconds before it, so that Prometheus scraped the same
    values); pods restart in windows 2 and 3. Once the rules have evaluated
    every window, each is built from the rules (``recorded: on``) and from raw
    series (``off``): both must equal the direct scrape. Workloads without odd
    pods come from the rules' rows (``recorded_rows``).
    """
    prometheus, cfg = rules_prometheus
    window, hold, n_windows = cfg.window.seconds, 2.8, 4
    off = make_cfg(prometheus.url, window=window, query_delay_seconds=1.0, recorded="off")

    async def run() -> None:
        gate = GateClock()
        mesh = SimulatedMesh(mixed_mesh(), scenario=FAULTS, seed=5, clock=gate, realtime=True)
        direct_by_end: dict[float, list[GoldenBatch]] = {}
        async with mesh:
            await asyncio.to_thread(prometheus.set_targets, mesh.targets)
            direct = Collector(
                cfg,
                lambda: [
                    Target(t.url, t.namespace, t.workload, t.kind, t.pod) for t in mesh.targets
                ],
                None,
            )
            await until(all_up(prometheus, len(mesh.targets)), 30, "every target scraped")
            first = math.ceil(time.time() / window) * window + window
            restart_after = {1: "web", 2: "api"}
            async with make_scrape_client(4, True) as client:
                for k in range(n_windows + 1):
                    end = first + k * window
                    await _sleep_until(end - hold)
                    gate.hold()
                    held_at = time.time()
                    await _sleep_until(end)
                    got: list[GoldenBatch] = []
                    direct.on_batches = got.extend
                    report = await direct.cycle(client, end)
                    assert report.down == [] and report.parse_errors == 0
                    await _sleep_until(end + 0.4)
                    gate.release()
                    if k in restart_after:
                        mesh.restart_pod(
                            next(p for p in mesh.pods if p.workload == restart_after[k])
                        )
                    oldest = await asyncio.to_thread(prometheus.oldest_last_scrape, end)
                    assert oldest is not None and oldest >= held_at, "not scraped while held"
                    if k > 0:
                        direct_by_end[end] = got
        # Every window's rules have run by one window plus the delay after its end.
        recorded = PrometheusSource(cfg, deadline_seconds=30.0)
        raw = PrometheusSource(off, deadline_seconds=30.0)
        assert recorded.settle_seconds == 1.0 + window
        reports: list[PromCycleReport] = []
        for end, want in sorted(direct_by_end.items()):
            await _sleep_until(end + recorded.settle_seconds)
            rep, batches = await recorded.build_window(end)
            assert rep.skipped is None, rep.skipped
            assert rep.mode == "recorded" and rep.raw_families == [], rep.recorded_note
            assert rep.left_out == [] and rep.down == []
            assert_same_batches(batches, want)
            raw_rep, raw_batches = await raw.build_window(end)
            assert raw_rep.mode == "raw" and raw_rep.skipped is None
            assert_same_batches(batches, raw_batches)
            assert counts(batches) == counts(want) and counts(batches)[0] > 50
            reports.append(rep)
        await recorded.aclose()
        await raw.aclose()
        assert sum(r.restarted for r in reports) == 2, "both restarts counted, each once"
        assert sum(r.new_series for r in reports) >= 1, "no window added new latency series"
        # Restart windows take the restarted pod's workload raw; the others read rules only.
        assert [r.raw_pods > 0 for r in reports][1:3] == [True, True]
        # (Pods with latency series new in the window, common in this small mesh, take
        # their workload raw too.)
        assert sum(r.recorded_rows for r in reports) > 0, [r.raw_pods for r in reports]

    asyncio.run(run())


def test_auto_reads_raw_series_without_the_rules_and_the_rules_once_loaded(
    tmp_path: Path,
) -> None:
    """``auto``: raw queries while no rules of its fingerprint exist (``on`` skips), then rules.

    Without a held mesh the direct scrape would not see Prometheus' values,
    so each mode is compared with ``off`` (raw series) on the same stored window.
    """
    window = 2.0
    prom = _start(tmp_path / "prom")

    def cfg(mode: str) -> MeshwatchConfig:
        return make_cfg(prom.url, window=window, query_delay_seconds=0.5, recorded=mode)

    async def run() -> None:
        mesh = SimulatedMesh(mixed_mesh(), seed=3, realtime=True)
        async with mesh:
            await asyncio.to_thread(prom.set_targets, mesh.targets)
            await until(all_up(prom, len(mesh.targets)), 30, "every target scraped")
            auto, on, off = (
                PrometheusSource(cfg(m), deadline_seconds=20.0) for m in ("auto", "on", "off")
            )
            # The first window starting after every target was scraped.
            end = math.floor(time.time() / window) * window + 2 * window
            await _sleep_until(end + 1.0)
            rep, batches = await auto.build_window(end)
            assert rep.skipped is None and rep.mode == "raw", rep
            assert rep.recorded_note is not None and "not found" in rep.recorded_note
            assert auto.settle_seconds == 0.5  # no rules: no wait for them
            off_rep, off_batches = await off.build_window(end)
            assert off_rep.skipped is None
            assert_same_batches(batches, off_batches)
            assert counts(batches)[0] > 0
            on_rep, on_batches = await on.build_window(end)
            assert on_batches == [] and on_rep.skipped is not None
            assert "not found" in on_rep.skipped

            await asyncio.to_thread(prom.load_rules, write_rules(cfg("auto"), tmp_path / "r.yaml"))
            loaded = time.time()
            # The first window every rule has evaluated is the one ending a delay after loading.
            first = (math.floor((loaded - 0.5) / window) + 1) * window
            for k in range(6):
                end = first + k * window
                await _sleep_until(end + 0.5 + window)  # every rule evaluated by then
                rep, batches = await auto.build_window(end)
                assert rep.skipped is None, rep.skipped
                if rep.mode == "recorded" and rep.raw_families == []:
                    break
            else:
                pytest.fail(f"auto never read the loaded rules: {rep.recorded_note}")
            assert auto.settle_seconds == 0.5 + window
            off_rep, off_batches = await off.build_window(end)
            assert_same_batches(batches, off_batches)
            for src in (auto, on, off):
                await src.aclose()

    try:
        asyncio.run(run())
    finally:
        prom.stop()
