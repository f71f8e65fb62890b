"""The OpenAPI document as integrators need it: the bearer scheme on every guarded operation with
the roles it admits, and errors documented as what they are (application/problem+json), listing
only the problems an operation can actually answer with."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.permissions import ORGANISATION_SCOPED, PERMISSIONS, operation_of
from api.problems import PROBLEM_JSON

SCHEME = "bearer"
BODY_PROBLEMS = ("400", "413", "415")


def install(app: FastAPI, routes: list) -> None:
    guarded = {(route.path, method.lower()): operation_of(route) for route in routes for method in getattr(route, "methods", ())}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An access token from the fund's identity provider (OIDC), with the user's "
                "roles and, for intermediaries, their organisation. See the README.",
            }
        }
        for path, methods in schema["paths"].items():
            for method, operation in methods.items():
                permitted = guarded.get((path, method))
                if permitted is not None:
                    roles = sorted(str(r) for r in PERMISSIONS[permitted])
                    scoped = [str(r) for r in ORGANISATION_SCOPED if r in PERMISSIONS[permitted]]
                    note = f"\n\n**Roles:** {', '.join(roles)}" + (
                        f" ({', '.join(scoped)}: own organisation only)" if scoped else ""
                    )
                    operation["description"] = (operation.get("description") or "") + note
                    operation["security"] = [{SCHEME: []}]
                _problems_as_problems(path, method, operation)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def _problems_as_problems(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation.get("responses", {})
    if "requestBody" not in operation:
        for code in BODY_PROBLEMS:
            responses.pop(code, None)
    if "{" not in path:
        responses.pop("404", None)
    if not (path == "/v1/grant-requests" and method == "post"):
        responses.pop("429", None)
    if method == "get":
        responses.pop("409", None)
    if "security" not in operation:
        for code in ("401", "403"):
            responses.pop(code, None)
    for code, response in responses.items():
        if code.startswith(("4", "5")):
            content = response.get("content", {})
            schema = content.get("application/json", {}).get("schema") or content.get(PROBLEM_JSON, {}).get("schema")
            if schema:
                response["content"] = {PROBLEM_JSON: {"schema": schema}}
