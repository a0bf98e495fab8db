"""Target discovery: static, Prometheus file_sd, and the Kubernetes API.

The Kubernetes tests run against a local aiohttp server speaking the
documented API over TLS: ``GET /api/v1/namespaces/{ns}/pods`` answers a
``PodList`` (paged with ``limit``/``continue``), ``?watch=1`` streams one
JSON ``WatchEvent`` per line from the requested ``resourceVersion`` on, a
version older than the server keeps answers ``410 Gone`` (as the HTTP status
or as an ``ERROR`` event carrying a ``Status``), and every request must carry
the right bearer token or client certificate. Nothing sleeps: tests await the
discovery's own change notifications, under a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.collect.discovery import Discovery, DiscoveryError, make_discovery
from pipeline.collect.discovery import kubernetes as k8s
from pipeline.collect.discovery.file_sd import FileSD, FileSDError, parse_groups
from pipeline.collect.discovery.kubeapi import (
    ApiAccess,
    KubeConfigError,
    from_kubeconfig,
    in_cluster,
)
from pipeline.collect.discovery.kubernetes import KubernetesPods, pod_target
from pipeline.collect.discovery.static import StaticTargets
from pipeline.collect.targets import Target
from pipeline.config import ConfigError, KubernetesDiscovery, load_config

TIMEOUT = 10.0  # the upper bound on any awaited change; a pass takes milliseconds


async def until(d: Discovery, predicate: Callable[[list[Target]], bool]) -> list[Target]:
    async with asyncio.timeout(TIMEOUT):
        return await d.wait_for(predicate)


def urls(targets: list[Target]) -> list[str]:
    return [t.url for t in targets]


def errors_in(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """ERROR records only (other tests may leave the root logger at INFO)."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- config -------------------------------------------------------------------------------


def collector_cfg(**collector: Any) -> Any:
    return load_config(None, {"collector": collector}).collector


def test_default_discovery_is_the_static_list() -> None:
    c = collector_cfg(
        targets=[{"url": "http://10.0.0.1:4191/metrics", "namespace": "shop", "workload": "web"}]
    )
    d = make_discovery(c)
    assert isinstance(d, StaticTargets)
    assert d.targets() == [
        Target(
            "http://10.0.0.1:4191/metrics",
            "shop",
            "web",
            "deployment",
            "http://10.0.0.1:4191/metrics",
        )
    ]


def test_discovery_kinds_build_their_source(tmp_path: Path) -> None:
    f = tmp_path / "t.json"
    f.write_text("[]")
    assert isinstance(
        make_discovery(collector_cfg(discovery={"kind": "file_sd", "files": [str(f)]})), FileSD
    )
    d = make_discovery(collector_cfg(discovery={"kind": "kubernetes", "namespaces": ["shop"]}))
    assert isinstance(d, KubernetesPods)
    assert (d.scopes, d.label_selector) == (["shop"], "linkerd.io/control-plane-ns=linkerd")


@pytest.mark.parametrize(
    ("collector", "problem"),
    [
        (
            {"discovery": {"kind": "consul"}},
            "collector.discovery: Input tag 'consul' found using 'kind' does not match any of the expected tags: 'static', 'file_sd', 'kubernetes'",
        ),
        ({"discovery": {"kind": "file_sd"}}, "collector.discovery.file_sd.files: Field required"),
        (
            {"discovery": {"kind": "file_sd", "files": []}},
            "collector.discovery.file_sd.files: List should have at least 1 item after validation, not 0",
        ),
        (
            {"discovery": {"kind": "file_sd", "files": ["/etc/t.txt"]}},
            "collector.discovery.file_sd.files: Value error, file_sd files must end in .json, .yml or .yaml: ['/etc/t.txt']",
        ),
        (
            {"discovery": {"kind": "file_sd", "files": ["a.json"], "namespaces": ["x"]}},
            "collector.discovery.file_sd.namespaces: unknown setting (check the spelling and the section)",
        ),
        (
            {"discovery": {"kind": "kubernetes", "namespaces": ["Shop_1"]}},
            "collector.discovery.kubernetes.namespaces.0: String should match pattern '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'",
        ),
        (
            {"discovery": {"kind": "kubernetes", "namespaces": ["a", "a"]}},
            "collector.discovery.kubernetes.namespaces: Value error, namespaces are listed twice",
        ),
        (
            {"discovery": {"kind": "kubernetes", "context": "prod"}},
            "collector.discovery.kubernetes: Value error, context is a kubeconfig setting: set kubeconfig too",
        ),
        (
            {"discovery": {"kind": "kubernetes", "label_selector": " "}},
            "collector.discovery.kubernetes: Value error, label_selector is empty: leave it out instead",
        ),
        (
            {"discovery": {"kind": "kubernetes", "watch_timeout_seconds": 1}},
            "collector.discovery.kubernetes.watch_timeout_seconds: Input should be greater than or equal to 10",
        ),
        (
            {
                "discovery": {"kind": "kubernetes"},
                "targets": [{"url": "http://a:1/metrics", "namespace": "n", "workload": "w"}],
            },
            "collector: Value error, targets are only read with discovery kind static, not kubernetes",
        ),
        (
            {"metrics_address": "9464"},
            "collector.metrics_address: Value error, '9464' is not host:port",
        ),
        (
            {"metrics_address": "0.0.0.0:99999"},
            "collector.metrics_address: Value error, '0.0.0.0:99999' is not host:port",
        ),
        (
            {"parse_workers": -1},
            "collector.parse_workers: Value error, -1: use 'auto' or 0 (parse on the event loop) to 64 processes",
        ),
    ],
)
def test_discovery_config_errors_name_the_setting(collector: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"collector": collector})
    assert problem in err.value.problems, err.value.problems


def test_collector_settings_accept_their_forms() -> None:
    c = collector_cfg(parse_workers=0, metrics_address="[::1]:9464")
    assert (c.parse_workers, c.metrics_address) == (0, "[::1]:9464")
    assert collector_cfg(metrics_address=None).metrics_address is None
    assert collector_cfg().parse_workers == "auto"
    assert collector_cfg(parse_workers="3").parse_workers == 3  # from the environment
    with pytest.raises(ConfigError) as err:
        collector_cfg(parse_workers="many")
    assert err.value.problems == [
        "collector.parse_workers: Value error, 'many' is neither 'auto' nor a number of processes"
    ]


# -- file_sd ------------------------------------------------------------------------------

GROUPS = [
    {
        "targets": ["10.42.0.17:4191", "10.42.0.18:4191"],
        "labels": {"namespace": "shop", "deployment": "web", "app": "web"},
    },
    {
        "targets": ["10.42.1.5:4191"],
        "labels": {"namespace": "payments", "statefulset": "ledger", "pod": "ledger-0"},
    },
    {
        "targets": ["node-a.internal:9999"],
        "labels": {
            "namespace": "infra",
            "daemonset": "agent",
            "__scheme__": "https",
            "__metrics_path__": "/proxy/metrics",
        },
    },
    {"targets": ["10.42.2.9:4191"], "labels": {"namespace": "batch", "k8s_job": "nightly"}},
    {
        "targets": ["10.42.3.3:4191"],
        "labels": {"namespace": "misc", "workload": "tool", "kind": "replicaset"},
    },
    {"targets": [], "labels": {}},
]
GROUP_TARGETS = [
    Target("http://10.42.0.17:4191/metrics", "shop", "web", "deployment", "10.42.0.17:4191"),
    Target("http://10.42.0.18:4191/metrics", "shop", "web", "deployment", "10.42.0.18:4191"),
    Target("http://10.42.1.5:4191/metrics", "payments", "ledger", "statefulset", "ledger-0"),
    Target(
        "https://node-a.internal:9999/proxy/metrics",
        "infra",
        "agent",
        "daemonset",
        "node-a.internal:9999",
    ),
    Target("http://10.42.2.9:4191/metrics", "batch", "nightly", "job", "10.42.2.9:4191"),
    Target("http://10.42.3.3:4191/metrics", "misc", "tool", "replicaset", "10.42.3.3:4191"),
]


def sorted_targets(ts: list[Target]) -> list[Target]:
    return sorted(ts, key=lambda t: (t.namespace, t.workload, t.pod, t.url))


def test_file_sd_labels_map_to_targets() -> None:
    assert parse_groups(GROUPS) == GROUP_TARGETS


@pytest.mark.parametrize("suffix", [".json", ".yml", ".yaml"])
def test_file_sd_reads_json_and_yaml(tmp_path: Path, suffix: str) -> None:
    import yaml

    f = tmp_path / f"targets{suffix}"
    f.write_text(json.dumps(GROUPS) if suffix == ".json" else yaml.safe_dump(GROUPS))
    assert FileSD([str(f)]).targets() == sorted_targets(GROUP_TARGETS)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"targets": []}, "f: expected a list of target groups, got dict"),
        (["10.0.0.1:4191"], "f: group 0: expected a mapping, got str"),
        (
            [{"targets": ["a:1"], "labels": {"namespace": "n", "deployment": "w"}, "extra": 1}],
            "f: group 0: unknown key(s) ['extra']; known: targets, labels",
        ),
        (
            [{"targets": "a:1", "labels": {}}],
            "f: group 0: 'targets' must be a list of host:port strings",
        ),
        (
            [{"targets": ["a:1"], "labels": {"namespace": "n", "replicas": 3}}],
            "f: group 0: 'labels' must map label names to string values",
        ),
        ([{"targets": ["a:1"], "labels": {"deployment": "w"}}], "f: group 0: no 'namespace' label"),
        (
            [{"targets": ["a:1"], "labels": {"namespace": "n"}}],
            "f: group 0: no workload label (deployment, statefulset, daemonset, k8s_job, replicationcontroller, replicaset, or workload)",
        ),
        (
            [
                {
                    "targets": ["a:1"],
                    "labels": {"namespace": "n", "deployment": "w", "__scheme__": "ftp"},
                }
            ],
            "f: group 0: __scheme__ must be http or https, not 'ftp'",
        ),
        (
            [
                {
                    "targets": ["a:1"],
                    "labels": {"namespace": "n", "deployment": "w", "__metrics_path__": "metrics"},
                }
            ],
            "f: group 0: __metrics_path__ must start with '/', not 'metrics'",
        ),
        (
            [{"targets": ["http://a:1/metrics"], "labels": {"namespace": "n", "deployment": "w"}}],
            "f: group 0: 'http://a:1/metrics' is not host:port",
        ),
        (
            [
                {
                    "targets": ["a:1", "b:1"],
                    "labels": {"namespace": "n", "deployment": "w", "pod": "p"},
                }
            ],
            "f: group 0: a 'pod' label on a group of 2 targets",
        ),
    ],
)
def test_file_sd_rejects_what_prometheus_would_not_read(doc: Any, message: str) -> None:
    with pytest.raises(FileSDError) as err:
        parse_groups(doc, "f")
    assert str(err.value) == message


def write(path: Path, groups: Any) -> None:
    """Replace a file the way config managers do: write aside, rename over."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(groups if isinstance(groups, str) else json.dumps(groups))
    os.replace(tmp, path)


def group(ns: str, wl: str, *addresses: str) -> dict[str, Any]:
    return {"targets": list(addresses), "labels": {"namespace": ns, "deployment": wl}}


def test_file_sd_follows_changes_and_keeps_the_last_good_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "mesh.json"
    write(f, [group("shop", "web", "10.0.0.1:4191")])
    d = FileSD([str(f)])
    assert urls(d.targets()) == ["http://10.0.0.1:4191/metrics"]

    write(f, [group("shop", "web", "10.0.0.1:4191", "10.0.0.2:4191")])
    assert urls(d.targets()) == ["http://10.0.0.1:4191/metrics", "http://10.0.0.2:4191/metrics"]

    caplog.set_level(logging.ERROR, "pipeline.collect.discovery.file_sd")
    write(f, '[{"targets": ["10.0.0.3:4191"], "labels": {"namespace": "shop"')  # cut short
    assert urls(d.targets()) == ["http://10.0.0.1:4191/metrics", "http://10.0.0.2:4191/metrics"]
    assert d.errors == 1
    (rec,) = errors_in(caplog)
    assert rec.getMessage().startswith(f"file_sd: {f}: invalid JSON: ")
    assert rec.getMessage().endswith("(keeping the last good 2 target(s))")
    d.targets()  # unchanged since: neither re-read nor logged again
    assert (d.errors, len(errors_in(caplog))) == (1, 1)

    write(f, [group("shop", "web", "10.0.0.3:4191")])
    assert urls(d.targets()) == ["http://10.0.0.3:4191/metrics"]

    f.unlink()
    assert d.targets() == []


def test_file_sd_waits_for_a_file_that_is_not_there_yet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pipeline.collect.discovery.file_sd")
    f = tmp_path / "later.yaml"
    d = FileSD([str(f)])
    d.targets()
    assert d.targets() == [] and d.errors == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"file_sd: {f} does not exist (yet): no targets from it"
    ]  # said once, not every window
    f.write_text("- targets: ['10.0.0.1:4191']\n  labels: {namespace: shop, deployment: web}\n")
    assert urls(d.targets()) == ["http://10.0.0.1:4191/metrics"]


def test_file_sd_rereads_only_when_the_file_changed(tmp_path: Path) -> None:
    """mtime, size and inode decide: same stamp, no read (so a window costs one stat)."""
    f = tmp_path / "mesh.json"
    write(f, [group("shop", "web", "10.0.0.1:4191")])
    d = FileSD([str(f)])
    st = f.stat()
    with open(f, "r+") as fh:  # same size, same inode, mtime put back
        fh.write(json.dumps([group("shop", "web", "10.0.0.9:4191")]))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert urls(d.targets()) == ["http://10.0.0.1:4191/metrics"]
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert urls(d.targets()) == ["http://10.0.0.9:4191/metrics"]


def test_file_sd_globs_merge_files_and_drop_repeated_urls(tmp_path: Path) -> None:
    write(tmp_path / "a.json", [group("shop", "web", "10.0.0.1:4191")])
    (tmp_path / "b.yml").write_text(
        "- targets: ['10.0.0.2:4191', '10.0.0.1:4191']\n  labels: {namespace: shop, deployment: web}\n"
    )
    d = FileSD([str(tmp_path / "*.json"), str(tmp_path / "*.yml")])
    assert urls(d.targets()) == ["http://10.0.0.1:4191/metrics", "http://10.0.0.2:4191/metrics"]
    write(tmp_path / "c.json", [group("pay", "api", "10.0.0.3:4191")])
    assert urls(d.targets()) == [
        "http://10.0.0.3:4191/metrics",
        "http://10.0.0.1:4191/metrics",
        "http://10.0.0.2:4191/metrics",
    ]
    (tmp_path / "b.yml").unlink()
    assert urls(d.targets()) == ["http://10.0.0.3:4191/metrics", "http://10.0.0.1:4191/metrics"]


def test_file_sd_waiters_wake_on_change(tmp_path: Path) -> None:
    f = tmp_path / "mesh.json"
    write(f, [])
    d = FileSD([str(f)])

    async def run() -> None:
        waiter = asyncio.create_task(until(d, lambda ts: len(ts) == 1))
        await asyncio.sleep(0)  # let it start waiting
        assert not waiter.done()
        write(f, [group("shop", "web", "10.0.0.1:4191")])
        d.targets()
        assert urls(await waiter) == ["http://10.0.0.1:4191/metrics"]

    asyncio.run(run())


# -- Kubernetes: pods → targets -----------------------------------------------------------


def pod(
    name: str,
    ns: str = "shop",
    *,
    ip: str | None = "10.42.0.10",
    phase: str = "Running",
    owner: tuple[str, str] | None = ("deployment", "web"),
    cp_ns: str | None = "linkerd",
    admin: int | None = 4191,
    sidecar: Literal["container", "init", "none"] = "container",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod object as the API returns it (the fields discovery reads, and some it must not)."""
    lab = dict(labels or {})
    if cp_ns is not None:
        lab["linkerd.io/control-plane-ns"] = cp_ns
    if owner is not None:
        lab[f"linkerd.io/proxy-{owner[0]}"] = owner[1]
    ports = [{"name": "linkerd-proxy", "containerPort": 4143, "protocol": "TCP"}]
    if admin is not None:
        ports.append({"name": "linkerd-admin", "containerPort": admin, "protocol": "TCP"})
    proxy = {"name": "linkerd-proxy", "image": "cr.l5d.io/linkerd/proxy:edge", "ports": ports}
    app = {"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}
    spec: dict[str, Any] = {"containers": [app], "initContainers": []}
    if sidecar == "container":
        spec["containers"].append(proxy)
    elif sidecar == "init":
        spec["initContainers"].append({**proxy, "restartPolicy": "Always"})
    status: dict[str, Any] = {"phase": phase}
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "labels": lab},
        "spec": spec,
        "status": status,
    }


def test_pod_target_follows_the_viz_scrape_rules() -> None:
    assert pod_target(pod("web-1"), "linkerd") == Target(
        "http://10.42.0.10:4191/metrics", "shop", "web", "deployment", "web-1"
    )
    assert pod_target(pod("db-0", owner=("statefulset", "db")), "linkerd") == Target(
        "http://10.42.0.10:4191/metrics", "shop", "db", "statefulset", "db-0"
    )
    native = pod("ds-x", owner=("daemonset", "agent"), sidecar="init", ip="fd00::7", admin=4192)
    assert pod_target(native, "linkerd") == Target(
        "http://[fd00::7]:4192/metrics", "shop", "agent", "daemonset", "ds-x"
    )
    assert pod_target(pod("job-x", owner=("job", "nightly")), None) == Target(
        "http://10.42.0.10:4191/metrics", "shop", "nightly", "job", "job-x"
    )
    assert pod_target(pod("bare", owner=None), "linkerd") == Target(
        "http://10.42.0.10:4191/metrics", "shop", "bare", "pod", "bare"
    )
    # not targets
    assert pod_target(pod("p", phase="Pending"), "linkerd") is None
    assert pod_target(pod("p", phase="Succeeded"), "linkerd") is None
    assert pod_target(pod("p", ip=None), "linkerd") is None
    assert pod_target(pod("p", sidecar="none"), "linkerd") is None
    assert pod_target(pod("p", admin=None), "linkerd") is None
    assert pod_target(pod("p", cp_ns="linkerd-other"), "linkerd") is None
    assert pod_target(pod("p", cp_ns=None), "linkerd") is None
    assert pod_target(pod("p", cp_ns="linkerd-other"), None) is not None


# -- Kubernetes: a local API server ---------------------------------------------------------


@dataclass
class Pki:
    ca_pem: bytes
    server_cert: Path
    server_key: Path
    client_cert_pem: bytes
    client_key_pem: bytes
    ca_file: Path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("meshwatch-test-ca", ca_key, None, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("kube-apiserver", srv_key, (ca.subject, ca_key), server=True)
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("system:serviceaccount:linkerd-viz:meshwatch", cli_key, (ca.subject, ca_key))

    def key_pem(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "server.crt").write_bytes(srv.public_bytes(pem))
    (d / "server.key").write_bytes(key_pem(srv_key))
    return Pki(
        ca.public_bytes(pem),
        d / "server.crt",
        d / "server.key",
        cli.public_bytes(pem),
        key_pem(cli_key),
        d / "ca.crt",
    )


@dataclass
class Watch:
    scope: str
    since: int
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


@dataclass
class Request:
    path: str
    query: dict[str, str]
    auth: str | None


class FakeApiServer:
    """The pods API, just as much of it as a reflector uses, with events on demand."""

    def __init__(self, pki: Pki, *, require_client_cert: bool = False) -> None:
        self.pki = pki
        self.require_client_cert = require_client_cert
        self.tokens: set[str] = {"good-token"}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.rv = 1000
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # rv, type, pod
        self.oldest_rv = 0  # watches from before this get 410
        self.gone_as: Literal["status", "event"] = "status"
        self.watches: list[Watch] = []
        self.watch_opened: asyncio.Queue[Watch] = asyncio.Queue()
        self.requests: list[Request] = []
        self.reject_selector = False
        self.port = 0
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._pods)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)

    async def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        if self.require_client_cert:
            ctx.load_verify_locations(cadata=self.pki.ca_pem.decode())
            ctx.verify_mode = ssl.CERT_REQUIRED
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        for w in self.watches:
            w.queue.put_nowait(None)
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- state changes, as the control plane would make them ------------------------------

    def _bump(self, kind: str, obj: dict[str, Any], notify: bool = True) -> None:
        self.rv += 1
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, kind, obj))
        if notify:
            for w in self.watches:
                if w.scope in ("", obj["metadata"]["namespace"]):
                    w.queue.put_nowait({"type": kind, "object": obj})

    def put(self, p: dict[str, Any], notify: bool = True) -> None:
        key = (p["metadata"]["namespace"], p["metadata"]["name"])
        kind = "MODIFIED" if key in self.pods else "ADDED"
        self.pods[key] = p
        self._bump(kind, p, notify)

    def delete(self, ns: str, name: str, notify: bool = True) -> None:
        self._bump("DELETED", self.pods.pop((ns, name)), notify)

    def bookmark(self) -> None:
        self.rv += 1
        for w in self.watches:
            w.queue.put_nowait(
                {
                    "type": "BOOKMARK",
                    "object": {"kind": "Pod", "metadata": {"resourceVersion": str(self.rv)}},
                }
            )

    def compact(self) -> None:
        """Forget history: watches resuming from before now get 410 Gone."""
        self.oldest_rv = self.rv

    def end_watches(self) -> None:
        for w in self.watches:
            w.queue.put_nowait(None)

    def send_gone(self) -> None:
        """An ERROR event with a 410 Status on every open watch (then the stream ends)."""
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": "Expired",
            "message": "too old resource version: 1 (1001)",
            "code": 410,
        }
        for w in self.watches:
            w.queue.put_nowait({"type": "ERROR", "object": status})
            w.queue.put_nowait(None)

    # -- the API --------------------------------------------------------------------------

    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        return web.json_response(body, status=code)

    def _matches(self, p: dict[str, Any], scope: str, selector: str) -> bool:
        if scope and p["metadata"]["namespace"] != scope:
            return False
        labels = p["metadata"].get("labels") or {}
        for term in filter(None, selector.split(",")):
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
        return True

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        self.requests.append(Request(request.path, dict(request.query), auth))
        if not self.require_client_cert and auth not in {f"Bearer {t}" for t in self.tokens}:
            return self._status(401, "Unauthorized", "Unauthorized")
        scope = request.match_info.get("ns", "")
        selector = request.query.get("labelSelector", "")
        if self.reject_selector:
            return self._status(400, "BadRequest", f"unable to parse requirement: {selector!r}")
        if request.query.get("watch") in ("1", "true"):
            return await self._watch(request, scope, selector)
        items = [p for key, p in sorted(self.pods.items()) if self._matches(p, scope, selector)]
        limit = int(request.query.get("limit", "0") or 0)
        start = int(request.query.get("continue", "0") or 0)
        page = items[start : start + limit] if limit else items[start:]
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if limit and start + limit < len(items):
            meta["continue"] = str(start + limit)
        stamped = []
        for p in page:
            p = json.loads(json.dumps(p))
            p["metadata"]["resourceVersion"] = str(self.rv)
            stamped.append(p)
        return web.json_response(
            {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": stamped}
        )

    async def _watch(self, request: web.Request, scope: str, selector: str) -> web.StreamResponse:
        since = int(request.query["resourceVersion"])
        assert request.query.get("allowWatchBookmarks") == "true"
        assert int(request.query["timeoutSeconds"]) > 0
        if since < self.oldest_rv and self.gone_as == "status":
            return self._status(410, "Expired", f"too old resource version: {since} ({self.rv})")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        w = Watch(scope, since)
        if since < self.oldest_rv:  # gone_as == "event": a 200 whose first event is the error
            w.queue.put_nowait(
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "status": "Failure",
                        "reason": "Expired",
                        "code": 410,
                        "message": f"too old resource version: {since}",
                    },
                }
            )
            w.queue.put_nowait(None)
        else:
            for rv, kind, obj in self.events:  # what happened since the requested version
                if rv > since and self._matches(obj, scope, selector):
                    w.queue.put_nowait({"type": kind, "object": obj})
        self.watches.append(w)
        self.watch_opened.put_nowait(w)
        try:
            while (event := await w.queue.get()) is not None:
                if event["type"] not in ("BOOKMARK", "ERROR") and not self._matches(
                    event["object"], scope, selector
                ):
                    continue
                await resp.write(json.dumps(event).encode() + b"\n")
        finally:
            self.watches.remove(w)
        await resp.write_eof()
        return resp

    def watch_requests(self) -> list[Request]:
        return [r for r in self.requests if r.query.get("watch")]

    def list_requests(self) -> list[Request]:
        return [r for r in self.requests if not r.query.get("watch")]


@pytest.fixture
def sa_dir(tmp_path: Path, pki: Pki) -> Path:
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text("good-token\n")
    (d / "ca.crt").write_bytes(pki.ca_pem)
    (d / "namespace").write_text("linkerd-viz")
    return d


@dataclass
class Cluster:
    server: FakeApiServer
    access: ApiAccess
    sa_dir: Path


def cluster_pods() -> list[dict[str, Any]]:
    return [
        pod("web-6b9f-aaaaa", "shop", ip="10.42.0.11"),
        pod("web-6b9f-bbbbb", "shop", ip="10.42.0.12"),
        pod("ledger-0", "payments", ip="10.42.1.5", owner=("statefulset", "ledger")),
        pod("agent-x1", "payments", ip="10.42.1.6", owner=("daemonset", "agent"), sidecar="init"),
        pod("web-6b9f-ccccc", "shop", ip="10.42.0.13", phase="Pending"),  # not yet running
        pod("legacy-1", "shop", ip="10.42.0.14", sidecar="none"),  # not meshed
        pod("other-mesh", "shop", ip="10.42.0.15", cp_ns="linkerd-b"),  # another control plane
        pod("other-team", "shop", ip="10.42.0.16", labels={"team": "b"}),  # selector says no
        pod("elsewhere", "kube-system", ip="10.42.9.1"),  # namespace not watched
    ]


EXPECTED = [
    Target("http://10.42.1.6:4191/metrics", "payments", "agent", "daemonset", "agent-x1"),
    Target("http://10.42.1.5:4191/metrics", "payments", "ledger", "statefulset", "ledger-0"),
    Target("http://10.42.0.11:4191/metrics", "shop", "web", "deployment", "web-6b9f-aaaaa"),
    Target("http://10.42.0.12:4191/metrics", "shop", "web", "deployment", "web-6b9f-bbbbb"),
]
SELECTOR = "linkerd.io/control-plane-ns=linkerd,team=a"


@contextlib.asynccontextmanager
async def fake_cluster(
    pki: Pki, sa_dir: Path, *, require_client_cert: bool = False
) -> AsyncIterator[Cluster]:
    """The API server with :func:`cluster_pods`, and in-cluster credentials for it."""
    server = FakeApiServer(pki, require_client_cert=require_client_cert)
    for p in cluster_pods():
        if p["metadata"]["name"] != "other-team":
            p["metadata"]["labels"]["team"] = "a"
        server.put(p)
    await server.start()
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.port)}
    try:
        yield Cluster(server, in_cluster(sa_dir, env), sa_dir)
    finally:
        await server.close()


def discovery_cfg(**kw: Any) -> KubernetesDiscovery:
    base: dict[str, Any] = {"namespaces": ["shop", "payments"], "label_selector": "team=a"}
    return KubernetesDiscovery(**(base | kw))


@contextlib.asynccontextmanager
async def started(d: KubernetesPods) -> AsyncIterator[KubernetesPods]:
    await d.start()
    try:
        yield d
    finally:
        await d.close()


async def next_watch(server: FakeApiServer) -> Watch:
    async with asyncio.timeout(TIMEOUT):
        return await server.watch_opened.get()


def kinds(reqs: list[Request]) -> list[str]:
    return ["watch" if r.query.get("watch") else "list" for r in reqs]


def test_in_cluster_credentials_list_then_watch_meshed_pods(pki: Pki, sa_dir: Path) -> None:
    async def body() -> None:
        async with fake_cluster(pki, sa_dir) as c:
            assert (c.access.server, c.access.namespace) == (c.server.url, "linkerd-viz")
            d = KubernetesPods(discovery_cfg(), c.access)
            async with started(d):
                assert d.targets() == EXPECTED  # start() returns with the first list in
                watches = [await next_watch(c.server), await next_watch(c.server)]
                assert sorted(w.scope for w in watches) == ["payments", "shop"]
                assert [w.since for w in watches] == [c.server.rv, c.server.rv]
                # every request carried the service-account token and the combined selector
                assert {r.auth for r in c.server.requests} == {"Bearer good-token"}
                assert {r.query["labelSelector"] for r in c.server.requests} == {SELECTOR}
                assert sorted(r.path for r in c.server.list_requests()) == [
                    "/api/v1/namespaces/payments/pods",
                    "/api/v1/namespaces/shop/pods",
                ]

                # a new pod is scheduled, then runs: it becomes a target once Running
                c.server.put(
                    pod("web-6b9f-ddddd", ip="10.42.0.17", phase="Pending", labels={"team": "a"})
                )
                c.server.put(pod("web-6b9f-ddddd", ip="10.42.0.17", labels={"team": "a"}))
                new = Target(
                    "http://10.42.0.17:4191/metrics", "shop", "web", "deployment", "web-6b9f-ddddd"
                )
                assert await until(d, lambda ts: new in ts) == [*EXPECTED, new]

                # one pod is deleted, another one's phase moves on to Succeeded
                c.server.delete("shop", "web-6b9f-aaaaa")
                done = pod(
                    "ledger-0",
                    "payments",
                    ip="10.42.1.5",
                    owner=("statefulset", "ledger"),
                    phase="Succeeded",
                    labels={"team": "a"},
                )
                c.server.put(done)
                assert await until(d, lambda ts: len(ts) == 3) == [EXPECTED[0], EXPECTED[3], new]
                assert (d.lists, d.errors) == ({"shop": 1, "payments": 1}, 0)
                assert kinds(c.server.requests) == ["list", "list", "watch", "watch"]

    asyncio.run(body())


def test_a_rejected_token_is_retried_and_the_rotated_one_is_used(
    pki: Pki, sa_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (sa_dir / "token").write_text("stale-token")
    caplog.set_level(logging.ERROR, "pipeline.collect.discovery.kubernetes")

    async def body() -> None:
        async with fake_cluster(pki, sa_dir) as c:
            d = KubernetesPods(discovery_cfg(namespaces=["shop"]), c.access, backoff=(0.01, 0.02))
            async with started(d):
                assert (d.targets(), d.errors) == ([], 1)
                assert errors_in(caplog)[0].getMessage() == (
                    "kubernetes discovery (shop): list failed: HTTP 401: Unauthorized"
                )
                (c.sa_dir / "token").write_text("good-token\n")  # the kubelet rotated it
                assert await until(d, lambda ts: len(ts) == 2) == EXPECTED[2:]
                auths = [r.auth for r in c.server.list_requests()]
                assert auths[0] == "Bearer stale-token" and auths[-1] == "Bearer good-token"
                assert d.errors == len(auths) - 1  # every rejected list counted

    asyncio.run(body())


@pytest.mark.parametrize("gone_as", ["status", "event"])
def test_an_expired_watch_lists_again_and_catches_up(pki: Pki, sa_dir: Path, gone_as: str) -> None:
    """410 Gone, as the watch request's status or as an ERROR event in an open watch."""

    async def body() -> None:
        async with fake_cluster(pki, sa_dir) as c:
            d = KubernetesPods(discovery_cfg(namespaces=["shop"]), c.access, backoff=(0.01, 0.02))
            async with started(d):
                first = await next_watch(c.server)
                assert first.since == c.server.rv
                # events the watcher never sees, then the history is compacted
                c.server.delete("shop", "web-6b9f-aaaaa", notify=False)
                c.server.put(
                    pod("web-6b9f-eeeee", ip="10.42.0.18", labels={"team": "a"}), notify=False
                )
                c.server.compact()
                if gone_as == "status":
                    c.server.end_watches()  # it resumes from its old version: HTTP 410
                else:
                    c.server.send_gone()  # ERROR event with a 410 Status, mid-stream
                again = await next_watch(c.server)
                assert again.since == c.server.rv
                assert d.targets() == [
                    EXPECTED[3],
                    Target(
                        "http://10.42.0.18:4191/metrics",
                        "shop",
                        "web",
                        "deployment",
                        "web-6b9f-eeeee",
                    ),
                ]
                assert (d.lists, d.errors) == ({"shop": 2}, 0)
                expected = ["list", "watch", "watch", "list", "watch"]
                if gone_as == "event":
                    expected.remove("watch")
                assert kinds(c.server.requests) == expected

    asyncio.run(body())


def test_a_watch_resumes_from_its_last_event_or_bookmark(pki: Pki, sa_dir: Path) -> None:
    async def body() -> None:
        async with fake_cluster(pki, sa_dir) as c:
            d = KubernetesPods(discovery_cfg(namespaces=["shop"]), c.access)
            async with started(d):
                await next_watch(c.server)
                c.server.delete("shop", "web-6b9f-bbbbb")
                c.server.end_watches()
                resumed = await next_watch(c.server)
                assert resumed.since == c.server.rv  # the DELETED event's version
                c.server.bookmark()
                c.server.end_watches()
                assert (await next_watch(c.server)).since == c.server.rv  # the bookmark's
                assert d.targets() == [EXPECTED[2]]
                assert (d.lists, kinds(c.server.requests)) == (
                    {"shop": 1},
                    ["list"] + ["watch"] * 3,
                )

    asyncio.run(body())


def test_all_namespaces_are_listed_page_by_page(
    pki: Pki, sa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(k8s, "PAGE_SIZE", 2)

    async def body() -> None:
        async with fake_cluster(pki, sa_dir) as c:
            d = KubernetesPods(discovery_cfg(namespaces=[]), c.access)
            async with started(d):
                assert d.targets() == [
                    Target(
                        "http://10.42.9.1:4191/metrics",
                        "kube-system",
                        "web",
                        "deployment",
                        "elsewhere",
                    ),
                    *EXPECTED,
                ]
                lists = c.server.list_requests()
                assert {r.path for r in lists} == {"/api/v1/pods"}
                assert [(r.query["limit"], r.query.get("continue")) for r in lists] == [
                    ("2", None),
                    ("2", "2"),
                    ("2", "4"),
                    ("2", "6"),
                ]

    asyncio.run(body())


def test_a_selector_the_api_rejects_stops_the_start(pki: Pki, sa_dir: Path) -> None:
    async def body() -> None:
        async with fake_cluster(pki, sa_dir) as c:
            c.server.reject_selector = True
            d = KubernetesPods(discovery_cfg(label_selector="team=="), c.access)
            with pytest.raises(DiscoveryError) as err:
                await d.start()
            assert str(err.value) == (
                "the Kubernetes API rejected the pod list: HTTP 400: unable to parse requirement: "
                "'linkerd.io/control-plane-ns=linkerd,team=='"
            )

    asyncio.run(body())


def b64(data: bytes | str) -> str:
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def kubeconfig(
    path: Path,
    clusters: dict[str, Any],
    users: dict[str, Any],
    contexts: dict[str, Any],
    current: str | None,
) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": k, "cluster": v} for k, v in clusters.items()],
        "users": [{"name": k, "user": v} for k, v in users.items()],
        "contexts": [{"name": k, "context": v} for k, v in contexts.items()],
    }
    if current:
        doc["current-context"] = current
    import yaml

    path.write_text(yaml.safe_dump(doc))
    return path


def test_kubeconfig_with_a_client_certificate(pki: Pki, sa_dir: Path, tmp_path: Path) -> None:
    """Current context, CA and client certificate inline: the server checks the certificate."""

    async def body() -> None:
        async with fake_cluster(pki, sa_dir, require_client_cert=True) as c:
            path = kubeconfig(
                tmp_path / "config",
                {
                    "test": {"server": c.server.url, "certificate-authority-data": b64(pki.ca_pem)},
                    "prod": {"server": "https://10.255.0.1:6443"},
                },
                {
                    "meshwatch": {
                        "client-certificate-data": b64(pki.client_cert_pem),
                        "client-key-data": b64(pki.client_key_pem),
                    },
                    "admin": {"token": "prod-token"},
                },
                {
                    "prod": {"cluster": "prod", "user": "admin"},
                    "test": {"cluster": "test", "user": "meshwatch", "namespace": "shop"},
                },
                current="test",
            )
            cfg = load_config(
                None,
                {
                    "collector": {
                        "discovery": {
                            "kind": "kubernetes",
                            "namespaces": ["shop", "payments"],
                            "label_selector": "team=a",
                            "kubeconfig": str(path),
                        }
                    }
                },
            )
            d = make_discovery(cfg.collector)
            assert isinstance(d, KubernetesPods)
            async with started(d):
                assert d.targets() == EXPECTED
                assert d.access.namespace == "shop"
                assert {r.auth for r in c.server.requests} == {None}  # no token: the cert it is

            # the same server without a client certificate: refused during the handshake
            no_cert = from_kubeconfig(
                kubeconfig(
                    tmp_path / "nocert",
                    {"t": {"server": c.server.url, "certificate-authority-data": b64(pki.ca_pem)}},
                    {"u": {"token": "good-token"}},
                    {"t": {"cluster": "t", "user": "u"}},
                    "t",
                )
            )
            d2 = KubernetesPods(discovery_cfg(), no_cert, backoff=(60.0, 60.0))
            async with started(d2):
                assert (d2.targets(), d2.errors) == ([], 2)

    asyncio.run(body())


def test_kubeconfig_named_context_with_token_and_ca_files(
    pki: Pki, sa_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "kube").mkdir()
    (tmp_path / "kube" / "ca.pem").write_bytes(pki.ca_pem)
    (tmp_path / "kube" / "token").write_text("good-token")

    async def body() -> None:
        async with fake_cluster(pki, sa_dir) as c:
            path = kubeconfig(
                tmp_path / "kube" / "config",
                {"test": {"server": c.server.url + "/", "certificate-authority": "ca.pem"}},
                {"reader": {"tokenFile": "token"}, "other": {"token": "nope"}},
                {
                    "mine": {"cluster": "test", "user": "reader"},
                    "theirs": {"cluster": "test", "user": "other"},
                },
                current="theirs",
            )
            access = from_kubeconfig(path, "mine")
            assert access.server == c.server.url
            d = KubernetesPods(discovery_cfg(), access)
            async with started(d):
                assert d.targets() == EXPECTED
                assert {r.auth for r in c.server.requests} == {"Bearer good-token"}

    asyncio.run(body())


@pytest.mark.parametrize(
    ("users", "contexts", "current", "context", "message"),
    [
        (
            {"u": {"exec": {"command": "aws"}}},
            {"c": {"cluster": "k", "user": "u"}},
            "c",
            None,
            "{p}: user 'u' logs in through an exec plugin, which meshwatch does not run; use a token, tokenFile or a client certificate",
        ),
        (
            {"u": {"token": "t"}},
            {"c": {"cluster": "k", "user": "u"}},
            None,
            None,
            "{p}: no current-context; set collector.discovery.context",
        ),
        (
            {"u": {"token": "t"}},
            {"c": {"cluster": "k", "user": "u"}},
            "c",
            "prod",
            "{p}: no context named 'prod'",
        ),
        (
            {"u": {"token": "t"}},
            {"c": {"cluster": "missing", "user": "u"}},
            "c",
            None,
            "{p}: no cluster named 'missing'",
        ),
        (
            {"u": {}},
            {"c": {"cluster": "k", "user": "u"}},
            "c",
            None,
            "{p}: user 'u' has no token, tokenFile, client certificate or password",
        ),
        (
            {"u": {"client-certificate-data": "%%%", "client-key-data": "eA=="}},
            {"c": {"cluster": "k", "user": "u"}},
            "c",
            None,
            "{p}: client-certificate-data is not valid base64",
        ),
        (
            {"u": {"client-certificate-data": "eA=="}},
            {"c": {"cluster": "k", "user": "u"}},
            "c",
            None,
            "{p}: a client certificate without a client key",
        ),
    ],
)
def test_kubeconfig_problems_are_explained(
    tmp_path: Path,
    pki: Pki,
    users: dict[str, Any],
    contexts: dict[str, Any],
    current: str | None,
    context: str | None,
    message: str,
) -> None:
    clusters = {
        "k": {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64(pki.ca_pem)}
    }
    path = kubeconfig(tmp_path / "config", clusters, users, contexts, current)
    with pytest.raises(KubeConfigError) as err:
        from_kubeconfig(path, context)
    assert str(err.value) == message.format(p=path)


def test_in_cluster_needs_the_service_environment_and_files(tmp_path: Path, sa_dir: Path) -> None:
    with pytest.raises(KubeConfigError) as err:
        in_cluster(sa_dir, {})
    assert str(err.value) == (
        "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT are unset): "
        "set collector.discovery.kubeconfig"
    )
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster(sa_dir, env).server == "https://[fd00::1]:443"
    (sa_dir / "token").unlink()
    with pytest.raises(KubeConfigError) as err:
        in_cluster(sa_dir, env)
    assert str(err.value) == f"in-cluster credentials: {sa_dir / 'token'} is missing"
