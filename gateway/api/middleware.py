"""Pure ASGI middleware: a request id on every request and response, the body size limit, and the
security headers of every response.

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
from gateway.services.auth_failures import FailureLimiter, Guard, current

# What a browser may do with our responses: API data is never a document, pages load only the
# gateway's own assets. The interactive API docs (/docs, /redoc) are FastAPI's, with their inline
# bootstrap script: they get no policy of ours.
_API_POLICY = b"default-src 'none'; frame-ancestors 'none'"
_PAGE_POLICY = (b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_OWN_DOCS = ("/docs", "/redoc")


def security_headers(path: str, authenticated: bool, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response's headers with ours added (never over one the route set itself)."""
    present = {name.lower() for name, _ in headers}
    extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
    if authenticated and b"cache-control" not in present:
        extra.append((b"cache-control", b"no-store"))  # a user's own data stays out of shared caches
    if b"content-security-policy" not in present and not path.startswith(_OWN_DOCS):
        kind = next((value for name, value in headers if name.lower() == b"content-type"), b"")
        extra.append((b"content-security-policy", _PAGE_POLICY if kind.startswith(b"text/html") else _API_POLICY))
    return [*headers, *(pair for pair in extra if pair[0] not in present)]


class RequestContext:
    """Give each request an id (``X-Request-ID`` in, or a new one) and refuse bodies over a limit.

    It also tells the authentication code which client sends the request and which limiter of
    failed attempts counts it (``gateway.services.auth_failures``). The body limit is checked on
    ``Content-Length`` before the app is called, and again on the bytes actually received, so a
    chunked body without a length cannot slip past it. Both end as a 413 in the API's error shape
    (the second through the handler of ``HTTPException``).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, limiter: FailureLimiter | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limiter = limiter or FailureLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = _clean(headers.get("x-request-id", "")) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        client = scope.get("client")
        current.set(Guard(self.limiter, client[0] if client else None))  # failed authentications, per client
        limit = self.max_body_bytes
        message_ = f"request body over {limit // (1024 * 1024)} MiB"
        length = headers.get("content-length")
        received = 0

        authenticated = "authorization" in headers or "cookie" in headers
        path = str(scope.get("path", ""))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = security_headers(
                    path, authenticated, [*message.get("headers", ()), (b"x-request-id", request_id.encode())])
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
