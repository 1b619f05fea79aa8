"""Redis key and stream names of one tenant.

Every key of a tenant starts with `cc:{<tenant>}:`: the braces are a Redis Cluster hash tag, so
all keys of one tenant live in one slot and every Lua script touches a single slot. This module is
the one list: `NAMES` and `FAMILIES` below are rendered into the Lua prelude (`K.<name>` and
`k_<family>(...)`, see `callcenter.store.prelude`), so the Lua never spells a key itself.

    cc:{t}:config                 hash   call-handling parameters (wrap-up, ring timeout, ...)
    cc:{t}:flows                  set    flow ids
    cc:{t}:flow:<id>              hash   flow definition (skill, priority, media URIs)
    cc:{t}:skill:<skill>:flows    set    flows that need this skill
    cc:{t}:skill:<skill>:logged   set    logged-in agents with this skill
    cc:{t}:skill:<skill>:logged:<media>  set  those of them that take audio calls / chats
    cc:{t}:skill:<skill>:free     zset   free agents with this skill and an audio URI, score = idle since (ms)
    cc:{t}:skill:<skill>:chat     zset   agents with this skill and a free chat slot,
                                         score = ongoing chats * 1e13 + last change (ms)
    cc:{t}:stats                  hash   reset_ms: when the counters were last reset
    cc:{t}:stats:flow:<flow>      hash   a flow's counters and on-hold gauge, and its handle-time average
    cc:{t}:statflows              set    the flows whose counters make the tenant's totals (their sum):
                                         every flow upserted since the last reset, deleted ones too
    cc:{t}:sl:<flow>:<minute>     hash   service-level counts of one minute (ms // 60000), kept 62 min
    cc:{t}:agents                 set    agent ids
    cc:{t}:agent:<id>             hash   agent definition and runtime state
    cc:{t}:agentchats:<id>        set    ids of the chats an agent holds (offered or connected)
    cc:{t}:call:<id>              hash   one call's state
    cc:{t}:calls                  set    ids of calls not yet ended
    cc:{t}:edge:<edge>:calls      set    ids of calls not yet ended that this sip-edge owns
    cc:{t}:edge:<edge>:dialogs    set    ids of the calls this sip-edge checkpointed (its own index, TTL max_call_s
                                         after its last arrival at least, renewed once a minute at most)
    cc:{t}:dialog:<id>            hash   a sip-edge's checkpoint of one call: last report seq, phase and,
                                         once talking, its legs' dialogs (deleted at call_ended, TTL max_call_s)
    cc:{t}:edge:<edge>:lease      string the token of the one process that holds this edge id
                                         (expires after the lapse unless its heartbeat renews it)
    cc:{t}:edge:<edge>:published  string the token of the last report batch this sip-edge applied (its
                                         exactly-once marker, `callcenter.redis_durability`; EX one day)
    cc:{t}:edge:<edge>:info       hash   group (its address group, CC_EDGE_GROUP), lost_ms (declared lost
                                         then: told to the edge by its next beat, which deletes it)
    cc:{t}:edgegroup:<group>      set    the edge ids of one address group (edges that share one SIP address)
    cc:{t}:queue:<flow>           zset   waiting audio calls of a flow, lowest score served first
    cc:{t}:chatq:<flow>           zset   waiting chats of a flow, same order
    cc:{t}:timers                 zset   due timers, member "<kind>|<id>[|<token>]", score = due (ms)
    cc:{t}:timer_sleep            string when the dispatchers' timer loop that looked last looks again (ms):
                                         the first due timer or its longest sleep, set by fire_timers.lua
    cc:{t}:timer_wake             list   a wake-up for the timer loops: pushed (one element at most) by a
                                         step that adds a timer due before timer_sleep, emptied by
                                         fire_timers.lua
    cc:{t}:edges                  zset   sip-edge heartbeats, score = last beat (ms)
    cc:{t}:reports                stream facts reported by sip-edges, read by the dispatchers
    cc:{t}:commands:<edge>        stream commands for one sip-edge
    cc:{t}:events                 stream every state change: the product event stream
    cc:{t}:dead                   stream entries that could not be handled (dead letters)
    cc:{t}:retention              hash   the stream fuse's counts (`callcenter.retention`): capped:<stream>,
                                         capped_unread:<stream>
    cc:{t}:retention:fuse:<key>   string a short lock: one process blows a stream's fuse at a time (PX 2 s)
    cc:{t}:idem:<digest>          string the api's record of one Idempotency-Key (its answer), with a TTL
    cc:{t}:sipauth:<agent>        hash   an agent's SIP digest credentials (HA1 per algorithm, realm) and
                                         whether its login needs a live registration: provisioning
    cc:{t}:aor:<agent>            zset   the contacts registered for an agent's AOR, score = expiry (ms);
                                         PEXPIREd at its last contact's expiry
    cc:{t}:aor:<agent>:bindings   hash   contact key -> the binding (JSON: uri, q, instance, received,
                                         transport, path, edge, call_id, cseq); same deadline
    cc:{t}:registrations          zset   agents with a registration, score = when its last contact lapses
                                         (ms): the lapse timer (registration_lapse.lua)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# single keys of a tenant: attribute `Keys.<name>`, `K.<name>` in Lua
NAMES: tuple[str, ...] = ("config", "flows", "agents", "calls", "timers", "edges", "reports", "events", "dead",
                          "stats", "retention", "registrations", "statflows", "timer_sleep",
                          "timer_wake")

# key families, name -> template after the prefix ({0}, {1}: the arguments in order);
# method `Keys.<name>(...)`, function `k_<name>(...)` in Lua
FAMILIES: dict[str, str] = {
    "flow": "flow:{0}",
    "agent": "agent:{0}",
    "call": "call:{0}",
    "queue": "queue:{0}",
    "chat_queue": "chatq:{0}",
    "skill_chat": "skill:{0}:chat",
    "agent_chats": "agentchats:{0}",
    "skill_flows": "skill:{0}:flows",
    "skill_logged": "skill:{0}:logged",
    "skill_serving": "skill:{0}:logged:{1}",
    "skill_free": "skill:{0}:free",
    "edge_calls": "edge:{0}:calls",
    "edge_lease": "edge:{0}:lease",
    "edge_dialogs": "edge:{0}:dialogs",
    "edge_info": "edge:{0}:info",
    "edge_published": "edge:{0}:published",
    "edge_group": "edgegroup:{0}",
    "dialog": "dialog:{0}",
    "commands": "commands:{0}",
    "flow_stats": "stats:flow:{0}",
    "sl": "sl:{0}:{1}",
    "idempotency": "idem:{0}",
    "sip_auth": "sipauth:{0}",
    "aor": "aor:{0}",
    "aor_bindings": "aor:{0}:bindings",
}


class Keys:
    """Key names for one tenant."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.prefix = f"cc:{{{tenant}}}:"
        self.config = self.prefix + "config"
        self.flows = self.prefix + "flows"
        self.agents = self.prefix + "agents"
        self.calls = self.prefix + "calls"
        self.timers = self.prefix + "timers"
        self.edges = self.prefix + "edges"
        self.reports = self.prefix + "reports"
        self.events = self.prefix + "events"
        self.dead = self.prefix + "dead"
        self.stats = self.prefix + "stats"
        self.retention = self.prefix + "retention"
        self.registrations = self.prefix + "registrations"
        self.statflows = self.prefix + "statflows"
        self.timer_sleep = self.prefix + "timer_sleep"
        self.timer_wake = self.prefix + "timer_wake"

    def _family(self, name: str, *parts: str | int) -> str:
        return self.prefix + FAMILIES[name].format(*parts)

    def flow(self, flow_id: str) -> str:
        return self._family("flow", flow_id)

    def agent(self, agent_id: str) -> str:
        return self._family("agent", agent_id)

    def call(self, call_id: str) -> str:
        return self._family("call", call_id)

    def queue(self, flow_id: str) -> str:
        return self._family("queue", flow_id)

    def chat_queue(self, flow_id: str) -> str:
        return self._family("chat_queue", flow_id)

    def skill_chat(self, skill: str) -> str:
        return self._family("skill_chat", skill)

    def agent_chats(self, agent_id: str) -> str:
        return self._family("agent_chats", agent_id)

    def skill_flows(self, skill: str) -> str:
        return self._family("skill_flows", skill)

    def skill_logged(self, skill: str) -> str:
        return self._family("skill_logged", skill)

    def skill_serving(self, skill: str, media: str) -> str:
        """Logged-in agents of a skill that take `media` (audio or chat)."""
        return self._family("skill_serving", skill, media)

    def skill_free(self, skill: str) -> str:
        return self._family("skill_free", skill)

    def edge_calls(self, edge_id: str) -> str:
        return self._family("edge_calls", edge_id)

    def edge_lease(self, edge_id: str) -> str:
        return self._family("edge_lease", edge_id)

    def edge_dialogs(self, edge_id: str) -> str:
        """The calls a sip-edge checkpointed (`callcenter_sip_edge.checkpoint`)."""
        return self._family("edge_dialogs", edge_id)

    def edge_info(self, edge_id: str) -> str:
        """A sip-edge's address group and whether it was declared lost."""
        return self._family("edge_info", edge_id)

    def edge_published(self, edge_id: str) -> str:
        """The marker of the last report batch a sip-edge applied (`callcenter_sip_edge.publisher`)."""
        return self._family("edge_published", edge_id)

    def edge_group(self, group: str) -> str:
        """The sip-edges that share one SIP address (peers: one adopts the calls of another that is lost)."""
        return self._family("edge_group", group)

    def dialog(self, call_id: str) -> str:
        """A sip-edge's checkpoint of one call, for a restarted edge to adopt it."""
        return self._family("dialog", call_id)

    def commands(self, edge_id: str) -> str:
        return self._family("commands", edge_id)

    def flow_stats(self, flow_id: str) -> str:
        return self._family("flow_stats", flow_id)

    def sl(self, flow_id: str, minute: int) -> str:
        """Service-level bucket of one minute (`minute` = ms // 60000)."""
        return self._family("sl", flow_id, minute)

    def idempotency(self, digest: str) -> str:
        """The api's record of one Idempotency-Key of one caller (`digest`: hex SHA-256)."""
        return self._family("idempotency", digest)

    def sip_auth(self, agent_id: str) -> str:
        """An agent's SIP digest credentials (HA1s, never the password) and its registration setting."""
        return self._family("sip_auth", agent_id)

    def aor(self, agent_id: str) -> str:
        """The contacts registered for an agent's AOR, score = expiry (ms)."""
        return self._family("aor", agent_id)

    def aor_bindings(self, agent_id: str) -> str:
        """The registered contacts of an agent's AOR, contact key -> binding (JSON)."""
        return self._family("aor_bindings", agent_id)


# fields of a flow's statistics hash that are not counters (not summed into the tenant's totals)
NOT_SUMMED = frozenset({"aht_ema_ms"})


def tenant_totals(flow_stats: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The tenant's counters and on-hold gauge: the sum of its flows' statistics hashes (decoded;
    those of `statflows`, see the module's doc). A value is taken as the readers of a single hash
    take it: a float truncated, anything else 0."""
    totals: dict[str, int] = {}
    for stats in flow_stats:
        for name, value in stats.items():
            if name in NOT_SUMMED:
                continue
            try:
                n = int(value)
            except ValueError:
                try:
                    n = int(float(value))
                except ValueError:
                    n = 0
            totals[name] = totals.get(name, 0) + n
    return {name: str(n) for name, n in totals.items()}
