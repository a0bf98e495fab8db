"""Fakes for REST APIs: many paths and methods, credentials, server-side state.

A webhook fake (``base.Receiver``) has one path and one answer. A chat or
ticket API has routes (``POST /rest/api/3/issue``, ``GET .../transitions``),
checks credentials on every call and keeps what was created so a later call
can find, comment on or close it. :class:`ApiReceiver` adds exactly that on
top of the base receiver, keeping its recording, waiting and scripting:

* each route validates the request (method, headers, body) and returns an
  *effect*, a function that changes the fake's state and builds the answer;
* a scripted failure (429, 5xx, 400, hang) is answered *instead of* running
  the effect, so a failed call changes nothing on the server, as with the
  real service;
* ``script_on(route, ...)`` fails one operation (the transition, not the
  search before it); ``script(...)`` fails whatever request comes next.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl

from aiohttp import web

from pipeline.receivers.base import Problem, Received, Receiver, Reply

BodyKind = Literal["json", "form", "none", "raw", "multipart", "json_or_multipart", "any"]
Effect = Callable[[], Reply]


@dataclass(frozen=True, slots=True)
class Upload:
    """One file part of a multipart request."""

    name: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Call:
    """One request as a route handler sees it."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    payload: Any
    params: Mapping[str, str]
    files: tuple[Upload, ...] = ()

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class RejectedError(Exception):
    """Raised by a route handler: the request breaks the documented format."""

    def __init__(self, *problems: Problem) -> None:
        super().__init__("; ".join(p.detail for p in problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    method: str
    pattern: re.Pattern[str]
    body: BodyKind
    handler: Callable[[Call], Effect]


def json_reply(status: int, data: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(
        status,
        json.dumps(data, ensure_ascii=False),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(
    kind: BodyKind, content_type: str, charset: str | None, raw: bytes, headers: Mapping[str, str]
) -> tuple[Any, tuple[Upload, ...], list[Problem]]:
    """Decode the body a route expects; problems use the generic codes of ``base``."""
    if kind == "any" and content_type == "multipart/form-data":
        kind = "multipart"
    if kind in ("none", "raw", "any"):
        if kind == "none" and raw.strip():
            return None, (), [Problem("invalid_payload", "a body was sent where none is expected")]
        return None, (), []
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        return None, (), [Problem("invalid_content_type", f"charset {charset!r}, expected utf-8")]
    if kind == "json_or_multipart" and content_type == "multipart/form-data":
        kind = "multipart"
    elif kind == "json_or_multipart":
        kind = "json"
    if kind == "json":
        if content_type != "application/json":
            return None, (), [Problem("invalid_content_type", f"Content-Type {content_type!r}")]
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant), (), []
        except (UnicodeDecodeError, ValueError) as exc:
            return None, (), [Problem("invalid_payload", f"body is not JSON: {exc}")]
    if kind == "form":
        if content_type != "application/x-www-form-urlencoded":
            return None, (), [Problem("invalid_content_type", f"Content-Type {content_type!r}")]
        try:
            return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True)), (), []
        except (UnicodeDecodeError, ValueError) as exc:
            return None, (), [Problem("invalid_payload", f"body is not a form: {exc}")]
    # multipart/form-data: parsed with the e-mail parser, which knows MIME.
    if content_type != "multipart/form-data":
        return None, (), [Problem("invalid_content_type", f"Content-Type {content_type!r}")]
    head = f"Content-Type: {headers.get('content-type', '')}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        return None, (), [Problem("invalid_payload", "multipart body without parts")]
    fields: dict[str, str] = {}
    files: list[Upload] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        data = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(data, bytes):
            return None, (), [Problem("invalid_payload", "a multipart part has no name")]
        if filename:
            files.append(Upload(name, filename, part.get_content_type(), data))
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields, tuple(files), []


class ApiReceiver(Receiver):
    """Base of the REST fakes: routes, credentials, state, per-route scripts."""

    service: ClassVar[str] = "api"
    default_path: ClassVar[str] = "/"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._routes: list[Route] = []
        self._route_scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self.setup_routes()

    # -- what subclasses define ---------------------------------------------------

    def setup_routes(self) -> None:
        """Register routes with :meth:`route`."""

    def authorize(self, call: Call) -> list[Problem]:
        """Problems with the request's credentials (checked before the route's own)."""
        return []

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        status = problems[0].status or {
            "invalid_method": 405,
            "invalid_content_type": 415,
        }.get(problems[0].code, 400)
        return json_reply(status, {"errors": [p.detail for p in problems]})

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        return json_reply(
            status, {"message": self.error_body(status) or f"error {status}"}, headers
        )

    def not_found(self, method: str, path: str) -> Reply:
        return json_reply(404, {"message": "Not Found"})

    # -- routing -------------------------------------------------------------------

    def route(
        self,
        name: str,
        method: str,
        pattern: str,
        handler: Callable[[Call], Effect],
        *,
        body: BodyKind = "json",
    ) -> None:
        self._routes.append(Route(name, method, re.compile(f"^{pattern}$"), body, handler))

    def script_on(self, route: str, *replies: Reply) -> None:
        """Answer the next calls of one operation with these replies."""
        if not any(r.name == route for r in self._routes):
            raise KeyError(f"{self.service} receiver has no route {route!r}")
        with self._lock:
            self._route_scripts[route].extend(replies)

    def fail_on(
        self, route: str, status: int = 500, times: int = 1, retry_after: float | None = None
    ) -> None:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        self.script_on(route, *[self.error_reply(status, headers)] * times)

    def calls(self, route: str) -> tuple[Received, ...]:
        """The requests routed to one operation, accepted or not."""
        return tuple(r for r in self.requests() if r.route == route)

    def clear(self) -> None:
        super().clear()
        with self._lock:
            self._route_scripts.clear()

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError(f"{self.service} receiver is not started")
        return self.base_url

    # -- the handler -----------------------------------------------------------------

    def _match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        path_known = False
        for r in self._routes:
            m = r.pattern.match(path)
            if m is None:
                continue
            path_known = True
            if r.method == method:
                return r, m.groupdict(), True
        return None, {}, path_known

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        route, params, path_known = self._match(request.method, request.path)
        payload: Any = None
        problems: list[Problem] = []
        effect: Effect | None = None
        reply: Reply | None = None
        if route is None:
            if path_known:
                problems = [Problem("invalid_method", f"method {request.method} not allowed")]
                reply = self.rejection(problems)
            else:
                problems = [Problem("wrong_path", f"no such endpoint {request.path!r}")]
                reply = self.not_found(request.method, request.path)
        else:
            payload, files, problems = parse_body(
                route.body, request.content_type, request.charset, raw, headers
            )
            call = Call(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=headers,
                body=raw,
                payload=payload,
                params=params,
                files=files,
            )
            if not problems:
                problems = self.authorize(call)
            if not problems:
                try:
                    effect = route.handler(call)
                except RejectedError as exc:
                    problems = exc.problems
        name = route.name if route is not None else ""
        with self._lock:
            queue = self._route_scripts.get(name)
            scripted = queue.popleft() if queue else None
            if scripted is None and self._script:
                scripted = self._script.popleft()
        if scripted is not None:
            reply = scripted
        elif reply is None:
            reply = self.rejection(problems) if problems or effect is None else effect()
        await self._record(request, raw, payload, problems, reply, scripted is not None, name)
        if reply.hang and self._release is not None:
            await self._release.wait()
        return web.Response(
            status=reply.status,
            body=reply.body.encode(),
            content_type=reply.content_type,
            charset="utf-8",
            headers=reply.headers,
        )


@dataclass
class Counter:
    """Deterministic ids for fakes: 1, 2, 3, ... (used on the receiver's loop only)."""

    value: int = 0

    def next(self) -> int:
        self.value += 1
        return self.value


def require_fields(obj: Any, where: str, *names: str) -> list[Problem]:
    if not isinstance(obj, dict):
        return [Problem("invalid_payload", f"{where or 'body'}: expected an object")]
    return [
        Problem("missing_field", f"{where}{n}: missing")
        for n in names
        if obj.get(n) in (None, "", [], {})
    ]


def check_length(value: Any, where: str, limit: int, *, code: str = "too_long") -> list[Problem]:
    if isinstance(value, str) and len(value) > limit:
        return [Problem(code, f"{where}: {len(value)} characters, at most {limit}")]
    return []


def bearer(call: Call) -> str | None:
    auth = call.header("authorization") or ""
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
