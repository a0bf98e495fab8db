"""Structured JSON logs, one object per line, for log pipelines in a cluster.

Context that matters for finding a log line again — the stage, the route
key, the incident fingerprint — is passed with ``extra={...}`` and lands as
top-level fields, so ``route_key="shop/deploy/web/inbound/*"`` is a query,
not a regular expression.
"""

from __future__ import annotations

import json
import logging
import time

CONTEXT_FIELDS = ("stage", "route_key", "fingerprint", "sink", "topic", "partition", "offset")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level))
    logging.getLogger("kafka").setLevel(max(logging.WARNING, getattr(logging, level)))
