"""The api's OpenAPI document: stable operation ids, and the errors each operation can really answer.

`operation_id` (FastAPI's `generate_unique_id_function`) names every operation `<tag>_<route name>`
(`agents_login`, `flows_update`): routes set `name=` to the action, so the id never changes when a
handler is renamed. `install(app)` replaces `app.openapi` with a document where each operation
declares, as an RFC 9457 problem (`application/problem+json`, schema `Problem`):

- 401 and 403 on every authenticated operation (every /v1 one), 503 where Redis or SQL is used;
- 404 where a path id is looked up (or the route declares it), 409 where a step can refuse (the
  route declares it; every POST too: an `Idempotency-Key` still in flight), 412 where the route
  takes `If-Match`, 413 where there is a body, 422 where there is a body or a parameter;

and every POST gets the `Idempotency-Key` header (`callcenter_api.idempotency`). Reads and writes nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from callcenter_api.errors import MEDIA_TYPE, PROBLEM_SCHEMA
from callcenter_api.idempotency import HEADER as IDEMPOTENCY_HEADER
from callcenter_api.idempotency import KEY_PATTERN

# what each declared error means, when a route does not say more
ERRORS: dict[str, str] = {
    "401": "no credentials, or a key or token that is unknown, revoked or expired",
    "403": "the key's role, or the agent it acts for, may not call this operation",
    "404": "the resource named in the path does not exist",
    "409": "refused in the current state, or an Idempotency-Key whose first request is still running",
    "412": "If-Match does not name the current version (ETag) of the resource",
    "413": "the request body is larger than CC_API_MAX_BODY_BYTES",
    "422": "the request is not valid (body, parameters, or an Idempotency-Key reused for another request)",
    "503": "Redis or the SQL database is unavailable: retry later",
}
AUTHENTICATED = "/v1/"


def operation_id(route: APIRoute) -> str:
    """`<first tag>_<route name>`, in snake case: readable and stable."""
    tag = str(route.tags[0]) if route.tags else "api"
    return f"{tag}_{route.name}".replace("-", "_")


def _errors_of(path: str, method: str, operation: dict[str, Any]) -> set[str]:
    codes: set[str] = set()
    if path.startswith(AUTHENTICATED):
        codes |= {"401", "403", "503"}
    if "{" in path:
        codes.add("404")
    if operation.get("requestBody"):
        codes |= {"413", "422"}
    if operation.get("parameters"):
        codes.add("422")
    if method == "post" and path.startswith(AUTHENTICATED):
        codes |= {"409", "422"}
    return codes


def _idempotency_parameter() -> dict[str, Any]:
    return {"name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
            "description": "a client-chosen key (1-255 visible ASCII characters): the same request sent again "
                           "with the same key has one effect and gets the first answer again (header "
                           "Idempotent-Replayed: true), for 24 hours; the same key with another request is a 422",
            "schema": {"type": "string", "pattern": KEY_PATTERN, "maxLength": 255}}


def document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of `app` with the errors and headers above."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    content = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if method == "post" and path.startswith(AUTHENTICATED):
                operation.setdefault("parameters", []).append(_idempotency_parameter())
            responses = operation.setdefault("responses", {})
            for code in sorted(_errors_of(path, method, operation)):
                responses.setdefault(code, {"description": ERRORS[code]})
            for code, response in responses.items():
                if code[:1] in ("4", "5"):
                    response["content"] = content
    for unused in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(unused, None)
    return schema


def install(app: FastAPI) -> None:
    """Serve `document(app)` (built once) as the app's OpenAPI document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

