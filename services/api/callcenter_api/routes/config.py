"""/v1/config: the call-handling parameters in `cc:{t}:config` that the Lua steps read.

GET shows the effective values (defaults filled in, `callcenter.store.reads`); PATCH validates and
writes (`callcenter.store.config_writes.patch_config`), so a change applies to the next step of
every dispatcher and api replica (no restart). PATCH is the only writer at run time: the
environment (`CC_WRAPUP_S`, ...) only seeds a config that does not exist yet, at start-up. The
parameters, their ranges and defaults are the registry `callcenter.store.config.CALL_HANDLING`.
This is where the reference's runtime `internal_call_dispatching` switch lives, among others.
"""

from __future__ import annotations

from fastapi import APIRouter

from callcenter.store.config_writes import patch_config as write_changes
from callcenter_api.deps import ServicesDep
from callcenter_api.schemas import ConfigOut, ConfigPatch

router = APIRouter(prefix="/v1/config", tags=["config"])


@router.get("", name="get")
async def get_config(services: ServicesDep) -> ConfigOut:
    """The effective call-handling parameters (a parameter never set shows its default)."""
    return ConfigOut(**await services.reads.config())


@router.patch("", name="update")
async def patch_config(body: ConfigPatch, services: ServicesDep) -> ConfigOut:
    """Change the given parameters; the others are kept; `null` puts one back to its default."""
    await write_changes(services.redis, services.store.keys, body.model_dump(exclude_unset=True))
    return ConfigOut(**await services.reads.config())
