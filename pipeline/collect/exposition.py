"""Parser for the text a linkerd2-proxy serves on ``/metrics``.

A proxy body is two formats glued together: first the hand-rolled legacy
families in Prometheus 0.0.4 text, then (since proxy v2.215) a
``prometheus-client`` section in OpenMetrics style that ends with ``# EOF``.
prometheus_client's OpenMetrics parser rejects the legacy part outright; its
0.0.4 parser accepts the mix but files the OpenMetrics counters (``# TYPE x
counter`` sampled as ``x_total``) as untyped, and it is slow enough to
dominate a collector that parses thousands of scrapes per window. So this
module parses the union of the two grammars, in one pass, by itself.

Design choices, and why:

* A scrape is data from a process we do not control. A bad line must cost
  us that line only, so errors are collected per line (:class:`ParseError`)
  and parsing carries on; :func:`parse` never raises on content.
* Almost every real line is boring: ``name{k="v",...} 123``. The hot loop
  handles that shape with ``str`` methods only. Anything unusual (escapes,
  whitespace inside the label block, exemplars, errors) is handed to a
  character scanner that is slower but exact, and that scanner is the
  authority: the fast path must either agree with it or defer to it.
* Label blocks repeat heavily (all buckets of one histogram series, its
  ``_count``/``_sum``, and the ``tcp_*`` families that share endpoint labels),
  so parsed label dicts are memoised per parse, with the ``le`` pair cut out
  of bucket blocks so all buckets of a series share one entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, NamedTuple

__all__ = [
    "MAX_LINE_CHARS",
    "Exposition",
    "ExpositionError",
    "ParseError",
    "Sample",
    "parse",
    "parse_strict",
]

#: Longest line we are willing to look at. Real proxy lines are < 1 KiB; a
#: line past this is a broken or hostile body, and scanning it would let one
#: bad scrape stall the collector.
MAX_LINE_CHARS: Final = 64 * 1024

_DISPLAY_CHARS: Final = 200

_METRIC_TYPES: Final = frozenset(
    {
        "counter",
        "gauge",
        "histogram",
        "summary",
        "untyped",
        "unknown",
        "info",
        "stateset",
        "gaugehistogram",
    }
)

# Which declared types own which sample-name suffix. A suffix only maps to a
# family whose type can actually emit it, so a gauge called ``x`` does not
# swallow an unrelated ``x_count``.
_SUFFIX_OWNERS: Final[tuple[tuple[str, frozenset[str]], ...]] = (
    ("_bucket", frozenset({"histogram", "gaugehistogram"})),
    ("_count", frozenset({"histogram", "summary"})),
    ("_sum", frozenset({"histogram", "summary"})),
    ("_total", frozenset({"counter"})),
    ("_created", frozenset({"counter", "histogram", "summary", "gaugehistogram"})),
    ("_gcount", frozenset({"gaugehistogram"})),
    ("_gsum", frozenset({"gaugehistogram"})),
    ("_info", frozenset({"info"})),
)

_METRIC_NAME_RE: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# A label block with no backslash can only use '"' as a delimiter, which is
# what makes this strict, linear-time regex sufficient for the fast path.
_PLAIN_BLOCK_RE: Final = re.compile(
    r'(?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*",)*(?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")?'
)
_PLAIN_PAIR_RE: Final = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')
_VALUE_CHUNK_RE: Final = re.compile(r'[^"\\]*')
_HELP_ESCAPE_RE: Final = re.compile(r"\\(.)")

_LABEL_ESCAPES: Final = {"\\": "\\", '"': '"', "n": "\n"}
_HELP_ESCAPES: Final = {"\\": "\\", "n": "\n"}


class Sample(NamedTuple):
    """One exposed value.

    A NamedTuple rather than a dataclass because the hot loop builds
    hundreds of these per scrape and tuple construction is the cheapest
    typed record Python has.

    ``timestamp`` is kept as written: milliseconds in 0.0.4 text, seconds in
    OpenMetrics. A proxy never writes one, and a body mixing both formats
    gives no reliable way to tell which unit a given line meant.
    """

    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None


class ParseError(NamedTuple):
    """Why one line was dropped, phrased for a person reading a log."""

    line_no: int
    line: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line_no}: {self.message} in {self.line!r}"


class ExpositionError(ValueError):
    """Raised by :func:`parse_strict`, for callers that prefer to stop."""

    def __init__(self, errors: list[ParseError]) -> None:
        self.errors = errors
        shown = "\n".join(f"  {e}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} malformed line(s) in exposition:\n{shown}{more}")


@dataclass(slots=True)
class Exposition:
    """Everything one body told us, in body order.

    Samples are kept flat rather than grouped into families: the proxy's
    two sections disagree on how a family's samples are named and ordered,
    and the consumers index by sample name and labels anyway.
    :meth:`family_of` recovers the grouping on demand.
    """

    samples: list[Sample] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    errors: list[ParseError] = field(default_factory=list)
    eof: bool = False
    helps: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def family_of(self, sample_name: str) -> str:
        """Map a sample name to the family that declared it.

        Needed because the OpenMetrics section declares ``x`` but emits
        ``x_total`` / ``x_bucket``, while the legacy section often declares
        the full name (``request_total``). Exact declarations win; a name
        nobody declared is its own family.
        """
        types = self.types
        if sample_name in types:
            return sample_name
        for suffix, owners in _SUFFIX_OWNERS:
            if sample_name.endswith(suffix):
                base = sample_name[: -len(suffix)]
                if types.get(base) in owners:
                    return base
        return sample_name


class _LineError(Exception):
    """Carries a human message out of the character scanner."""


def _display(line: str) -> str:
    return line if len(line) <= _DISPLAY_CHARS else line[:_DISPLAY_CHARS] + "…"


def _error(line_no: int, line: str, message: str) -> ParseError:
    return ParseError(line_no, _display(line), message)


def _parse_number(token: str, what: str) -> float:
    """Parse a value the way Prometheus' Go parser would accept it.

    ``float()`` alone is too lenient: it takes ``1_000`` and non-ASCII
    digits, which no exporter writes and which usually mean corruption.
    """
    if "_" in token or not token.isascii():
        raise _LineError(f"invalid {what} {token!r}")
    try:
        return float(token)
    except ValueError:
        raise _LineError(f"invalid {what} {token!r}") from None


def _parse_tail(rest: str) -> tuple[float, float | None]:
    """Value, optional timestamp, optional OpenMetrics exemplar (ignored)."""
    tokens = rest.split()
    for i, tok in enumerate(tokens):
        if tok[0] == "#":
            # Exemplars are per-bucket trace hints; the detector has no use
            # for them and dropping them keeps the sample itself intact.
            del tokens[i:]
            break
    if not tokens:
        raise _LineError("missing value")
    if len(tokens) > 2:
        raise _LineError(f"unexpected text after timestamp: {' '.join(tokens[2:])!r}")
    value = _parse_number(tokens[0], "value")
    ts = _parse_number(tokens[1], "timestamp") if len(tokens) == 2 else None
    return value, ts


def _skip_blanks(line: str, pos: int) -> int:
    n = len(line)
    while pos < n and line[pos] in " \t":
        pos += 1
    return pos


def _scan_labels(line: str, pos: int) -> tuple[dict[str, str], int]:
    """Parse a label block starting just after ``{``; return end past ``}``.

    Written as an explicit scanner because escaped quotes and commas inside
    values defeat any split-based approach, and because only a scanner can
    say *where* a broken line went wrong.
    """
    labels: dict[str, str] = {}
    n = len(line)
    while True:
        pos = _skip_blanks(line, pos)
        if pos >= n:
            raise _LineError("unterminated label set (missing '}')")
        ch = line[pos]
        if ch == "}":
            return labels, pos + 1
        m = _LABEL_NAME_RE.match(line, pos)
        if m is None:
            raise _LineError(f"expected label name at column {pos + 1}, found {ch!r}")
        name = m.group()
        pos = _skip_blanks(line, m.end())
        if pos >= n:
            raise _LineError(f"truncated line: expected '=' after label name {name!r}")
        if line[pos] != "=":
            raise _LineError(
                f"expected '=' after label name {name!r} at column {pos + 1}, found {line[pos]!r}"
            )
        pos = _skip_blanks(line, pos + 1)
        if pos >= n:
            raise _LineError(f"truncated line: expected value for label {name!r}")
        if line[pos] != '"':
            raise _LineError(
                f"expected '\"' to open value of label {name!r} at column {pos + 1}, "
                f"found {line[pos]!r}"
            )
        pos += 1
        chunks: list[str] = []
        while True:
            m = _VALUE_CHUNK_RE.match(line, pos)
            assert m is not None  # a '*' pattern always matches
            chunks.append(m.group())
            pos = m.end()
            if pos >= n:
                raise _LineError(f"unterminated label value for {name!r}")
            if line[pos] == '"':
                pos += 1
                break
            # A backslash: exactly three escapes exist in both formats.
            if pos + 1 >= n:
                raise _LineError(f"unterminated label value for {name!r}")
            esc = line[pos + 1]
            repl = _LABEL_ESCAPES.get(esc)
            if repl is None:
                raise _LineError(
                    f"invalid escape '\\{esc}' in value of label {name!r} at column {pos + 1}"
                    ' (only \\\\, \\" and \\n are allowed)'
                )
            chunks.append(repl)
            pos += 2
        if name in labels:
            raise _LineError(f"duplicate label name {name!r}")
        labels[name] = "".join(chunks)
        pos = _skip_blanks(line, pos)
        if pos >= n:
            raise _LineError("unterminated label set (missing '}')")
        ch = line[pos]
        if ch == ",":
            pos += 1
        elif ch != "}":
            raise _LineError(
                f"expected ',' or '}}' after value of label {name!r} at column {pos + 1}, "
                f"found {ch!r}"
            )


def _scan_sample(line: str) -> Sample:
    """Exact (slow) parse of one sample line; raises :class:`_LineError`."""
    m = _METRIC_NAME_RE.match(line)
    if m is None:
        raise _LineError(f"expected metric name, found {line[:1]!r}")
    name = m.group()
    pos = m.end()
    n = len(line)
    while pos < n and line[pos].isspace():
        pos += 1
    labels: dict[str, str]
    if pos < n and line[pos] == "{":
        labels, pos = _scan_labels(line, pos + 1)
    elif pos == m.end() and pos < n:
        raise _LineError(f"invalid character {line[pos]!r} in metric name at column {pos + 1}")
    else:
        labels = {}
    value, ts = _parse_tail(line[pos:])
    return Sample(name, labels, value, ts)


def _parse_plain_block(block: str) -> dict[str, str] | None:
    """Fast label parse for blocks without backslashes; None means 'ask the scanner'."""
    if _PLAIN_BLOCK_RE.fullmatch(block) is None:
        return None
    pairs = _PLAIN_PAIR_RE.findall(block)
    labels = dict(pairs)
    if len(labels) != len(pairs):
        return None  # duplicate label: let the scanner name it
    return labels


def _unescape_help(doc: str) -> str:
    if "\\" not in doc:
        return doc
    # Lenient on purpose: HELP text is for people, so an unknown escape is
    # kept verbatim rather than costing the family its documentation.
    return _HELP_ESCAPE_RE.sub(lambda m: _HELP_ESCAPES.get(m.group(1), m.group(0)), doc)


def _comment(line: str, line_no: int, out: Exposition) -> None:
    """Handle a ``#`` line. Unknown comments (``# POD ...``) are ignored."""
    parts = line.split(None, 3)
    if len(parts) < 2 or parts[0] != "#":
        return
    kw = parts[1]
    if kw == "EOF":
        if len(parts) == 2:
            # Not an error to see more afterwards: `linkerd diagnostics
            # proxy-metrics` concatenates one body (and one EOF) per pod.
            out.eof = True
        return
    if kw not in ("HELP", "TYPE", "UNIT"):
        return
    if len(parts) < 3:
        out.errors.append(_error(line_no, line, f"malformed {kw} line: missing metric name"))
        return
    name = parts[2]
    if _METRIC_NAME_RE.fullmatch(name) is None:
        out.errors.append(_error(line_no, line, f"invalid metric name {name!r} in {kw} line"))
        return
    if kw == "HELP":
        out.helps[name] = _unescape_help(parts[3]) if len(parts) == 4 else ""
    elif kw == "UNIT":
        out.units[name] = parts[3].strip() if len(parts) == 4 else ""
    else:
        if len(parts) < 4:
            out.errors.append(_error(line_no, line, "malformed TYPE line: missing type"))
            return
        typ = parts[3].strip().lower()
        if typ not in _METRIC_TYPES:
            out.errors.append(_error(line_no, line, f"unknown metric type {parts[3].strip()!r}"))
            return
        prev = out.types.get(name)
        if prev is None:
            out.types[name] = typ
        elif prev != typ:
            out.errors.append(
                _error(
                    line_no,
                    line,
                    f"conflicting TYPE for {name!r}: already declared {prev!r}, keeping it",
                )
            )


def _decode(data: bytes | bytearray) -> tuple[str, dict[int, str]]:
    """Decode leniently, remembering which lines had invalid UTF-8.

    Decoding with ``errors="replace"`` keeps line numbering intact (the
    decoder never swallows a newline), so the bad lines can be reported by
    number and the good ones still parsed.
    """
    try:
        return bytes(data).decode("utf-8"), {}
    except UnicodeDecodeError:
        pass
    bad: dict[int, str] = {}
    for no, raw in enumerate(bytes(data).split(b"\n"), 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad[no] = f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
    return bytes(data).decode("utf-8", errors="replace"), bad


def _name_kind(name: str) -> int:
    """0: not a metric name; 2: a histogram bucket (gets the ``le`` split); 1: other."""
    if _METRIC_NAME_RE.fullmatch(name) is None:
        return 0
    return 2 if name.endswith("_bucket") else 1


class _NeedScannerError(Exception):
    """The fast path saw something it does not handle; use the scanner."""


def parse(text: str | bytes) -> Exposition:
    """Parse one proxy ``/metrics`` body (legacy text, then OpenMetrics).

    Never raises on content: every malformed line becomes one
    :class:`ParseError` and the next line is parsed normally, because one
    odd series must not blind the detector to the rest of the pod. Bytes
    are accepted so the collector can hand over the HTTP body untouched;
    lines that are not valid UTF-8 are reported rather than guessed at.
    """
    bad_lines: dict[int, str]
    if isinstance(text, str):
        bad_lines = {}
    elif isinstance(text, (bytes, bytearray)):
        text, bad_lines = _decode(text)
    else:
        raise TypeError(f"parse() wants str or bytes, not {type(text).__name__}")
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n")

    out = Exposition()
    errors = out.errors
    append = out.samples.append
    new_sample = tuple.__new__

    # Per-parse memo tables. Kept local (not module-level) so memory is
    # bounded by the body and nothing leaks between scrape targets.
    name_kind: dict[str, int] = {}
    label_cache: dict[str, dict[str, str]] = {}
    value_cache: dict[str, float] = {}
    # The label block (minus ``le``) of the previous sample line. Consecutive
    # lines usually share it (buckets, then _count/_sum), and comparing in
    # place with startswith() is cheaper than slicing and hashing the block.
    last_key = ""
    last_base: dict[str, str] = {}

    line_no = 0
    for line in text.split("\n"):
        line_no += 1
        if not line:
            continue
        if len(line) > MAX_LINE_CHARS:
            msg = f"line too long ({len(line)} characters, limit {MAX_LINE_CHARS}); skipped"
            errors.append(_error(line_no, line, msg))
            continue
        if bad_lines and line_no in bad_lines:
            errors.append(_error(line_no, line, bad_lines[line_no]))
            continue
        c = line[0]
        if c == " " or c == "\t":
            line = line.lstrip(" \t")
            if not line:
                continue
            c = line[0]
        try:
            if c == "#":
                _comment(line, line_no, out)
                continue

            # ---- fast path: any surprise raises and defers to the scanner ----
            try:
                brace = line.find("{")
                if brace < 0:
                    toks = line.split()
                    ntok = len(toks)
                    if ntok != 2 and ntok != 3:
                        raise _NeedScannerError
                    name = toks[0]
                    kind = name_kind.get(name)
                    if kind is None:
                        kind = name_kind[name] = _name_kind(name)
                    if not kind:
                        raise _NeedScannerError
                    labels: dict[str, str] = {}
                    vtok = toks[1]
                    ttok = toks[2] if ntok == 3 else None
                else:
                    name = line[:brace]
                    kind = name_kind.get(name)
                    if kind is None:
                        kind = name_kind[name] = _name_kind(name)
                    if not kind:
                        raise _NeedScannerError
                    b0 = brace + 1

                    # Shortcut: same labels as the previous line, give or
                    # take an ``le`` pair at the very start or very end.
                    le: str | None = None
                    close = -1
                    q = b0
                    if kind == 2 and line.startswith('le="', b0):
                        end = line.find('"', b0 + 4)
                        if end > 0 and line.startswith(",", end + 1):
                            le = line[b0 + 4 : end]
                            q = end + 2
                    if line.startswith(last_key, q):
                        e = q + len(last_key)
                        if line.startswith("}", e):
                            close = e
                        elif le is None and kind == 2 and line.startswith(',le="', e):
                            end = line.find('"', e + 5)
                            if end > 0 and line.startswith("}", end + 1):
                                le = line[e + 5 : end]
                                close = end + 1
                    if close >= 0 and (le is None or "\\" not in le):
                        labels = last_base.copy()
                    else:
                        # General case: isolate the block, cut out ``le``,
                        # and look the rest up in the per-parse cache.
                        close = line.rfind("}")
                        if close < brace:
                            raise _NeedScannerError
                        block = line[b0:close]
                        if "\\" in block:
                            raise _NeedScannerError
                        le = None
                        if kind == 2:
                            if block.startswith('le="'):
                                end = block.find('"', 4)
                                if end < 0:
                                    raise _NeedScannerError
                                le = block[4:end]
                                after = block[end + 1 :]
                                if not after:
                                    block = ""
                                elif after[0] == ",":
                                    block = after[1:]
                                else:
                                    raise _NeedScannerError
                            else:
                                idx = block.rfind(',le="')
                                if idx > 0:
                                    end = block.find('"', idx + 5)
                                    if (
                                        end < 0
                                        or block[idx - 1] != '"'
                                        or block.count('"', 0, idx) & 1
                                        or block[end + 1 : end + 2] not in ("", ",")
                                    ):
                                        raise _NeedScannerError
                                    le = block[idx + 5 : end]
                                    block = block[:idx] + block[end + 1 :]
                        base = label_cache.get(block)
                        if base is None:
                            base = _parse_plain_block(block)
                            if base is None:
                                raise _NeedScannerError
                            label_cache[block] = base
                            # First use may hand out the cached dict itself:
                            # every later use copies, and nobody can mutate
                            # it before parse() returns.
                            labels = base if le is None else base.copy()
                        else:
                            labels = base.copy()
                        last_key = block
                        last_base = base
                    if le is not None:
                        if "le" in labels:
                            raise _NeedScannerError  # duplicate le
                        labels["le"] = le
                    toks = line[close + 1 :].split()
                    ntok = len(toks)
                    if ntok == 1:
                        vtok = toks[0]
                        ttok = None
                    elif ntok == 2:
                        vtok, ttok = toks
                    else:
                        raise _NeedScannerError

                value = value_cache.get(vtok)
                if value is None:
                    if "_" in vtok or not vtok.isascii():
                        raise _NeedScannerError
                    value = value_cache[vtok] = float(vtok)
                ts = None
                if ttok is not None:
                    if "_" in ttok or not ttok.isascii() or ttok[0] == "#":
                        raise _NeedScannerError
                    ts = float(ttok)
                append(new_sample(Sample, (name, labels, value, ts)))
                continue
            except Exception:  # any surprise just means "use the scanner"
                pass

            # ---- exact path ----------------------------------------------------
            if line.isspace():
                continue  # e.g. a lone "\r" from old-Mac line endings
            try:
                append(_scan_sample(line))
            except _LineError as exc:
                errors.append(_error(line_no, line, str(exc)))
        except Exception as exc:  # pragma: no cover - defensive: never raise on content
            errors.append(_error(line_no, line, f"internal parser error: {exc!r}"))
    return out


def parse_strict(text: str | bytes) -> Exposition:
    """Like :func:`parse`, but any malformed line is fatal.

    For tests and offline tools, where silently dropping a line would hide
    a bug; the collector itself should use :func:`parse` and count errors.
    """
    result = parse(text)
    if result.errors:
        raise ExpositionError(result.errors)
    return result
