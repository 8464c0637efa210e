"""Plain ASGI middleware of the API: the body limit (413), and one-line errors and metrics around every request."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alo.errors import one_line
from apps.http.errors import ApiError

logger = logging.getLogger("apps.http")
# Read and drop at most this much of a body declared over the limit before answering 413: a client still sending
# it would otherwise lose the answer to a broken pipe (the server closes the connection on an unread body).
DRAIN_BYTES = 16 * 1024 * 1024


class HttpMiddleware:
    """Plain ASGI middleware: anything but an HTTP request passes through; requests go to :meth:`handle`."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one ASGI call.

        Args:
            scope: ASGI scope.
            receive: ASGI receive.
            send: ASGI send.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle an HTTP request (subclasses)."""
        raise NotImplementedError


class BodyLimit(HttpMiddleware):
    """Refuse request bodies over a size with 413, whether or not they declare their length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, counting its body; answer 413 once it is over the limit."""
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if int(declared) <= self.limit + DRAIN_BYTES:
                await _drain(receive)
            await _too_large(self.limit, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLargeError:
            await _too_large(self.limit, send)


class Observe(HttpMiddleware):
    """One-line errors and metrics around the app, as plain ASGI (no per-request task group).

    Args:
        app: The app.
        metrics: The request counter, the latency histogram and the error counter.
        routes: The paths counted under their own label (the rest count as ``other``).
    """

    def __init__(self, app: ASGIApp, metrics: tuple[Counter, Histogram, Counter], routes: Collection[str]) -> None:
        self.app = app
        self.routes = routes
        self.requests, self.latency, self.errors = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, answer an escaped error in one line, count the request and its latency."""
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in self.routes else "other"
        status, answered = 500, False

        async def sending(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except ApiError as exc:
            await JSONResponse({"error": str(exc)}, exc.status)(scope, receive, sending)
        except Exception as exc:  # one line, never a stack trace
            logger.exception("request failed")
            if not answered:
                error = JSONResponse({"error": f"internal error {one_line(exc.__class__.__name__)}"}, 500)
                await error(scope, receive, sending)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)
        if status >= 400:
            self.errors.labels(str(status)).inc()


class _BodyTooLargeError(Exception):
    pass


async def _drain(receive: Receive) -> None:
    """Read a request's body to its end (the caller bounds its declared size), dropping it."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _too_large(limit: int, send: Send) -> None:
    response = JSONResponse(
        {"error": f"request body over {limit // (1024 * 1024)} MB; send fewer or smaller images"}, 413
    )
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
