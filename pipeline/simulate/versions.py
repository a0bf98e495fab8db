"""What a linkerd2-proxy of a given Linkerd release puts on ``/metrics``.

Every era-dependent decision of the renderer is a property here, so a new
release means editing one table rather than hunting ``if minor >= ...``
through the rendering code. The facts come from the project's Linkerd
metrics reference (shared/reference/linkerd-metrics.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

#: Linkerd stable release minor -> proxy release shipped with it.
PROXY_RELEASES: dict[int, str] = {
    10: "v2.138.0",
    11: "v2.161.0",
    12: "v2.185.0",
    13: "v2.197.1",
    14: "v2.207.0",
    15: "v2.221.0",
    16: "v2.246.0",
    17: "v2.268.0",
    18: "v2.294.0",
    19: "v2.326.0",
    20: "v2.359.0",
}
MIN_MINOR = min(PROXY_RELEASES)
MAX_MINOR = max(PROXY_RELEASES)

#: Proxy releases between two stables whose metrics the simulator models, as
#: (first, last) proxy minor -> the stable line whose other features they
#: share. v2.149-v2.154 (mid-2021 edges, after stable-2.10) are the only
#: proxies with ``inbound_tcp_accept_errors_total``; v2.155 replaced it with
#: ``inbound_tcp_errors_total`` together with the target_ip/target_port labels.
EDGE_WINDOWS: dict[tuple[int, int], int] = {(149, 154): 10}

_VERSION_RE = re.compile(r"^(?:stable-|version-)?2\.(\d+)(?:\.\d+)?$")
_PROXY_RE = re.compile(r"^v2\.(\d+)(?:\.\d+)?$")

PolicyEra = Literal["none", "2.11", "2.12"]
IdentityEra = Literal["legacy", "openmetrics", "control"]


def _proxy_minor(release: str) -> int:
    return int(release.split(".")[1])


def parse_version(version: str) -> tuple[int, int]:
    """(Linkerd minor, proxy minor) of ``2.18``, ``stable-2.14.0``, ``version-2.18`` or a
    proxy release the simulator models, such as ``v2.150.0``."""
    text = version.strip()
    m = _VERSION_RE.match(text)
    if m:
        minor = int(m.group(1))
        if not MIN_MINOR <= minor <= MAX_MINOR:
            raise ValueError(
                f"proxy_version {version!r} is not simulated; "
                f"supported: 2.{MIN_MINOR} to 2.{MAX_MINOR}"
            )
        return minor, _proxy_minor(PROXY_RELEASES[minor])
    m = _PROXY_RE.match(text)
    if m:
        proxy = int(m.group(1))
        for minor, release in PROXY_RELEASES.items():
            if _proxy_minor(release) == proxy:
                return minor, proxy
        for (lo, hi), minor in EDGE_WINDOWS.items():
            if lo <= proxy <= hi:
                return minor, proxy
        windows = ", ".join(f"v2.{lo}-v2.{hi}" for lo, hi in EDGE_WINDOWS)
        raise ValueError(
            f"proxy_version {version!r} is not simulated; proxy releases must be a stable "
            f"one or in {windows}"
        )
    raise ValueError(
        f"proxy_version {version!r} is not of the form '2.<minor>' or 'v2.<proxy minor>.<patch>'"
    )


def parse_minor(version: str) -> int:
    """The Linkerd minor whose features ``version`` has (see :func:`parse_version`)."""
    return parse_version(version)[0]


@dataclass(frozen=True)
class ProxyVersion:
    """Feature flags of one Linkerd release's proxy metrics.

    ``proxy`` is the linkerd2-proxy minor (``161`` for v2.161.0); it defaults
    to the one the stable ``minor`` shipped and differs only for the modelled
    edge proxies (:data:`EDGE_WINDOWS`).
    """

    minor: int
    proxy: int = 0

    def __post_init__(self) -> None:
        if not self.proxy:
            object.__setattr__(self, "proxy", _proxy_minor(PROXY_RELEASES[self.minor]))

    @classmethod
    def parse(cls, version: str) -> ProxyVersion:
        return cls(*parse_version(version))

    @property
    def is_stable(self) -> bool:
        return self.proxy == _proxy_minor(PROXY_RELEASES[self.minor])

    @property
    def name(self) -> str:
        return f"2.{self.minor}" if self.is_stable else f"v2.{self.proxy}.0"

    @property
    def proxy_release(self) -> str:
        return PROXY_RELEASES[self.minor] if self.is_stable else f"v2.{self.proxy}.0"

    @property
    def target_ip_port(self) -> bool:
        """``target_ip``/``target_port`` joined ``target_addr`` in proxy v2.155 (2.11)."""
        return self.minor >= 11

    @property
    def policy_era(self) -> PolicyEra:
        if self.minor >= 12:
            return "2.12"
        if self.minor == 11:
            return "2.11"
        return "none"

    @property
    def srv_port(self) -> bool:
        return self.minor >= 18

    @property
    def inbound_authority(self) -> bool:
        """The inbound ``authority`` label was dropped in proxy v2.277 (2.18)."""
        return self.minor < 18

    @property
    def full_classification(self) -> bool:
        """Since 2.13 every ``response_total`` sample has classification, grpc_status, error."""
        return self.minor >= 13

    @property
    def tcp_error_counters(self) -> bool:
        """``inbound_tcp_errors_total``/``outbound_tcp_errors_total`` since 2.11."""
        return self.minor >= 11

    @property
    def tcp_accept_error_counters(self) -> bool:
        """``inbound_tcp_accept_errors_total{error}``: proxy v2.149-v2.154 only."""
        return 149 <= self.proxy <= 154

    @property
    def authz_counters(self) -> bool:
        return self.minor >= 11

    @property
    def identity_era(self) -> IdentityEra:
        if self.minor >= 16:
            return "control"
        if self.minor == 15:
            return "openmetrics"
        return "legacy"

    @property
    def openmetrics_section(self) -> bool:
        """The prometheus-client section (``# UNIT``, ``# EOF``) exists since 2.15."""
        return self.minor >= 15

    @property
    def outbound_route_families(self) -> bool:
        """``outbound_http_route_request_{statuses,duration}`` arrived in 2.16."""
        return self.minor >= 16

    @property
    def route_hostname_label(self) -> bool:
        """``hostname`` on route-level families since proxy v2.258 (2.17)."""
        return self.minor >= 17

    @property
    def inbound_route_requests(self) -> bool:
        """``inbound_http_requests_total`` (Server/route labels) since proxy v2.319 (2.19)."""
        return self.minor >= 19

    @property
    def inbound_route_outcomes(self) -> bool:
        """``inbound_http_statuses_total`` and the inbound duration histograms, 2.20."""
        return self.minor >= 20
