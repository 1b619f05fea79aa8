"""/v1/config: the call-handling parameters in `cc:{t}:config` that the Lua steps read.

GET shows the effective values (defaults filled in); PATCH validates and writes, so a change
applies to the next step of every dispatcher and api replica (no restart). This is where the
reference's runtime `internal_call_dispatching` switch lives, among others.
"""

from __future__ import annotations

from fastapi import APIRouter

from callcenter_api import readings
from callcenter_api.deps import ServicesDep
from callcenter_api.schemas import ConfigOut, ConfigPatch

router = APIRouter(prefix="/v1/config", tags=["config"])


@router.get("")
async def get_config(services: ServicesDep) -> ConfigOut:
    """The effective call-handling parameters (a parameter never set shows its default)."""
    return await readings.read_config(services.store)


@router.patch("")
async def patch_config(body: ConfigPatch, services: ServicesDep) -> ConfigOut:
    """Change the given parameters; the others are kept; `null` puts one back to its default.
    The parameters marked so are also written by a dispatcher at start-up when its environment sets
    them explicitly (CC_WRAPUP_S, ...): leave those unset there to manage them here."""
    return await readings.patch_config(services.store, body.model_dump(exclude_unset=True))
