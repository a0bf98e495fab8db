"""Meshed pods from the Kubernetes API: list, then watch, re-list when the watch expires.

A pod is a target when, as for linkerd-viz's ``linkerd-proxy`` scrape job,

- it has a container (or, in native-sidecar mode, an init container) named
  ``linkerd-proxy`` with a port named ``linkerd-admin``;
- its ``linkerd.io/control-plane-ns`` label is the configured control-plane
  namespace (checked by the API server through the label selector, and again
  here);
- its phase is ``Running`` and it has a pod IP.

Its workload comes from the ``linkerd.io/proxy-<kind>`` label the proxy
injector sets (``deployment``, ``statefulset``, ``daemonset``, ``job``,
``replicationcontroller``, ``replicaset``); a bare pod is its own workload
(kind ``pod``). The target URL is ``http://<pod IP>:<admin port>/metrics``.

Per namespace (or once for the whole cluster) a task runs the standard
reflector loop: ``GET /api/v1/[namespaces/<ns>/]pods`` page by page, then
``?watch=1&resourceVersion=<rv>&allowWatchBookmarks=true`` and apply each
``ADDED``/``MODIFIED``/``DELETED`` event; a watch that ends normally is
resumed from the last resource version; ``410 Gone`` (as an HTTP status or
as an ``ERROR`` event) means that version is compacted away, so the scope is
listed afresh. Other failures back off exponentially and resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx

from pipeline.collect.discovery import Discovery, DiscoveryError
from pipeline.collect.discovery.kubeapi import ApiAccess, from_kubeconfig, in_cluster
from pipeline.collect.targets import Target
from pipeline.config import KubernetesDiscovery

log = logging.getLogger(__name__)

PROXY_CONTAINER = "linkerd-proxy"
ADMIN_PORT_NAME = "linkerd-admin"
CONTROL_PLANE_NS_LABEL = "linkerd.io/control-plane-ns"
#: ``linkerd.io/proxy-<label kind>`` → workload kind, most specific owner first.
WORKLOAD_KINDS = (
    ("deployment", "deployment"),
    ("statefulset", "statefulset"),
    ("daemonset", "daemonset"),
    ("job", "job"),
    ("replicationcontroller", "replicationcontroller"),
    ("replicaset", "replicaset"),
)
PAGE_SIZE = 500
ALL_NAMESPACES = ""

PodKey = tuple[str, str]  # namespace, name


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


class _GoneError(Exception):
    """The resource version we hold is too old: list again."""


def admin_port(pod: Mapping[str, Any]) -> int | None:
    spec = pod.get("spec") or {}
    for group in ("containers", "initContainers"):
        for c in spec.get(group) or []:
            if c.get("name") != PROXY_CONTAINER:
                continue
            for p in c.get("ports") or []:
                if p.get("name") == ADMIN_PORT_NAME and isinstance(p.get("containerPort"), int):
                    return int(p["containerPort"])
    return None


def workload_of(labels: Mapping[str, str], pod_name: str) -> tuple[str, str]:
    for label_kind, kind in WORKLOAD_KINDS:
        name = labels.get(f"linkerd.io/proxy-{label_kind}")
        if name:
            return name, kind
    return pod_name, "pod"


def pod_target(pod: Mapping[str, Any], control_plane_ns: str | None) -> Target | None:
    """The scrape target of a pod, or None when it is not a running meshed pod."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    labels: dict[str, str] = meta.get("labels") or {}
    if control_plane_ns is not None and labels.get(CONTROL_PLANE_NS_LABEL) != control_plane_ns:
        return None
    if status.get("phase") != "Running":
        return None
    ip = status.get("podIP")
    port = admin_port(pod)
    name = meta.get("name")
    namespace = meta.get("namespace")
    if not ip or port is None or not name or not namespace:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    workload, kind = workload_of(labels, name)
    return Target(f"http://{host}:{port}/metrics", namespace, workload, kind, name)


def _key(pod: Mapping[str, Any]) -> PodKey:
    meta = pod.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _status_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(doc, dict) and doc.get("message"):
        return str(doc["message"])
    return body[:200].decode(errors="replace")


class KubernetesPods(Discovery):
    kind = "kubernetes"

    def __init__(
        self,
        cfg: KubernetesDiscovery,
        access: ApiAccess | None = None,
        *,
        backoff: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self._access = access
        self.backoff = backoff
        selectors = []
        if cfg.control_plane_namespace is not None:
            selectors.append(f"{CONTROL_PLANE_NS_LABEL}={cfg.control_plane_namespace}")
        if cfg.label_selector:
            selectors.append(cfg.label_selector.strip())
        self.label_selector = ",".join(selectors)
        self.scopes = list(cfg.namespaces) or [ALL_NAMESPACES]
        self._pods: dict[str, dict[PodKey, Target]] = {s: {} for s in self.scopes}
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Lists done so far (first and re-lists), per scope; for tests and logs.
        self.lists: dict[str, int] = dict.fromkeys(self.scopes, 0)
        self._events: dict[str, int] = dict.fromkeys(self.scopes, 0)

    @property
    def access(self) -> ApiAccess:
        if self._access is None:
            if self.cfg.kubeconfig is not None:
                self._access = from_kubeconfig(self.cfg.kubeconfig, self.cfg.context)
            else:
                self._access = in_cluster()
        return self._access

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """List every scope once, then keep watching in the background.

        Raises :class:`DiscoveryError` when the credentials are unusable or
        the API rejects the request itself (a malformed label selector);
        other failures (API unreachable, RBAC not granted yet) are logged and
        retried in the background, and the collector starts with what it has.
        """
        if self._tasks:
            return
        access = self.access
        rt = self.cfg.request_timeout_seconds
        self._client = httpx.AsyncClient(
            verify=access.verify, timeout=httpx.Timeout(rt), trust_env=False
        )
        log.info(
            "kubernetes discovery: %s, namespaces %s, selector %r",
            access.source or access.server,
            self.cfg.namespaces or "all",
            self.label_selector,
        )
        first = await asyncio.gather(
            *(self._list(scope) for scope in self.scopes), return_exceptions=True
        )
        for scope, outcome in zip(self.scopes, first, strict=True):
            if isinstance(outcome, ApiError) and outcome.status == 400:
                await self.close()
                raise DiscoveryError(f"the Kubernetes API rejected the pod list: {outcome}")
            if isinstance(outcome, DiscoveryError):
                await self.close()
                raise outcome
            rv = outcome if isinstance(outcome, str) else None
            if isinstance(outcome, BaseException):
                self._failed(scope, "list", outcome)
            self._tasks.append(
                asyncio.create_task(self._reflect(scope, rv), name=f"k8s-pods:{scope or '*'}")
            )

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the reflector --------------------------------------------------------------------

    def _path(self, scope: str) -> str:
        server = self.access.server
        if scope == ALL_NAMESPACES:
            return f"{server}/api/v1/pods"
        return f"{server}/api/v1/namespaces/{scope}/pods"

    def _params(self, **extra: str) -> dict[str, str]:
        params = dict(extra)
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params

    def _failed(self, scope: str, what: str, exc: BaseException) -> None:
        self.errors += 1
        log.error("kubernetes discovery (%s): %s failed: %s", scope or "all namespaces", what, exc)

    async def _reflect(self, scope: str, rv: str | None) -> None:
        """List and watch ``scope`` until cancelled.

        Failures back off exponentially. So does a loop that makes no
        progress without failing (a watch that ends at once with nothing in
        it, or a fresh list whose version is already gone): the first time
        it is retried at once, from the second time in a row with backoff.
        """
        loop = asyncio.get_running_loop()
        delay = self.backoff[0]
        streak = 0
        while True:
            seen = self._events[scope]
            try:
                if rv is None:
                    rv = await self._list(scope)
                opened = loop.time()
                rv = await self._watch(scope, rv)
                if self._events[scope] != seen or loop.time() - opened >= 1.0:
                    streak, delay = 0, self.backoff[0]
                    continue
                streak += 1  # the watch ended at once with nothing in it
            except _GoneError:
                log.info("kubernetes discovery (%s): watch expired, listing again", scope or "*")
                rv = None
                streak = 0 if self._events[scope] != seen else streak + 1
            except DiscoveryError as exc:  # e.g. the token file vanished
                self._failed(scope, "authentication", exc)
                streak += 2
            except (ApiError, httpx.HTTPError, ValueError) as exc:
                self._failed(scope, "list" if rv is None else "watch", exc)
                streak += 2
            if streak >= 2:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])

    async def _get(self, scope: str, params: dict[str, str]) -> Any:
        assert self._client is not None
        resp = await self._client.get(
            self._path(scope), params=params, headers=self.access.headers()
        )
        if resp.status_code == 410:
            raise _GoneError()
        if resp.status_code != 200:
            raise ApiError(resp.status_code, _status_message(resp.content))
        return resp.json()

    async def _list(self, scope: str) -> str:
        """Replace the scope's pods with a fresh list; returns its resource version."""
        pods: dict[PodKey, Target] = {}
        cont: str | None = None
        rv = ""
        while True:
            params = self._params(limit=str(PAGE_SIZE))
            if cont:
                params["continue"] = cont
            page = await self._get(scope, params)
            for item in page.get("items") or []:
                t = pod_target(item, self.cfg.control_plane_namespace)
                if t is not None:
                    pods[_key(item)] = t
            meta = page.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or rv)
            cont = meta.get("continue")
            if not cont:
                break
        self.lists[scope] += 1
        self._pods[scope] = pods
        self._republish()
        return rv

    async def _watch(self, scope: str, rv: str) -> str:
        """Apply watch events until the server ends the stream; returns the last version."""
        assert self._client is not None
        rt = self.cfg.request_timeout_seconds
        params = self._params(
            watch="1",
            resourceVersion=rv,
            allowWatchBookmarks="true",
            timeoutSeconds=str(self.cfg.watch_timeout_seconds),
        )
        timeout = httpx.Timeout(rt, read=self.cfg.watch_timeout_seconds + rt)
        async with self._client.stream(
            "GET", self._path(scope), params=params, headers=self.access.headers(), timeout=timeout
        ) as resp:
            if resp.status_code == 410:
                raise _GoneError()
            if resp.status_code != 200:
                raise ApiError(resp.status_code, _status_message(await resp.aread()))
            async for line in resp.aiter_lines():
                if line.strip():
                    rv = self._apply(scope, json.loads(line), rv)
        return rv

    def _apply(self, scope: str, event: Mapping[str, Any], rv: str) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _GoneError()
            raise ApiError(int(code or 500), str(obj.get("message") or obj))
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        self._events[scope] += 1
        pods = self._pods[scope]
        if kind in ("ADDED", "MODIFIED"):
            t = pod_target(obj, self.cfg.control_plane_namespace)
            key = _key(obj)
            if t is None:
                if pods.pop(key, None) is not None:
                    self._republish()
            elif pods.get(key) != t:
                pods[key] = t
                self._republish()
        elif kind == "DELETED":
            if pods.pop(_key(obj), None) is not None:
                self._republish()
        elif kind != "BOOKMARK":
            log.warning("kubernetes discovery: unknown watch event type %r", kind)
        return new_rv

    def _republish(self) -> None:
        self._publish(t for pods in self._pods.values() for t in pods.values())
