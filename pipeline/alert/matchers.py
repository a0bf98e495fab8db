"""Label matchers, as Alertmanager writes them: ``name=value``, ``!=``, ``=~``, ``!~``.

Routes, silences and maintenance windows all select incidents with the same
small language, so an on-call engineer learns it once. Regular expressions
are anchored at both ends, as in Alertmanager (``workload=~"web"`` does not
match ``web-v2``). A label an incident does not carry reads as the empty
string.

This module imports nothing from the rest of the pipeline, so the
configuration can validate matchers without import cycles.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

Op = Literal["=", "!=", "=~", "!~"]

#: What a matcher may name: the identity of an incident plus its severity.
LABELS: tuple[str, ...] = (
    "namespace",
    "workload_kind",
    "workload",
    "workload_key",
    "direction",
    "route",
    "route_key",
    "kind",
    "severity",
    "fingerprint",
)

_SYNTAX = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.DOTALL)


class MatcherError(ValueError):
    """A matcher that cannot be parsed, naming what is wrong."""


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    op: Op
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """``namespace=shop``, ``severity!="info"``, ``workload=~"web|api"``."""
        m = _SYNTAX.match(text)
        if m is None:
            raise MatcherError(f"{text!r} is not a matcher (name=value, !=, =~, !~)")
        name, op, raw = m.groups()
        if name not in LABELS:
            raise MatcherError(f"{text!r}: unknown label {name!r}; known: {', '.join(LABELS)}")
        value = _unquote(raw)
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = re.compile(f"(?:{value})", re.DOTALL)
            except re.error as exc:
                raise MatcherError(f"{text!r}: invalid regular expression: {exc}") from None
        return cls(name, cast(Op, op), value, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.name, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        assert self._regex is not None
        hit = self._regex.fullmatch(got) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{_quote(self.value)}"


def parse_all(texts: Iterable[str]) -> tuple[Matcher, ...]:
    return tuple(Matcher.parse(t) for t in texts)


def match_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches (an empty list matches everything)."""
    return all(m.matches(labels) for m in matchers)


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        inner = raw[1:-1]
        return inner.replace('\\"', '"').replace("\\'", "'").replace("\\\\", "\\")
    return raw


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
