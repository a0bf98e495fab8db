"""The families one proxy prints, in its order, per Linkerd era.

Only headers and ordering live here; the layout appends one group per
series as it wires traffic to slots. Keeping the era table of families in one
place makes "what does a 2.15 proxy print" answerable by reading one class.
"""

from __future__ import annotations

from . import render as rd
from .labels import ProxyLabels

_ELAPSED = (
    "Elapsed times between a request's headers being received and its response stream completing"
)


class PodFamilies:
    """The ordered families of one proxy's output, per its version."""

    def __init__(self, labels: ProxyLabels) -> None:
        v = labels.v
        self.f: dict[str, rd.Family] = {}
        lh = rd.legacy_header
        if v.authz_counters:
            self._add(
                "authz",
                lh(
                    "inbound_http_authz_allow_total",
                    "counter",
                    "The total number of inbound HTTP requests that were authorized",
                ),
            )
        if v.identity_era == "legacy":
            self._add(
                "id_expiry",
                lh(
                    "identity_cert_expiration_timestamp_seconds",
                    "gauge",
                    "Time when the this proxy's current mTLS identity certificate will expire "
                    "(in seconds since the UNIX epoch).",
                ),
            )
            self._add(
                "id_refresh",
                lh(
                    "identity_cert_refresh_count",
                    "counter",
                    "The total number of times this proxy's mTLS identity certificate has been "
                    "refreshed by the Identity service.",
                ),
            )
        self._add("request_total", lh("request_total", "counter", "Total count of HTTP requests."))
        self._add("latency", lh("response_latency_ms", "histogram", _ELAPSED))
        self._add(
            "response_total", lh("response_total", "counter", "Total count of HTTP responses.")
        )
        self._add(
            "route_request",
            lh("route_request_total", "counter", "Total count of HTTP requests."),
        )
        self._add("route_latency", lh("route_response_latency_ms", "histogram", _ELAPSED))
        self._add(
            "route_response",
            lh("route_response_total", "counter", "Total count of HTTP responses."),
        )
        self._add(
            "tcp_open_total", lh("tcp_open_total", "counter", "Total count of opened connections")
        )
        self._add(
            "tcp_open_connections",
            lh("tcp_open_connections", "gauge", "Number of currently-open connections"),
        )
        self._add(
            "tcp_read",
            lh("tcp_read_bytes_total", "counter", "Total count of bytes read from peers"),
        )
        self._add(
            "tcp_write",
            lh("tcp_write_bytes_total", "counter", "Total count of bytes written to peers"),
        )
        self._add(
            "tcp_close", lh("tcp_close_total", "counter", "Total count of closed connections")
        )
        if v.tcp_accept_error_counters:
            self._add(
                "in_tcp_accept_errors",
                lh(
                    "inbound_tcp_accept_errors_total",
                    "counter",
                    "The total number of inbound TCP connections that could not be accepted "
                    "due to an error.",
                ),
            )
        if v.tcp_error_counters:
            self._add(
                "in_tcp_errors",
                lh(
                    "inbound_tcp_errors_total",
                    "counter",
                    "The total number of inbound TCP connections that could not be processed "
                    "due to a proxy error.",
                ),
            )
            self._add(
                "out_tcp_errors",
                lh(
                    "outbound_tcp_errors_total",
                    "counter",
                    "The total number of outbound TCP connections that could not be processed "
                    "due to a proxy error.",
                ),
            )
        if not v.openmetrics_section:
            self._legacy_process()
            return
        # prometheus-client section, always after the legacy part and closed by '# EOF'.
        oh = rd.om_header
        self._add("build_info", oh("proxy_build_info", "gauge", "Proxy build info."))
        prefix = "control_" if v.identity_era == "control" else ""
        self._add(
            "om_expiry",
            oh(
                f"{prefix}identity_cert_expiration_timestamp_seconds",
                "gauge",
                "Time when the this proxy's current mTLS identity certificate will expire.",
                "seconds",
            ),
        )
        self._add(
            "om_refresh_ts",
            oh(
                f"{prefix}identity_cert_refresh_timestamp_seconds",
                "gauge",
                "Time when the this proxy's current mTLS identity certificate was last updated.",
                "seconds",
            ),
        )
        self._add(
            "om_refreshes",
            oh(
                f"{prefix}identity_cert_refreshes",
                "counter",
                "The total number of times this proxy's mTLS identity certificate has been "
                "refreshed by the Identity service.",
            ),
        )
        if v.outbound_route_families:
            self._add(
                "om_route_duration",
                oh(
                    "outbound_http_route_request_duration_seconds",
                    "histogram",
                    "The time between request initialization and response completion.",
                    "seconds",
                ),
            )
            self._add(
                "om_route_statuses",
                oh(
                    "outbound_http_route_request_statuses",
                    "counter",
                    "Completed request-response streams.",
                ),
            )
            self._add(
                "om_backend_duration",
                oh(
                    "outbound_http_route_backend_response_duration_seconds",
                    "histogram",
                    "The time between request completion and response completion.",
                    "seconds",
                ),
            )
            self._add(
                "om_backend_statuses",
                oh(
                    "outbound_http_route_backend_response_statuses",
                    "counter",
                    "Completed responses.",
                ),
            )
        if v.inbound_route_requests:
            self._add(
                "om_in_requests",
                oh("inbound_http_requests", "counter", "Requests received by the inbound router."),
            )
        if v.inbound_route_outcomes:
            self._add(
                "om_in_statuses",
                oh("inbound_http_statuses", "counter", "Completed inbound responses, by status."),
            )
            self._add(
                "om_in_rsp_duration",
                oh(
                    "inbound_http_response_duration_seconds",
                    "histogram",
                    "Time from the end of the request to the end of the response.",
                    "seconds",
                ),
            )
            self._add(
                "om_in_req_duration",
                oh(
                    "inbound_http_request_duration_seconds",
                    "histogram",
                    "Time from the start of the request to the end of the response.",
                    "seconds",
                ),
            )
        self._om_process()

    def _add(self, key: str, header: str) -> None:
        self.f[key] = rd.Family(header)

    def _legacy_process(self) -> None:
        lh = rd.legacy_header
        for key, name, kind, help_text in (
            (
                "p_start",
                "process_start_time_seconds",
                "gauge",
                "Time that the process started (in seconds since the UNIX epoch)",
            ),
            (
                "p_cpu",
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
            ),
            ("p_fds", "process_open_fds", "gauge", "Number of open file descriptors."),
            ("p_maxfds", "process_max_fds", "gauge", "Maximum number of open file descriptors."),
            ("p_vmem", "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
            ("p_rss", "process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
            ("build_info", "proxy_build_info", "gauge", "Proxy build info"),
        ):
            self._add(key, lh(name, kind, help_text))

    def _om_process(self) -> None:
        oh = rd.om_header
        for key, name, kind, help_text, unit in (
            (
                "p_start",
                "process_start_time_seconds",
                "gauge",
                "Time that the process started (in seconds since the UNIX epoch).",
                "seconds",
            ),
            (
                "p_uptime",
                "process_uptime_seconds",
                "counter",
                "Total time since the process started (in seconds)",
                "seconds",
            ),
            (
                "p_cpu",
                "process_cpu_seconds",
                "counter",
                "Total user and system CPU time spent in seconds",
                "seconds",
            ),
            (
                "p_vmem",
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes",
                "bytes",
            ),
            (
                "p_rss",
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes",
                "bytes",
            ),
            ("p_fds", "process_open_fds", "gauge", "Number of open file descriptors", ""),
            ("p_maxfds", "process_max_fds", "gauge", "Maximum number of open file descriptors", ""),
            ("p_threads", "process_threads", "gauge", "Number of OS threads in the process.", ""),
        ):
            self._add(key, oh(name, kind, help_text, unit))

    def add(self, key: str, group: rd.Group) -> None:
        if key in self.f:
            self.f[key].groups.append(group)

    def has(self, key: str) -> bool:
        return key in self.f
