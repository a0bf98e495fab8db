"""Prometheus ``file_sd`` files: JSON or YAML lists of target groups.

The format is Prometheus' own::

    [
      {
        "targets": ["10.42.0.17:4191", "10.42.0.18:4191"],
        "labels": {"namespace": "shop", "deployment": "web", "pod": "web-7d9c-x2x7q"}
      }
    ]

Labels read (the names the linkerd-viz ``linkerd-proxy`` job gives them):

- ``namespace`` (required);
- the workload, from the first of ``deployment``, ``statefulset``,
  ``daemonset``, ``k8s_job``, ``replicationcontroller``, ``replicaset``, or a
  generic ``workload`` with an optional ``kind`` (default ``deployment``);
- ``pod`` (default: the target's ``host:port``);
- ``__scheme__`` (default ``http``) and ``__metrics_path__`` (default
  ``/metrics``).

Other labels are ignored. Each window every file is checked with ``stat``
(modification time, size, inode) and re-read only when that changed; the
last path element may be a glob. A file that cannot be read or does not
validate keeps its last good targets and is logged once per change; a file
that disappears takes its targets with it, as in Prometheus.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from pipeline.collect.discovery import Discovery
from pipeline.collect.targets import Target

log = logging.getLogger(__name__)

WORKLOAD_LABELS = (
    ("deployment", "deployment"),
    ("statefulset", "statefulset"),
    ("daemonset", "daemonset"),
    ("k8s_job", "job"),
    ("replicationcontroller", "replicationcontroller"),
    ("replicaset", "replicaset"),
)
GROUP_KEYS = frozenset({"targets", "labels"})


class FileSDError(ValueError):
    """Why one file_sd file was not used."""


Stamp = tuple[int, int, int]  # mtime_ns, size, inode


@dataclass
class _File:
    stamp: Stamp | None
    targets: list[Target]


def _workload(labels: Mapping[str, str]) -> tuple[str, str] | None:
    for label, kind in WORKLOAD_LABELS:
        name = labels.get(label)
        if name:
            return name, kind
    name = labels.get("workload")
    if name:
        return name, labels.get("kind") or "deployment"
    return None


def _address_ok(address: str) -> bool:
    return bool(address) and not any(c in address for c in "/?#@ \t\n") and address[0] != ":"


def parse_groups(data: Any, where: str = "file") -> list[Target]:
    """Targets from a decoded file_sd document; raises :class:`FileSDError` on any problem."""
    if data is None:
        return []  # an empty YAML file: no groups
    if not isinstance(data, list):
        raise FileSDError(f"{where}: expected a list of target groups, got {type(data).__name__}")
    out: list[Target] = []
    for i, group in enumerate(data):
        at = f"{where}: group {i}"
        if not isinstance(group, dict):
            raise FileSDError(f"{at}: expected a mapping, got {type(group).__name__}")
        unknown = set(group) - GROUP_KEYS
        if unknown:
            raise FileSDError(f"{at}: unknown key(s) {sorted(unknown)}; known: targets, labels")
        addresses = group.get("targets")
        labels = group.get("labels") or {}
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise FileSDError(f"{at}: 'targets' must be a list of host:port strings")
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise FileSDError(f"{at}: 'labels' must map label names to string values")
        if not addresses:
            continue
        namespace = labels.get("namespace")
        if not namespace:
            raise FileSDError(f"{at}: no 'namespace' label")
        workload = _workload(labels)
        if workload is None:
            names = ", ".join(label for label, _ in WORKLOAD_LABELS)
            raise FileSDError(f"{at}: no workload label ({names}, or workload)")
        scheme = labels.get("__scheme__", "http")
        if scheme not in ("http", "https"):
            raise FileSDError(f"{at}: __scheme__ must be http or https, not {scheme!r}")
        path = labels.get("__metrics_path__", "/metrics")
        if not path.startswith("/"):
            raise FileSDError(f"{at}: __metrics_path__ must start with '/', not {path!r}")
        pod = labels.get("pod")
        if pod and len(addresses) > 1:
            raise FileSDError(f"{at}: a 'pod' label on a group of {len(addresses)} targets")
        for address in addresses:
            if not _address_ok(address):
                raise FileSDError(f"{at}: {address!r} is not host:port")
            out.append(
                Target(
                    f"{scheme}://{address}{path}",
                    namespace,
                    workload[0],
                    workload[1],
                    pod or address,
                )
            )
    return out


def load_file(path: str) -> list[Target]:
    """Read and validate one file_sd file (format by extension)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise FileSDError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw) if path.endswith(".json") else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise FileSDError(f"{path}: invalid {kind}: {exc}") from exc
    return parse_groups(data, path)


class FileSD(Discovery):
    kind = "file_sd"

    def __init__(self, patterns: Sequence[str]) -> None:
        super().__init__()
        self.patterns = list(patterns)
        self._files: dict[str, _File] = {}
        self._missing: set[str] = set()
        self.refresh()

    def targets(self) -> list[Target]:
        self.refresh()
        return self.current

    def _paths(self) -> list[str]:
        paths: list[str] = []
        for pattern in self.patterns:
            if glob.has_magic(pattern):
                paths.extend(sorted(glob.glob(pattern)))
            else:
                paths.append(pattern)
        return list(dict.fromkeys(paths))

    def refresh(self) -> bool:
        """Re-read changed files; True when the target list changed."""
        before = self.current
        seen: set[str] = set()
        for path in self._paths():
            seen.add(path)
            try:
                st = os.stat(path)
            except OSError:
                if path in self._files:
                    log.warning("file_sd: %s is gone; its targets are dropped", path)
                    del self._files[path]
                elif path not in self._missing:
                    log.warning("file_sd: %s does not exist (yet): no targets from it", path)
                self._missing.add(path)
                continue
            self._missing.discard(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            known = self._files.get(path)
            if known is not None and known.stamp == stamp:
                continue
            try:
                targets = load_file(path)
            except FileSDError as exc:
                self.errors += 1
                kept = len(known.targets) if known else 0
                log.error("file_sd: %s (keeping the last good %d target(s))", exc, kept)
                self._files[path] = _File(stamp, known.targets if known else [])
                continue
            self._files[path] = _File(stamp, targets)
            log.info("file_sd: %s: %d target(s)", path, len(targets))
        for path in set(self._files) - seen:  # a glob no longer matches it
            del self._files[path]
        self._publish(t for f in self._files.values() for t in f.targets)
        return self.current is not before
