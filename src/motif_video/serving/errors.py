"""Errors as the API returns them: OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.

Every 4xx names what to change: `param` is the request field (`steps`, `image`), the query parameter (`limit`),
the header (`Idempotency-Key`, `Authorization`) or `body` for a body that cannot be read at all.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """A request the service refuses; raised anywhere below a route, answered as JSON by `install_handlers`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str = "invalid_request",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        kind = _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def field_of(loc: tuple | list) -> str:
    """A pydantic error location -> the field a client sent: ('body', 'steps') -> 'steps', ('query', 'limit') ->
    'limit'; nested positions are joined with dots."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_handlers(app: FastAPI) -> None:
    """JSON errors for our ApiError, FastAPI's own validation (query and path parameters), unknown routes and
    methods, and anything unexpected (a 500 that logs the traceback and tells the client nothing internal)."""

    @app.exception_handler(ApiError)
    async def _api(_request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        param = field_of(first.get("loc", ()))
        return ApiError(400, f"{param}: {first.get('msg', 'invalid value')}", param, "invalid_value").response()

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return ApiError(err.status_code, str(err.detail), None, code, err.headers).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error in a request", exc_info=err)
        return ApiError(500, "internal server error", None, "internal_error").response()
