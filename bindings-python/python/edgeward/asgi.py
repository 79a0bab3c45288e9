"""A pure ASGI middleware that guards an inference server with an edgeward engine.

::

    from edgeward import Engine
    from edgeward.asgi import Guard

    app = Guard(app, engine=Engine.from_policy("policy.yaml"))

Works with any ASGI 3 server and framework (uvicorn, hypercorn; Starlette, FastAPI, the
vLLM OpenAI server). For each HTTP request it reads the body (bounded by ``max_body``),
inspects it, and either answers the refusal itself (the decision's status, its
``Retry-After`` and rate-limit headers, a JSON body in the OpenAI error shape) or passes
the request on, with clamped parameters rewritten into the body. On the way back it adds
the rate-limit headers and settles the request's reservation with what the response
used: the ``usage`` of a JSON body, or the usage a server-sent-events stream reports
(counted from the streamed text when it reports none), read chunk by chunk while every
chunk is passed on at once, so streams are never buffered and the time to the first
token does not change.

Settlement follows the nginx module: a request the app never answered, or answered with
a 5xx, never reached the model (or failed there) and is settled with zero usage, which
refunds its reservation; an answer whose usage cannot be read (a 3xx/4xx, a compressed
or oversized body, a body without usage) keeps the estimate; a stream cut short is
settled with what was seen of it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any, Awaitable, Callable, MutableMapping, Optional

from edgeward._native import Decision, EdgewardError, Engine, RewriteError, Usage, UsageTracker

__all__ = ["Guard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("edgeward")

#: The scope key under which the app finds the request's decision (cost, principal).
DECISION_KEY = "edgeward.decision"


def _error_body(code: str, message: str, status: int) -> bytes:
    """The OpenAI error shape, for answers the middleware makes without a decision."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


def _is_ip(host: object) -> bool:
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Guard:
    """Guards ``app`` with ``engine`` (the embedded default policy when None).

    ``max_body``: the most request body bytes read; a larger request is answered 413
    without being read further (set it at least to the policy's ``maxBodyBytes``).
    ``max_response``: the most of a JSON response kept to read its usage from; larger
    answers pass through and keep the estimate.
    ``identity``: a function of the ASGI scope returning a caller the host has already
    verified (mTLS, a session), passed to the engine as its identity, or None.
    ``request_id``: a function of the scope giving the id that fills the refusal
    template's ``{request_id}``.
    """

    def __init__(
        self,
        app: ASGIApp,
        engine: Optional[Engine] = None,
        *,
        max_body: int = 1 << 20,
        max_response: int = 1 << 20,
        identity: Optional[Callable[[Scope], Optional[str]]] = None,
        request_id: Optional[Callable[[Scope], Optional[str]]] = None,
    ) -> None:
        if max_body < 0 or max_response < 0:
            raise ValueError("max_body and max_response must not be negative")
        self.app = app
        self.engine = engine if engine is not None else Engine.default()
        self.max_body = max_body
        self.max_response = max_response
        self.identity = identity
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        body = await self._read_body(scope, receive, send)
        if body is None:
            return

        engine = self.engine
        uri = scope.get("raw_path") or scope.get("path", "/").encode("utf-8")
        query = scope.get("query_string") or b""
        if query:
            uri = uri + b"?" + query
        client = scope.get("client")
        peer = client[0] if client and _is_ip(client[0]) else None
        identity = self.identity(scope) if self.identity else None
        d = engine.inspect(
            scope.get("method", "GET"),
            uri,
            scope.get("headers") or (),
            body,
            peer=peer,
            identity=identity,
        )

        if not d.allowed:
            await self._refuse(scope, send, d)
            return

        if d.rewrites:
            try:
                rewritten = engine.rewrite_body(d, body)
            except RewriteError as e:
                # The body cannot carry the clamped parameters: never forward it as is,
                # and give back what it reserved.
                self._settle(d, Usage())
                await self._answer(send, 400, _error_body(e.code, "the request body cannot be rewritten", 400))
                return
            if rewritten is not None:
                body = rewritten
                scope = dict(scope)
                scope["headers"] = [
                    (n, v) for n, v in scope.get("headers") or () if n.lower() != b"content-length"
                ] + [(b"content-length", str(len(body)).encode())]

        scope = dict(scope)
        scope[DECISION_KEY] = d
        watcher = _ResponseWatcher(self, d, send)
        try:
            await self.app(scope, _replay(body, receive), watcher.send)
        finally:
            watcher.close()

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> Optional[bytes]:
        """The whole request body, or None when it was answered here (too large) or the
        client went away."""
        for name, value in scope.get("headers") or ():
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._answer(send, 400, _error_body("bad_request", "invalid content-length", 400))
                    return None
                if declared > self.max_body:
                    await self._too_large(send)
                    return None
        chunks = []
        size = 0
        while True:
            message = await receive()
            kind = message.get("type")
            if kind == "http.disconnect":
                return None
            if kind != "http.request":
                continue
            chunk = message.get("body") or b""
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        await self._answer(
            send,
            413,
            _error_body("body_too_large", "request body too large to inspect", 413),
            extra=[(b"connection", b"close")],
        )

    async def _refuse(self, scope: Scope, send: Send, d: Decision) -> None:
        request_id = self.request_id(scope) if self.request_id else None
        body = (self.engine.refusal_body(d, request_id) or "").encode()
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in d.headers]
        await self._answer(
            send,
            d.status or 403,
            body,
            content_type=self.engine.refusal_content_type.encode("latin-1"),
            extra=headers,
        )

    @staticmethod
    async def _answer(
        send: Send,
        status: int,
        body: bytes,
        *,
        content_type: bytes = b"application/json",
        extra: Optional[list[tuple[bytes, bytes]]] = None,
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _settle(self, d: Decision, usage: Any) -> None:
        try:
            self.engine.settle(d, usage)
        except EdgewardError as e:
            # A store outage must not turn an answered request into an error; the
            # reservation expires at the end of its lease.
            log.warning("edgeward: settlement failed (%s): %s", e.code, e)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the (possibly rewritten) body once, then waits on the
    real one (for the app's disconnect detection)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _ResponseWatcher:
    """Wraps the app's ``send``: adds the rate-limit headers, passes every message on at
    once, and reads the response's usage on the side."""

    def __init__(self, guard: Guard, d: Decision, send: Send) -> None:
        self.guard = guard
        self.d = d
        self.downstream = send
        self.status = 0
        self.tracker: Optional[UsageTracker] = None
        self.json: Optional[list[bytes]] = None
        self.kept = 0
        self.settled = False

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            self._start(message)
            headers = list(message.get("headers") or ())
            headers.extend((n.encode("latin-1"), v.encode("latin-1")) for n, v in self.d.headers)
            message = dict(message)
            message["headers"] = headers
            await self.downstream(message)
            return
        if kind == "http.response.body":
            # Forward first: the client sees each chunk before any accounting runs.
            await self.downstream(message)
            self._body(message.get("body") or b"", bool(message.get("more_body", False)))
            return
        await self.downstream(message)

    def _start(self, message: Message) -> None:
        self.status = int(message.get("status", 200))
        if self.status >= 300:
            return  # no usage to read: settled at the end (zero for 5xx, else the estimate)
        content_type = b""
        encoded = False
        for name, value in message.get("headers") or ():
            name = name.lower()
            if name == b"content-type":
                content_type = value.lower()
            elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                encoded = True
        if encoded:
            return  # a compressed answer's usage cannot be read: the estimate stands
        if content_type.startswith(b"text/event-stream"):
            self.tracker = self.guard.engine.usage_tracker(self.d)
        else:
            self.json = []

    def _body(self, chunk: bytes, more: bool) -> None:
        if self.settled:
            return
        if self.tracker is not None:
            if chunk:
                self.tracker.feed(chunk)
        elif self.json is not None and chunk:
            self.kept += len(chunk)
            if self.kept > self.guard.max_response:
                self.json = None  # too large to keep: the estimate stands
            else:
                self.json.append(chunk)
        if not more:
            self._finish(complete=True)

    def _estimate(self) -> Usage:
        c = self.d.cost
        if c is None:
            return Usage(source="partial")
        return Usage(c.prompt_tokens, c.output_tokens_reserved, source="partial")

    def _finish(self, complete: bool) -> None:
        self.settled = True
        d = self.d
        if self.status == 0 or self.status >= 500:
            # Never answered, or the model server failed: refunded.
            self.guard._settle(d, Usage())
            return
        usage: Any = None
        if self.tracker is not None:
            usage = self.tracker.finish()
        elif complete and self.json:
            try:
                usage = self.guard.engine.usage_from_body(d, b"".join(self.json))
            except EdgewardError as e:
                log.info("edgeward: no usage in the response (%s); settled with the estimate", e.code)
        self.guard._settle(d, usage if usage is not None else self._estimate())

    def close(self) -> None:
        """After the app returned or raised: settles what was not settled yet (an app
        that failed before answering, a stream cut short)."""
        if not self.settled:
            self._finish(complete=False)
