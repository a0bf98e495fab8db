"""The model registry: versioned artifacts, a manifest each, a production pointer.

Layout under the registry root (any :class:`Storage`; files by default)::

    versions/v0007/model.skops      the estimators (skops format, never pickle)
    versions/v0007/manifest.json    features, training window, data volume,
                                    metrics, library versions, SHA-256 per file
    production.json                 {"version": "v0007", "history": [...]}

Why these rules:

- **skops, with an allow-list.** Loading a pickle runs whatever code the file
  names. skops refuses any type not explicitly trusted; we trust only the
  estimator classes :mod:`models.learned` builds and what they are made of.
- **A checksum per file, checked on every load.** A truncated upload or a
  hand-edited artifact is refused with the file and the mismatch named, and
  the caller keeps the model it has.
- **Library versions in the manifest.** A model written by another
  scikit-learn major.minor may load and then score differently; it is
  refused as incompatible instead.
- **Promotion is a pointer move**, so rollback is the same move backwards
  (``history`` keeps the earlier production versions, newest last).

The shipped default (``models/default/``, built by ``meshwatch train
--default``) is loaded the same way when the registry has no production
version yet.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import sklearn
import skops.io as sio

from models.features import FEATURE_NAMES, FEATURES_VERSION
from models.learned import LearnedModel, ModelError

FORMAT = 1
MODEL_FILE = "model.skops"
MANIFEST = "manifest.json"
POINTER = "production.json"
DEFAULT_DIR = Path(__file__).resolve().parent / "default"
DEFAULT_VERSION = "default"
_VERSION_RE = re.compile(r"^v(\d{4,})$")

#: Every type a model file may contain; skops builds nothing else, and any
#: other type named in the file (even one skops itself would trust) is refused.
TRUSTED_PREFIXES = (
    "sklearn.ensemble._iforest.IsolationForest",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.",
    "sklearn._loss.",
    "sklearn.preprocessing._label.LabelEncoder",
)
TRUSTED_TYPES = frozenset(
    [f"builtins.{t}" for t in ("dict", "list", "str", "tuple", "int", "float", "bool",
                               "NoneType", "bytes", "set", "frozenset", "slice")]
    + [f"numpy.{t}" for t in ("ndarray", "dtype", "bool_", "int8", "int16", "int32", "int64",
                              "uint8", "uint16", "uint32", "uint64", "float32", "float64",
                              "intp")]
    + [
        "numpy.random._generator.Generator",
        "numpy.random._pcg64.PCG64",
        "numpy.random.bit_generator.SeedSequence",
        "numpy.random._mt19937.MT19937",
        "numpy.random.mtrand.RandomState",
    ]
)  # fmt: skip


def allowed(type_name: str) -> bool:
    return type_name in TRUSTED_TYPES or type_name.startswith(TRUSTED_PREFIXES)


def types_in(data: bytes) -> set[str]:
    """Every ``module.Class`` a skops file names (its schema.json, walked)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        schema = json.loads(z.read("schema.json"))
    found: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node and "__module__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


class ArtifactError(Exception):
    """An artifact that must not be used: missing, tampered, truncated or incompatible."""


class Storage(Protocol):
    """The little the registry needs from where artifacts live (files, object store)."""

    def read(self, name: str) -> bytes: ...

    def write(self, name: str, data: bytes) -> None: ...

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str) -> list[str]: ...

    def describe(self) -> str: ...


class FileStorage:
    """Files under a directory; every write is atomic (temporary file, then rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in Path(name).parts:
            raise ValueError(f"bad artifact name {name!r}")
        return self.root / name

    def read(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactError(f"{self._path(name)}: missing") from exc

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if not p.name.startswith("."))

    def describe(self) -> str:
        return str(self.root)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def meshwatch_version() -> str:
    try:
        return metadata.version("meshwatch")
    except metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


# -- serialising a model ----------------------------------------------------------------


def dump_model(model: LearnedModel) -> bytes:
    payload: dict[str, Any] = {
        "estimators": dict(model.estimators),
        "reference": {k: np.asarray(v, dtype=np.float64) for k, v in model.reference.items()},
    }
    if model.offsets is not None:
        # per-route parameters: one string (skops writes a list element by element)
        # and one float array, so no new type enters the allow-list
        payload["route_keys"] = "\n".join(model.route_keys)
        payload["offsets"] = np.asarray(model.offsets, dtype=np.float64)
    return bytes(sio.dumps(payload, compression=zipfile.ZIP_DEFLATED))


def load_model(data: bytes, manifest: Mapping[str, Any], where: str) -> LearnedModel:
    """Rebuild a model from skops bytes, trusting only the allow-listed types."""
    try:
        named = types_in(data)
    except Exception as exc:
        raise ArtifactError(f"{where}: not a readable skops file ({exc})") from exc
    refused = sorted(t for t in named if not allowed(t))
    if refused:
        raise ArtifactError(f"{where}: contains types that are not allowed: {refused}")
    try:
        # trusted: exactly the allow-listed types the file names (skops still
        # refuses anything else it meets while loading)
        payload = sio.loads(data, trusted=sorted(named))
    except Exception as exc:
        raise ArtifactError(f"{where}: cannot be loaded ({exc})") from exc
    if not isinstance(payload, dict) or not {"estimators", "reference"} <= set(payload):
        raise ArtifactError(f"{where}: not a meshwatch model (no estimators/reference)")
    model = LearnedModel(
        feature_names=tuple(manifest.get("features", ())),
        estimators=dict(payload["estimators"]),
        reference={k: np.asarray(v, dtype=np.float64) for k, v in payload["reference"].items()},
        thresholds={k: float(v) for k, v in manifest.get("thresholds", {}).items()},
    )
    if "offsets" in payload:  # artifacts before per-route parameters have none
        keys = str(payload.get("route_keys", ""))
        model.route_keys = tuple(keys.split("\n")) if keys else ()
        model.offsets = np.asarray(payload["offsets"], dtype=np.float64)
        model.route_stats = dict(manifest.get("per_route", {}))
    try:
        model.check()
    except ModelError as exc:
        raise ArtifactError(f"{where}: incompatible: {exc}") from exc
    return model


def build_manifest(
    version: str,
    model: LearnedModel,
    files: Mapping[str, bytes],
    *,
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    false_alert_budget: float,
    note: str = "",
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": version,
        "created_at": time.time(),
        "note": note,
        "features": list(model.feature_names),
        "features_version": FEATURES_VERSION,
        "kinds": list(model.kinds),
        "estimators": {k: type(e).__name__ for k, e in model.estimators.items()},
        "thresholds": dict(model.thresholds),
        "per_route": dict(model.route_stats),
        "false_alert_budget": false_alert_budget,
        "training": dict(training),
        "metrics": dict(metrics),
        "sklearn_version": sklearn.__version__,
        "skops_version": metadata.version("skops"),
        "meshwatch_version": meshwatch_version(),
        "files": {
            name: {"sha256": sha256(data), "bytes": len(data)} for name, data in files.items()
        },
    }


def verify(manifest: Mapping[str, Any], files: Mapping[str, bytes], where: str) -> None:
    """Refuse an artifact whose files or versions do not match its manifest."""
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{where}: incompatible: manifest format {manifest.get('format')!r}")
    theirs = str(manifest.get("sklearn_version", "?"))
    if _minor(theirs) != _minor(sklearn.__version__):
        raise ArtifactError(
            f"{where}: incompatible: built with scikit-learn {theirs}, "
            f"this process has {sklearn.__version__}"
        )
    if manifest.get("features_version") != FEATURES_VERSION or tuple(
        manifest.get("features", ())
    ) != tuple(FEATURE_NAMES):
        raise ArtifactError(f"{where}: incompatible: built for other features (retrain)")
    listed = manifest.get("files") or {}
    if MODEL_FILE not in listed:
        raise ArtifactError(f"{where}: manifest lists no {MODEL_FILE}")
    for name, meta in listed.items():
        data = files.get(name)
        if data is None:
            raise ArtifactError(f"{where}/{name}: missing")
        if len(data) != meta.get("bytes"):
            raise ArtifactError(
                f"{where}/{name}: truncated or padded: {len(data)} bytes, "
                f"manifest says {meta.get('bytes')}"
            )
        if sha256(data) != meta.get("sha256"):
            raise ArtifactError(f"{where}/{name}: checksum mismatch (tampered or corrupt)")


@dataclass(frozen=True)
class Loaded:
    version: str
    model: LearnedModel
    manifest: dict[str, Any]


def _parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ArtifactError(f"{where}/{MANIFEST}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}/{MANIFEST}: not a JSON object")
    return data


def load_dir(path: Path, version: str = DEFAULT_VERSION) -> Loaded:
    """Load and verify an artifact directory (the shipped default)."""
    where = str(path)
    store = FileStorage(path)
    manifest = _parse_manifest(store.read(MANIFEST), where)
    files = {name: store.read(name) for name in manifest.get("files", {})}
    verify(manifest, files, where)
    return Loaded(version, load_model(files[MODEL_FILE], manifest, where), manifest)


def write_dir(path: Path, model: LearnedModel, **manifest_args: Any) -> dict[str, Any]:
    """Write an artifact directory (the shipped default) with its manifest."""
    files = {MODEL_FILE: dump_model(model)}
    manifest = build_manifest(DEFAULT_VERSION, model, files, **manifest_args)
    store = FileStorage(path)
    for name, data in files.items():
        store.write(name, data)
    store.write(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


class Registry:
    """Versions, manifests and the production pointer, over one :class:`Storage`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @classmethod
    def at(cls, root: str | Path) -> Registry:
        return cls(FileStorage(root))

    # -- reading --------------------------------------------------------------

    def versions(self) -> list[str]:
        return sorted(v for v in self.storage.list("versions") if _VERSION_RE.match(v))

    def manifest(self, version: str) -> dict[str, Any]:
        where = f"{self.storage.describe()}/versions/{version}"
        if version not in self.versions():
            raise ArtifactError(f"{where}: no such version")
        return _parse_manifest(self.storage.read(f"versions/{version}/{MANIFEST}"), where)

    def pointer(self) -> dict[str, Any]:
        if not self.storage.exists(POINTER):
            return {"version": None, "history": []}
        data = json.loads(self.storage.read(POINTER))
        return data if isinstance(data, dict) else {"version": None, "history": []}

    def production(self) -> str | None:
        v = self.pointer().get("version")
        return str(v) if v else None

    def load(self, version: str) -> Loaded:
        """Load and verify one version; raises :class:`ArtifactError` if it is unusable."""
        where = f"{self.storage.describe()}/versions/{version}"
        manifest = self.manifest(version)
        files = {
            name: self.storage.read(f"versions/{version}/{name}")
            for name in manifest.get("files", {})
        }
        verify(manifest, files, where)
        return Loaded(version, load_model(files[MODEL_FILE], manifest, where), manifest)

    def load_production(self, default_dir: Path | None = DEFAULT_DIR) -> Loaded | None:
        """The production version, or the shipped default when none is promoted."""
        version = self.production()
        if version is not None:
            return self.load(version)
        if default_dir is not None and (default_dir / MANIFEST).exists():
            return load_dir(default_dir)
        return None

    # -- writing --------------------------------------------------------------

    def next_version(self) -> str:
        nums = [int(m.group(1)) for v in self.versions() if (m := _VERSION_RE.match(v))]
        return f"v{(max(nums) if nums else 0) + 1:04d}"

    def publish(self, model: LearnedModel, **manifest_args: Any) -> str:
        """Store a new version (not yet in production); returns its name."""
        version = self.next_version()
        files = {MODEL_FILE: dump_model(model)}
        manifest = build_manifest(version, model, files, **manifest_args)
        for name, data in files.items():
            self.storage.write(f"versions/{version}/{name}", data)
        # the manifest last: a version without one is not listed as loadable
        self.storage.write(
            f"versions/{version}/{MANIFEST}",
            json.dumps(manifest, indent=1, sort_keys=True).encode(),
        )
        return version

    def promote(self, version: str) -> dict[str, Any]:
        """Point production at ``version`` after checking it loads."""
        self.load(version)
        pointer = self.pointer()
        history = [v for v in pointer.get("history", []) if v != version]
        current = pointer.get("version")
        if current and current != version:
            history.append(current)
        new = {"version": version, "history": history[-50:], "promoted_at": time.time()}
        self.storage.write(POINTER, json.dumps(new, indent=1).encode())
        return new

    def rollback(self) -> dict[str, Any]:
        """Back to the previous production version (which must still load)."""
        pointer = self.pointer()
        history = list(pointer.get("history", []))
        if not history:
            raise ArtifactError("nothing to roll back to: no earlier production version")
        previous = history.pop()
        self.load(previous)
        new = {"version": previous, "history": history, "promoted_at": time.time()}
        self.storage.write(POINTER, json.dumps(new, indent=1).encode())
        return new


def manifest_text(manifest: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    json.dump(manifest, buf, indent=1, sort_keys=True)
    return buf.getvalue()


__all__ = [
    "DEFAULT_DIR",
    "DEFAULT_VERSION",
    "ArtifactError",
    "FileStorage",
    "Loaded",
    "Registry",
    "Storage",
    "load_dir",
    "verify",
    "write_dir",
]
