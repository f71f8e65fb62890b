"""Errors as RFC 9457 problem details (application/problem+json), machine-readable and clear."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable request",
    429: "Too many requests",
    503: "Service unavailable",
}


class FieldError(BaseModel):
    field: str
    message: str


class ProblemBody(BaseModel):
    """The shape of every error response."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


# Documented on every route: what can go wrong, each as a problem body.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ProblemBody, "content": {PROBLEM_JSON: {}}, "description": TITLES[code]}
    for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}


class Problem(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.errors = errors
        self.headers = headers


def problem_response(
    status: int, kind: str, detail: str, *, instance: str | None = None, errors=None, headers=None
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:haven:problem:{kind}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # Pydantic names the branch of a union or a constrained type in the location; readers
    # want only the field's path.
    parts = [p for p in parts if not p.startswith(("constrained-", "function-"))]
    return ".".join(parts) or "body"


def validation_errors(error: RequestValidationError) -> tuple[int, str, list[dict[str, str]]]:
    errors = error.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed-json", [{"field": "body", "message": "the body is not valid JSON"}]
    return 422, "validation-error", [{"field": _field(tuple(e["loc"])), "message": e["msg"]} for e in errors]


METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method the request's path answers to. Starlette's 405 names only the methods of the
    first route whose path matched, so `POST /v1/grant-requests` and `GET /v1/grant-requests`,
    two routes, would each deny the other (RFC 9110 §15.5.6: `Allow` lists the target's methods)."""
    routes = request.app.router.routes
    allowed = [m for m in METHODS if any(route.matches({**request.scope, "method": m})[0] is Match.FULL for route in routes)]
    return ", ".join(allowed)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status, exc.kind, exc.detail, instance=request.url.path, errors=exc.errors, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, kind, errors = validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(status, kind, detail, instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return problem_response(exc.status_code, kind, str(exc.detail), instance=request.url.path, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never echo the exception: it could carry a defender's data.
        log.error("unhandled_error", path=request.url.path, error=type(exc).__name__)
        return problem_response(500, "internal-error", "an internal error occurred; it has been logged", instance=request.url.path)
