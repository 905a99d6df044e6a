"""The guards in front of the routes: the API key and the request-size limit.

* API key: when the service has one, every /v1 route wants `Authorization: Bearer KEY` (compared in constant
  time); the page at / and /healthz stay open (they hold no job data).
* Size: a body is refused with 413 once it passes the limit, by its Content-Length before anything is read, or
  while it streams in when it has none; so nothing larger than the limit is ever held in memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from motif_video.serving.errors import ApiError


def bearer_check(api_key: str | None) -> Callable[[Request], None]:
    """A dependency that refuses requests without the key (nothing when the service has no key)."""
    expected = None if api_key is None else api_key.encode()

    def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected):
            raise ApiError(
                401,
                "Authorization: send 'Authorization: Bearer KEY' with this server's API key",
                "Authorization",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )

    return check


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._error()  # answered by the app's ApiError handler
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._error().response()(scope, receive, send)

    def _error(self) -> ApiError:
        return ApiError(413, f"the request body is over this server's limit of {self.limit} bytes", "body", "too_large")
