"""Every error of the api as an RFC 9457 problem: `application/problem+json` with `type`, `title`,
`status` and `detail`, plus extension members where a cause has more to say (`errors` of a 422).

`type` is `PROBLEM_TYPES` + a cause from `CAUSES`: stable, so a client matches on it rather than
on the wording of `detail` (the causes are listed in services/api/README.md, "Errors"). An HTTP
error with no cause of ours is `about:blank` with the status phrase as title, as RFC 9457 says.

A refused Lua step (`StepRefused`, raised by routes and provisioning through
`callcenter.store.codes.refuse_on`) maps to a status and a cause here, once. A 422 never echoes
a client's value whole: each error carries at most an `EXCERPT_CHARS` excerpt of its input.

Reads and writes nothing; `install` registers the handlers on an app.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from callcenter.logs import excerpt as cut
from callcenter.store.codes import RC, StepRefused

log = structlog.get_logger(__name__)

PROBLEM_TYPES = "urn:callcenter:problem:"  # a name, not a page: one per cause, never renamed
MEDIA_TYPE = "application/problem+json"
# a client's value is echoed in a 422 at most this long (a 10 MB body never comes back whole)
EXCERPT_CHARS = 64
# a 422 lists at most this many errors (errors_total says how many there were)
MAX_ERRORS = 20

# cause -> title. Add causes, never rename one: clients match on the type URI.
CAUSES: dict[str, str] = {
    "not-found": "Not found",
    "invalid-state": "Not allowed in the current state",
    "already-done": "Already done",
    "stale": "The state moved on",
    "duplicate": "Duplicate",
    "out-of-order": "Out of order",
    "overflow-cycle": "Overflow cycle",
    "validation-failed": "The request is not valid",
    "body-too-large": "Request body too large",
    "method-not-allowed": "Method not allowed",
    "redis-unavailable": "Redis is unavailable",
    "sql-unavailable": "The SQL database is unavailable",
    "not-ready": "Not ready",
    "internal-error": "Internal error",
    "precondition-failed": "The resource changed since you read it",
    "idempotency-key-reused": "Idempotency-Key reused for another request",
    "idempotency-in-progress": "A request with this Idempotency-Key is still running",
    "webhook-url-refused": "This URL cannot receive webhooks",
}

# NOT_FOUND: the thing does not exist; every other refusal is a conflict with the current state
# (INVALID: not allowed in this state; ALREADY / STALE: the state moved on)
STEP_PROBLEMS: dict[RC, tuple[int, str]] = {
    RC.NOT_FOUND: (status.HTTP_404_NOT_FOUND, "not-found"),
    RC.INVALID: (status.HTTP_409_CONFLICT, "invalid-state"),
    RC.ALREADY: (status.HTTP_409_CONFLICT, "already-done"),
    RC.STALE: (status.HTTP_409_CONFLICT, "stale"),
    RC.DUPLICATE: (status.HTTP_409_CONFLICT, "duplicate"),
    RC.OUT_OF_ORDER: (status.HTTP_409_CONFLICT, "out-of-order"),
}

# HTTP errors raised by routes or by Starlette itself (unknown route, wrong method, body cap)
_HTTP_CAUSES = {404: "not-found", 405: "method-not-allowed", 412: "precondition-failed", 413: "body-too-large",
                422: "validation-failed", 503: "not-ready"}


class ProblemResponse(JSONResponse):
    """A JSON response with the RFC 9457 media type."""

    media_type = MEDIA_TYPE


def problem(status_code: int, cause: str | None, detail: str, *, headers: Mapping[str, str] | None = None,
            extensions: Mapping[str, Any] | None = None) -> ProblemResponse:
    """A problem response; `cause` None is `about:blank` (the title is then the status phrase).
    `extensions` are members of their own (RFC 9457 §3.2), e.g. a 422's `errors`."""
    if cause is None:
        body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status_code).phrase}
    else:
        body = {"type": PROBLEM_TYPES + cause, "title": CAUSES[cause]}
    body.update(extensions or {})
    body.update(status=status_code, detail=detail)
    return ProblemResponse(body, status_code=status_code, headers=headers)


def excerpt(value: Any) -> Any:
    """A JSON-safe, short stand-in for a client's value: small numbers, booleans and null as they
    are; anything else as text of at most EXCERPT_CHARS characters (NaN, a long string, a map)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 2**53:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=repr)  # NaN and Infinity come out as in the request
        except (ValueError, RecursionError):
            text = repr(value)
    return cut(text, EXCERPT_CHARS)


def _error_item(error: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"loc": [excerpt(part) for part in error.get("loc", ())],
                            "msg": str(error.get("msg", ""))[:200], "type": str(error.get("type", ""))}
    if "input" in error:
        item["input"] = excerpt(error["input"])
    return item


def _where(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc[1:] or loc) or "body"


async def validation_failed(_request: Request, exc: Exception) -> ProblemResponse:
    """422 with `errors` (loc, msg, type, an excerpt of the input): FastAPI's validation errors."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    items = [_error_item(e) for e in errors[:MAX_ERRORS]]
    detail = "; ".join(f"{_where(i['loc'])}: {i['msg']}" for i in items[:3]) or "the request is not valid"
    return problem(422, "validation-failed", detail, extensions={"errors": items, "errors_total": len(errors)})


class OverflowCycle(Exception):
    """A flow would overflow in a cycle; `cycle` is the flow ids, first and last the flow itself."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__(f"flow {self.cycle[0]!r} would overflow in a cycle: {' -> '.join(self.cycle)}")


async def overflow_cycle(_request: Request, exc: Exception) -> ProblemResponse:
    """409 with `cycle`: the exception handler for OverflowCycle."""
    if not isinstance(exc, OverflowCycle):
        raise exc
    return problem(status.HTTP_409_CONFLICT, "overflow-cycle", str(exc), extensions={"cycle": exc.cycle})


async def step_refused(_request: Request, exc: Exception) -> ProblemResponse:
    """The exception handler for StepRefused (registered by `install`)."""
    if not isinstance(exc, StepRefused):  # registered for StepRefused only; the signature is Starlette's
        raise exc
    code, cause = STEP_PROBLEMS[exc.rc]
    return problem(code, cause, exc.message)


async def http_error(_request: Request, exc: Exception) -> ProblemResponse:
    """Routes' HTTPException (404 ...) and Starlette's own (unknown route, wrong method)."""
    if not isinstance(exc, HTTPException):
        raise exc
    return problem(exc.status_code, _HTTP_CAUSES.get(exc.status_code), str(exc.detail), headers=exc.headers)


async def redis_down(_request: Request, exc: Exception) -> ProblemResponse:
    log.warning("api.redis_unavailable", error=repr(exc))
    return problem(status.HTTP_503_SERVICE_UNAVAILABLE, "redis-unavailable", "redis is unavailable, retry later")


async def sql_down(_request: Request, exc: Exception) -> ProblemResponse:
    log.warning("api.sql_unavailable", error=type(exc).__name__)  # its text may hold the statement
    return problem(status.HTTP_503_SERVICE_UNAVAILABLE, "sql-unavailable",
                   "the SQL database is unavailable, retry later")


async def internal_error(_request: Request, _exc: Exception) -> ProblemResponse:
    # the traceback is logged by the server; the client learns nothing about the inside
    return problem(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal-error", "an internal error; see the api's log")


Handler = Callable[[Request, Exception], Coroutine[Any, Any, ProblemResponse]]
HANDLERS: dict[type[Exception], Handler] = {
    RequestValidationError: validation_failed,
    StepRefused: step_refused,
    OverflowCycle: overflow_cycle,
    HTTPException: http_error,
    RedisConnectionError: redis_down,
    RedisTimeoutError: redis_down,
    OperationalError: sql_down,
    Exception: internal_error,
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `type` is stable per cause (" + PROBLEM_TYPES + "<cause>)",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "description": "422 only: what failed where, with a short input excerpt",
                   "items": {"type": "object"}},
        "errors_total": {"type": "integer", "description": "422 only: errors found (at most 20 are listed)"},
        "cycle": {"type": "array", "items": {"type": "string"},
                  "description": "overflow-cycle only: the flow ids of the cycle, first and last the flow itself"},
    },
}


def install(app: FastAPI) -> None:
    """Register the problem handlers of every error on `app` (`callcenter_api.openapi` declares them)."""
    for exc_type, handler in HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
