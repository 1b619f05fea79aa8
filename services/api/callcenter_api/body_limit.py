"""A cap on request bodies, as pure ASGI middleware: a body over `max_bytes` gets 413 (a problem,
`body-too-large`) before it is read whole.

A declared Content-Length over the cap is refused before the app runs; otherwise the body stream
is counted as the app reads it, and reading stops at the first chunk past the cap. Reads and
writes nothing but the request and response.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callcenter_api.errors import problem


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the stream passes the cap. An HTTPException, so FastAPI's body
    reading lets it through (it turns other errors into 400) and the problem handler answers it."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes")


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 before it is read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:  # raised where no handler answered it (e.g. outside a FastAPI route)
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "body-too-large", f"the request body is larger than {self.max_bytes} bytes",
                           headers={"connection": "close"})
        await response(scope, receive, send)
