"""Errors as RFC 9457 `application/problem+json` documents, mapped in one place.

A registry error's HTTP status follows from the classification the CLI's exit codes use
(`FtdeployError.exit_code`): bad input 422, not found 404, refused by the current state 409, a
broken invariant 500, a retryable failure 503. The `detail` is the error's own message, which
never holds a secret. Anything unexpected is a 500 with a fixed detail: no traceback, no message
of an unknown exception, ever reaches a client (the server log has the traceback).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DataError, InterfaceError, OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.errors import FtdeployError, InvalidInput
from worker.logs import event

log = logging.getLogger("ftdeploy.http")

MEDIA_TYPE = "application/problem+json"
# The CLI's exit codes (registry.errors) and the HTTP status each stands for.
STATUS_BY_EXIT_CODE = {2: 422, 3: 404, 1: 409, 70: 500}
_TITLES = {
    304: "Not modified",
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(BaseModel):
    """An RFC 9457 problem document; some carry more members (`field`, `errors`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


class Unauthorized(Exception):
    """No key, a malformed, unknown or revoked key: 401 with `WWW-Authenticate: Bearer`."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Forbidden(Exception):
    """A valid key whose role is below what the endpoint needs: 403."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def problem(
    status: int,
    detail: str,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
    **members: Any,
) -> JSONResponse:
    title = _TITLES.get(status, "Error")
    body = {
        "type": f"urn:ftdeploy:problem:{kind or title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        **members,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def status_of(error: FtdeployError) -> int:
    """The HTTP status of a registry error: the same classification as its exit code."""
    if error.retryable:
        return 503
    return STATUS_BY_EXIT_CODE.get(error.exit_code, 409)


def _registry_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, FtdeployError)
    status = status_of(error)
    members: dict[str, Any] = {"field": error.field} if isinstance(error, InvalidInput) else {}
    if status >= 500:
        event(log, "http.error", logging.ERROR, path=request.url.path, error=type(error).__name__)
    return problem(status, str(error), _kebab(type(error).__name__), **members)


def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    # Location and message only: pydantic's `input` would echo what the client sent.
    errors = [
        {"loc": [str(part) for part in item.get("loc", ())], "msg": str(item.get("msg", ""))}
        for item in error.errors()
    ]
    shown = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return problem(422, f"invalid request: {shown}{more}", "invalid-request", errors=errors)


def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    detail = error.detail if isinstance(error.detail, str) else _TITLES.get(error.status_code, "")
    if error.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}"
    return problem(error.status_code, detail, headers=error.headers)


def _unauthorized(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, Unauthorized)
    return problem(
        401, error.detail, "unauthorized", headers={"WWW-Authenticate": 'Bearer realm="ftdeploy"'}
    )


def _forbidden(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, Forbidden)
    return problem(403, error.detail, "forbidden")


def _database_error(request: Request, error: Exception) -> JSONResponse:
    event(log, "http.database_error", logging.WARNING, error=type(error).__name__)
    if isinstance(error, OperationalError | InterfaceError):
        return problem(
            503, "database unavailable, retry later", "database-unavailable", {"Retry-After": "1"}
        )
    if isinstance(error, DataError):
        return problem(422, "the database refused a value (out of range?)", "database-refused")
    return problem(409, "the database refused the change", "database-refused")


def _unexpected(request: Request, error: Exception) -> JSONResponse:
    event(log, "http.internal_error", logging.ERROR, error=type(error).__name__)
    return problem(500, "internal error (the server log has the details)", "internal-error")


def install(app: FastAPI) -> None:
    """Register the handlers: the one mapping from errors to problem documents."""
    app.add_exception_handler(FtdeployError, _registry_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these problem statuses, as `application/problem+json`."""
    schema = Problem.model_json_schema()
    return {
        status: {
            "description": _TITLES.get(status, "Error"),
            "content": {MEDIA_TYPE: {"schema": schema}},
        }
        for status in statuses
    }


def common(*extra: int) -> dict[int | str, dict[str, Any]]:
    """What every authorized route may answer besides its success."""
    statuses: Iterable[int] = sorted({400, 401, 403, 413, 422, 503, *extra})
    return documented(*statuses)
