"""An edge with its registrar on a real redis-server, SIPp REGISTER runs with credentials, and a
hand-written REGISTER client over UDP (for what SIPp cannot do: SHA-256, replays, floods).

Reads: tests/sipp/register_*.xml. Writes: SIPp traces under the test's directory.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from sip_harness import SCENARIOS, SippProcess, free_udp_port, sipp_command

from callcenter.sip_credentials import credentials
from callcenter.store import Store
from callcenter_dev import register_client
from callcenter_dev.register_client import Response
from callcenter_sip_edge.digest import Nonces
from callcenter_sip_edge.log_limits import RateLimitedLog
from callcenter_sip_edge.registrations import Registrations

DOMAIN = "callcenter.test"
REALM = "callcenter"
TENANT = "reg"


async def provision(store: Store, agent_id: str, password: str, *, registration_required: bool = False,
                    uri: str | None = None) -> None:
    """An agent whose URI is its AOR, with a SIP password (as the api stores it: HA1s only)."""
    await store.agent_upsert(agent_id, uri or f"sip:{agent_id}@{DOMAIN}", ["sales"], None)
    await store.redis.hset(store.keys.sip_auth(agent_id), mapping={
        **credentials(agent_id, REALM, password), "registration_required": "1" if registration_required else "0"})


def start_register(workdir: Path, scenario: str, edge_port: int, agent_id: str, password: str, *,
                   expires: int = 120, keys: dict[str, str] | None = None, port: int | None = None) -> SippProcess:
    """SIPp running tests/sipp/<scenario>.xml once against the edge, with -au/-ap credentials."""
    port = port or free_udp_port()
    run_dir = workdir / f"sipp-{scenario}-{agent_id}-{port}"
    run_dir.mkdir(parents=True, exist_ok=True)
    options = ["-sf", str(SCENARIOS / f"{scenario}.xml"), "-au", agent_id, "-ap", password,
               "-key", "expires", str(expires)]
    for name, value in (keys or {}).items():
        options += ["-key", name, value]
    cmd = sipp_command(options, port, service=agent_id, pause_ms=None, remote_port=edge_port)
    proc = subprocess.Popen(cmd, cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return SippProcess(name=scenario, port=port, workdir=run_dir, proc=proc)


class RegisterClient(register_client.RegisterClient):
    """The devtools client, its network calls off the event loop."""

    async def send(self, data: bytes) -> Response:  # type: ignore[override]
        return await asyncio.to_thread(super().send, data)

    async def register(self, **kwargs: Any) -> Response:  # type: ignore[override]
        return await asyncio.to_thread(super().register, **kwargs)


def registrations(redis: object, options: object, nonces: Nonces | None = None,
                  limited_log: RateLimitedLog | None = None) -> Registrations:
    from callcenter_sip_edge.registrar import RegistrarOptions

    assert isinstance(options, RegistrarOptions)
    return Registrations(redis, TENANT, "edge-reg", options,  # type: ignore[arg-type]
                         nonces or Nonces(options.nonce_secret, options.nonce_ttl_s), limited_log)


class LogRecorder:
    """A logger that keeps what it was asked to log: (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.records.append((level, event, fields))

    def count(self, event: str, **match: Any) -> int:
        return sum(1 for _, e, f in self.records if e == event and all(f.get(k) == v for k, v in match.items()))
