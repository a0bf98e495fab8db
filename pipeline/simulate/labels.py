"""Label strings of one simulated proxy, per Linkerd era.

Built once per series when the mesh layout is (re)built and then frozen into
render templates, so the per-scrape path never touches label logic. Values
are written raw, exactly like the proxy's hand-rolled formatter (which does
not escape), hence ``error="tls detection timeout"`` and route names with
spaces and braces appear verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass

from .versions import ProxyVersion

LOOPBACK = 'tls="no_identity",no_tls_reason="loopback"'
PLAINTEXT_IN = 'tls="no_identity",no_tls_reason="no_tls_from_remote"'
PLAINTEXT_OUT = 'tls="no_identity",no_tls_reason="not_provided_by_service_discovery"'
ADMIN_PORT = 4191
#: The route the policy controller synthesizes for a Service without HTTPRoutes.
OM_DEFAULT_ROUTE = "http"


def identity(sa: str, namespace: str, trust_domain: str) -> str:
    return f"{sa}.{namespace}.serviceaccount.identity.linkerd.{trust_domain}"


def tls_client(client_id: str | None) -> str:
    """Inbound TLS labels: mTLS with the peer's identity, or plaintext from a remote."""
    return PLAINTEXT_IN if client_id is None else f'tls="true",client_id="{client_id}"'


def tls_server(server_id: str | None) -> str:
    return PLAINTEXT_OUT if server_id is None else f'tls="true",server_id="{server_id}"'


def join(*parts: str) -> str:
    return ",".join(p for p in parts if p)


@dataclass(frozen=True)
class Endpoint:
    """Where a connection lands: the pod's app port or its admin port."""

    addr: str
    ip: str
    port: int


@dataclass(frozen=True)
class Destination:
    """What the Destination service tells a caller about one target pod."""

    authority: str
    namespace: str
    service: str
    kind: str  # deployment | statefulset | daemonset
    workload: str
    pod: str
    pod_template_hash: str | None
    serviceaccount: str
    meshed: bool
    server_id: str | None
    endpoint: Endpoint


class ProxyLabels:
    """Label text for the series of one proxy of a given version."""

    def __init__(self, version: ProxyVersion) -> None:
        self.v = version

    # -- building blocks -----------------------------------------------------------------

    def target(self, ep: Endpoint) -> str:
        if self.v.target_ip_port:
            return f'target_addr="{ep.addr}",target_ip="{ep.ip}",target_port="{ep.port}"'
        return f'target_addr="{ep.addr}"'

    def srv(self, port: int) -> str:
        era = self.v.policy_era
        if era == "2.12":
            s = 'srv_group="",srv_kind="default",srv_name="all-unauthenticated"'
            return s + (f',srv_port="{port}"' if self.v.srv_port else "")
        if era == "2.11":
            return 'srv_name="default:all-unauthenticated"'
        return ""

    def policy(self, port: int) -> str:
        """Server, route and authorization labels of the cluster-default policy."""
        era = self.v.policy_era
        if era == "2.12":
            return join(
                self.srv(port),
                'route_group="",route_kind="default",route_name="default"',
                'authz_group="",authz_kind="default",authz_name="all-unauthenticated"',
            )
        if era == "2.11":
            return 'srv_name="default:all-unauthenticated",saz_name="default:all-unauthenticated"'
        return ""

    # -- HTTP endpoint label sets --------------------------------------------------------

    def inbound(self, ep: Endpoint, tls: str, authority: str) -> str:
        auth = f'authority="{authority}"' if self.v.inbound_authority else ""
        return join('direction="inbound"', auth, self.target(ep), tls, self.policy(ep.port))

    def authz(self, ep: Endpoint, tls: str) -> str:
        return join(self.target(ep), self.policy(ep.port), tls)

    def outbound(self, dst: Destination) -> str:
        return join(
            'direction="outbound"',
            f'authority="{dst.authority}"',
            self.target(dst.endpoint),
            tls_server(dst.server_id),
            self.dst_labels(dst),
        )

    def dst_labels(self, dst: Destination) -> str:
        parts = []
        if dst.meshed:
            parts.append('dst_control_plane_ns="linkerd"')
        parts.append(f'dst_{dst.kind}="{dst.workload}"')
        parts.append(f'dst_namespace="{dst.namespace}"')
        parts.append(f'dst_pod="{dst.pod}"')
        if dst.pod_template_hash:
            parts.append(f'dst_pod_template_hash="{dst.pod_template_hash}"')
        parts.append(f'dst_service="{dst.service}"')
        parts.append(f'dst_serviceaccount="{dst.serviceaccount}"')
        # Sorted like the proxy's label map, so 'dst_deployment' precedes 'dst_namespace'.
        return ",".join(sorted(parts))

    def status(self, code: str) -> str:
        """``response_total`` classification labels; pre-2.13 proxies print only relevant ones."""
        cls = "failure" if code.startswith("5") else "success"
        if self.v.full_classification:
            return f'status_code="{code}",classification="{cls}",grpc_status="",error=""'
        return f'status_code="{code}",classification="{cls}"'

    @staticmethod
    def route(direction: str, dst: str, rt_route: str) -> str:
        return f'direction="{direction}",dst="{dst}",rt_route="{rt_route}"'

    # -- TCP label sets ------------------------------------------------------------------

    def tcp_accept(self, direction: str, ep: Endpoint, tls: str) -> str:
        srv = self.srv(ep.port) if direction == "inbound" else ""
        return join(f'direction="{direction}"', 'peer="src"', self.target(ep), tls, srv)

    def tcp_inbound_app(self, ep: Endpoint) -> str:
        return join('direction="inbound"', 'peer="dst"', self.target(ep), LOOPBACK)

    def tcp_connect(self, dst: Destination) -> str:
        return join(
            'direction="outbound"',
            'peer="dst"',
            self.target(dst.endpoint),
            tls_server(dst.server_id),
            self.dst_labels(dst),
        )

    # -- prometheus-client section (2.16+) ------------------------------------------------

    @staticmethod
    def _om_parent(dst: Destination, port: int) -> str:
        return (
            f'parent_group="core",parent_kind="Service",parent_namespace="{dst.namespace}",'
            f'parent_name="{dst.service}",parent_port="{port}",parent_section_name="",'
            'route_group="",route_kind="default",route_namespace="",'
            f'route_name="{OM_DEFAULT_ROUTE}"'
        )

    def om_parent_route(self, dst: Destination, port: int) -> str:
        """Outbound route-level labels: the Service as parent, its synthesized default route."""
        host = ',hostname=""' if self.v.route_hostname_label else ""
        return self._om_parent(dst, port) + host

    def om_backend(self, dst: Destination, port: int) -> str:
        """Backend-level labels; without a traffic split the backend is the parent Service."""
        return self._om_parent(dst, port) + (
            f',backend_group="core",backend_kind="Service",backend_namespace="{dst.namespace}",'
            f'backend_name="{dst.service}",backend_port="{port}",backend_section_name=""'
        )

    @staticmethod
    def om_inbound_route(port: int) -> str:
        """Inbound route labels (no namespaces) of the cluster-default policy's Server."""
        return (
            f'parent_group="",parent_kind="default",parent_name="all-unauthenticated",'
            f'parent_port="{port}",route_group="",route_kind="default",route_name="default"'
        )
