"""The server's one error funnel: every XSearchError (and FastAPI's own errors) becomes a JSON ``{"error": "..."}``
with the HTTP status of its class."""
from __future__ import annotations

import logging

from ..errors import (BadInput, DimensionMismatch, EncoderMismatch, MissingCollection, MissingDependency, MissingItem,
                      ModelLoadError, SchemaTooNew, UnknownEncoder, XSearchError)
from .uploads import PayloadTooLarge

log = logging.getLogger("xsearch.server")


class Unauthorized(XSearchError):
    """No or a wrong bearer token (HTTP 401)."""


class Forbidden(XSearchError):
    """The request is understood but not allowed: a file that left its indexed folder, a foreign Host (HTTP 403)."""


STATUS: dict[type, int] = {  # most specific first: the first class in an exception's MRO found here wins
    PayloadTooLarge: 413,
    Unauthorized: 401,
    Forbidden: 403,
    MissingCollection: 404,
    MissingItem: 404,
    BadInput: 400,
    DimensionMismatch: 400,
    EncoderMismatch: 409,
    SchemaTooNew: 409,
    UnknownEncoder: 500,
    ModelLoadError: 503,
    MissingDependency: 503,
}


def status_of(exc: XSearchError) -> int:
    """The HTTP status of an XSearchError (500 for a class not in the table)."""
    return next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 500)


def install(app) -> None:
    """Register the exception handlers on a FastAPI app."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def body(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(XSearchError)
    async def xsearch_error(_request, exc: XSearchError):
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return body(status, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return body(400, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return body(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(_request, exc: Exception):
        log.exception("internal error")
        first = str(exc).splitlines()[0] if str(exc) else ""
        return body(500, f"internal error: {type(exc).__name__}: {first}")
