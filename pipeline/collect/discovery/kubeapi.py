"""How to reach the Kubernetes API: in-cluster service account or a kubeconfig file.

Only what a long-running reader of pods needs, with plain ``ssl``/``httpx``:

- **in-cluster**: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``,
  the service-account token and CA under
  ``/var/run/secrets/kubernetes.io/serviceaccount``. The token is read again
  for every request, because bound service-account tokens are rotated on
  disk (about hourly) and an old one stops working.
- **kubeconfig**: the current (or a named) context's cluster ``server``,
  ``certificate-authority-data`` / ``certificate-authority`` /
  ``insecure-skip-tls-verify``, and the user's ``token`` / ``tokenFile``,
  ``client-certificate(-data)`` + ``client-key(-data)``, or
  ``username``/``password``. Relative paths are relative to the kubeconfig's
  folder. ``exec`` and ``auth-provider`` plugins (cloud logins) are not run:
  give the collector a service-account token instead.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.collect.discovery import DiscoveryError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(DiscoveryError):
    """No usable way to reach the API server."""


@dataclass(frozen=True)
class ApiAccess:
    """Where the API server is and how to authenticate to it."""

    server: str
    ssl_context: ssl.SSLContext | None  # None: plain http (local test servers, kubectl proxy)
    token: Callable[[], str | None]
    basic_auth: tuple[str, str] | None = None
    namespace: str | None = None  # the context's or the service account's own namespace
    source: str = ""

    def headers(self) -> dict[str, str]:
        """Fresh auth headers (re-reads a token file each time)."""
        token = self.token()
        if token:
            return {"Authorization": f"Bearer {token}"}
        if self.basic_auth is not None:
            raw = f"{self.basic_auth[0]}:{self.basic_auth[1]}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return self.ssl_context if self.ssl_context is not None else True


def _read_token(path: Path) -> Callable[[], str | None]:
    def read() -> str | None:
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            raise KubeConfigError(f"cannot read token file {path}: {exc.strerror}") from exc

    return read


def _static(token: str | None) -> Callable[[], str | None]:
    return lambda: token


def in_cluster(
    sa_dir: Path = SERVICE_ACCOUNT_DIR, environ: Mapping[str, str] | None = None
) -> ApiAccess:
    """Credentials of the pod this process runs in."""
    env = os.environ if environ is None else environ
    host = env.get("KUBERNETES_SERVICE_HOST")
    port = env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError(
            "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT are unset): "
            "set collector.discovery.kubeconfig"
        )
    token_file = sa_dir / "token"
    ca_file = sa_dir / "ca.crt"
    for f in (token_file, ca_file):
        if not f.is_file():
            raise KubeConfigError(f"in-cluster credentials: {f} is missing")
    if ":" in host:
        host = f"[{host}]"
    ns_file = sa_dir / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.is_file() else None
    ctx = ssl.create_default_context(cafile=str(ca_file))
    return ApiAccess(
        f"https://{host}:{port}",
        ctx,
        _read_token(token_file),
        namespace=namespace,
        source=f"in-cluster service account ({sa_dir})",
    )


def _named(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(what)
            if not isinstance(body, dict):
                raise KubeConfigError(f"{path}: {what} {name!r} has no {what} section")
            return body
    raise KubeConfigError(f"{path}: no {what} named {name!r}")


def _b64(value: str, what: str, path: Path) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KubeConfigError(f"{path}: {what} is not valid base64") from exc


def _load_client_cert(ctx: ssl.SSLContext, user: Mapping[str, Any], base: Path, path: Path) -> bool:
    cert_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
    cert_file, key_file = user.get("client-certificate"), user.get("client-key")
    if not (cert_data or cert_file):
        if key_data or key_file:
            raise KubeConfigError(f"{path}: a client key without a client certificate")
        return False
    if not (key_data or key_file):
        raise KubeConfigError(f"{path}: a client certificate without a client key")
    # ssl loads certificates from files only: inline data goes through a
    # private temporary folder that is removed as soon as it is loaded.
    with tempfile.TemporaryDirectory(prefix="meshwatch-kube-") as tmp:
        if cert_data:
            cert_path = Path(tmp) / "client.crt"
            cert_path.write_bytes(_b64(cert_data, "client-certificate-data", path))
        else:
            cert_path = base / str(cert_file)
        if key_data:
            key_path = Path(tmp) / "client.key"
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(_b64(key_data, "client-key-data", path))
        else:
            key_path = base / str(key_file)
        try:
            ctx.load_cert_chain(str(cert_path), str(key_path))
        except (OSError, ssl.SSLError) as exc:
            raise KubeConfigError(f"{path}: cannot load the client certificate: {exc}") from exc
    return True


def from_kubeconfig(path: Path, context: str | None = None) -> ApiAccess:
    """Credentials of ``context`` (default: ``current-context``) in a kubeconfig file."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"kubeconfig {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise KubeConfigError(f"kubeconfig {path} is not a mapping")
    name = context or doc.get("current-context")
    if not name:
        raise KubeConfigError(f"{path}: no current-context; set collector.discovery.context")
    ctx_body = _named(doc.get("contexts"), name, "context", path)
    cluster = _named(doc.get("clusters"), ctx_body.get("cluster", ""), "cluster", path)
    user_name = ctx_body.get("user")
    user = _named(doc.get("users"), user_name, "user", path) if user_name else {}
    base = path.resolve().parent

    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise KubeConfigError(f"{path}: cluster of context {name!r} has no http(s) server")
    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise KubeConfigError(
                f"{path}: user {user_name!r} logs in through an {plugin} plugin, which "
                "meshwatch does not run; use a token, tokenFile or a client certificate"
            )

    ssl_context: ssl.SSLContext | None = None
    if server.startswith("https://"):
        ca_data, ca_file = (
            cluster.get("certificate-authority-data"),
            cluster.get("certificate-authority"),
        )
        try:
            if ca_data:
                pem = _b64(ca_data, "certificate-authority-data", path).decode()
                ssl_context = ssl.create_default_context(cadata=pem)
            elif ca_file:
                ssl_context = ssl.create_default_context(cafile=str(base / ca_file))
            else:
                ssl_context = ssl.create_default_context()
        except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
            raise KubeConfigError(f"{path}: cannot load the cluster CA: {exc}") from exc
        if cluster.get("insecure-skip-tls-verify"):
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        has_cert = _load_client_cert(ssl_context, user, base, path)
    else:
        has_cert = False

    token_file = user.get("tokenFile")
    if user.get("token"):
        token: Callable[[], str | None] = _static(str(user["token"]))
    elif token_file:
        token = _read_token(base / token_file)
    else:
        token = _static(None)
    basic = None
    if user.get("username") and user.get("password"):
        basic = (str(user["username"]), str(user["password"]))
    if not (has_cert or user.get("token") or token_file or basic):
        raise KubeConfigError(
            f"{path}: user {user_name!r} has no token, tokenFile, client certificate or password"
        )
    return ApiAccess(
        server,
        ssl_context,
        token,
        basic_auth=basic,
        namespace=ctx_body.get("namespace"),
        source=f"kubeconfig {path}, context {name}",
    )
