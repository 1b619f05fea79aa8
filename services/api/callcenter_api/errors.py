"""The one map from a refused Lua step to HTTP: `StepRefused` (raised by routes and provisioning
through `callcenter.store.codes.refuse_on`) becomes a status code and `{"detail": message}`.

Reads and writes nothing.
"""

from __future__ import annotations

from fastapi import Request, status
from fastapi.responses import JSONResponse

from callcenter.store.codes import RC, StepRefused

# NOT_FOUND: the thing does not exist; every other refusal is a conflict with the current state
# (INVALID: not allowed in this state; ALREADY / STALE: the state moved on)
HTTP_STATUS = {
    RC.NOT_FOUND: status.HTTP_404_NOT_FOUND,
    RC.INVALID: status.HTTP_409_CONFLICT,
    RC.ALREADY: status.HTTP_409_CONFLICT,
    RC.STALE: status.HTTP_409_CONFLICT,
    RC.DUPLICATE: status.HTTP_409_CONFLICT,
    RC.OUT_OF_ORDER: status.HTTP_409_CONFLICT,
}


async def step_refused(_request: Request, exc: Exception) -> JSONResponse:
    """The exception handler for StepRefused (registered by `create_app`)."""
    if not isinstance(exc, StepRefused):  # registered for StepRefused only; the signature is Starlette's
        raise exc
    return JSONResponse({"detail": exc.message}, status_code=HTTP_STATUS[exc.rc])
