"""Pure ASGI middleware: a request id on every request and response, and the body size limit.

Written against the ASGI interface rather than Starlette's ``BaseHTTPMiddleware``: that one runs
the app in a task of its own and re-streams every response, which cost about a tenth of the
gateway's CPU per request (bench/invoke.py, py-spy).
"""

from __future__ import annotations

import uuid

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.errors import error_response


class RequestContext:
    """Give each request an id (``X-Request-ID`` in, or a new one) and refuse bodies over a limit.

    The limit is checked on ``Content-Length`` before the app is called, and again on the bytes
    actually received, so a chunked body without a length cannot slip past it. Both end as a 413
    in the API's error shape (the second through the handler of ``HTTPException``).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = _clean(headers.get("x-request-id", "")) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.max_body_bytes
        message_ = f"request body over {limit // (1024 * 1024)} MiB"
        length = headers.get("content-length")
        received = 0

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        if length is not None and (not length.isdigit() or int(length) > limit):
            response = error_response(Request(scope), 413, "payload_too_large", message_)
            await response(scope, receive, send_with_id)
            return

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, message_)
            return message

        await self.app(scope, limited_receive, send_with_id)


def _clean(value: str) -> str:
    # Echoed into a response header: printable ASCII only, and short.
    return "".join(c for c in value[:64] if 32 < ord(c) < 127)
