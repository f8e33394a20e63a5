"""RFC 9457 problem details for every error (API.md "Conventions")."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from twofold.domain.errors import RateLimited, TwofoldError
from twofold.services.crypto import SealedValueError

logger = logging.getLogger("twofold.web")

PROBLEM_JSON = "application/problem+json"
_STATUS_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("validation_error", "Invalid request"),
    429: ("rate_limited", "Too many requests"),
    503: ("unavailable", "Service temporarily unavailable"),
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": f"urn:twofold:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail or title,
        "code": code,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def from_error(error: TwofoldError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, RateLimited) else None
    if error.status == 503:
        headers = {"Retry-After": "2"}  # as for a database that stays locked or unreachable
    if error.status == 401 and error.code == "unauthenticated":
        headers = {"WWW-Authenticate": 'Bearer realm="twofold"'}
    return problem(error.status, error.code, error.title, error.detail, headers=headers, **error.extra)


def _validation_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo the input back: it may be a password or a code.
    found = []
    for item in error.errors()[:20]:
        location = [str(part) for part in item.get("loc", ())]
        found.append({"location": location, "message": str(item.get("msg", "invalid"))[:200]})
    return found


def install(app: FastAPI) -> None:
    @app.exception_handler(TwofoldError)
    async def _twofold(_: Request, error: TwofoldError) -> Response:
        return from_error(error)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> Response:
        return problem(
            422,
            "validation_error",
            "Invalid request",
            "the request body or parameters are invalid",
            errors=_validation_errors(error),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> Response:
        code, title = _STATUS_CODES.get(error.status_code, ("error", "Request failed"))
        detail = error.detail if isinstance(error.detail, str) else title
        return problem(error.status_code, code, title, detail, headers=getattr(error, "headers", None))

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _unavailable(_: Request, error: Exception) -> Response:
        logger.warning("database unavailable: %s", error.__class__.__name__)
        return problem(
            503,
            "unavailable",
            "Service temporarily unavailable",
            "the database is busy or unreachable; try again shortly",
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, error: DBAPIError) -> Response:
        if error.connection_invalidated or isinstance(error, OperationalError):
            return await _unavailable(_, error)
        logger.error("database error: %s", error.__class__.__name__)
        return problem(503, "unavailable", "Service temporarily unavailable", headers={"Retry-After": "2"})

    @app.exception_handler(DataError)
    async def _unstorable(_: Request, error: DataError) -> Response:
        # The database refused a value the client sent (PostgreSQL: a NUL character in text, which
        # SQLite stores): the request is at fault, so a 422 rather than a 5xx (SECURITY.md "Bad input").
        logger.warning("value refused by the database: %s", error.orig.__class__.__name__)
        return problem(422, "validation_error", "Invalid request", "a value in the request cannot be stored")

    @app.exception_handler(SealedValueError)
    async def _sealed(_: Request, error: SealedValueError) -> Response:
        logger.error("a secret at rest could not be opened: %s", error)
        return problem(503, "unavailable", "Service misconfigured", "a secret at rest cannot be read with this key")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> Response:
        logger.exception("unexpected error")
        return problem(500, "internal_error", "Internal error", "the server could not answer this request")
