"""State the in-process benchmarks start from: one flow and its agents, written through the Store.

Reads: nothing. Writes: the tenant's config, one flow with welcome and queue media URIs that no
one answers (the benchmarks play the edge's half themselves), `agents` agents of that flow's skill,
logged in and free (ids b00000, b00001, ...), wrap-up 0.
"""

from __future__ import annotations

from callcenter.store import Store

CONFIG = {"wrapup_s": 0, "reject_on_no_agents": 0, "ring_timeout_s": 10}


async def one_flow_with_agents(store: Store, flow: str, agents: int) -> list[str]:
    """Provision `flow` (skill of the same name) and `agents` free agents of it; their ids."""
    await store.write_config(CONFIG)
    await store.flow_upsert(flow, {"skill": flow, "priority": 0, "welcome_uri": "sip:welcome@127.0.0.1:9",
                                   "queue_uri": "sip:queue@127.0.0.1:9"})
    ids = [f"b{a:05d}" for a in range(agents)]
    for agent_id in ids:
        await store.agent_upsert(agent_id, f"sip:{agent_id}@127.0.0.1:9", [flow], None)
        await store.agent_login(agent_id)
    return ids
