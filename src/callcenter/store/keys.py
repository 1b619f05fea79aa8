"""Redis key and stream names of one tenant.

Every key of a tenant starts with `cc:{<tenant>}:`: the braces are a Redis Cluster hash tag, so
all keys of one tenant live in one slot and every Lua script touches a single slot. The Lua scripts
build the same names from that prefix (see `lua/common.lua`); this module is the reference list.

    cc:{t}:config                 hash   call-handling parameters (wrap-up, ring timeout, ...)
    cc:{t}:flows                  set    flow ids
    cc:{t}:flow:<id>              hash   flow definition (skill, priority, media URIs)
    cc:{t}:skill:<skill>:flows    set    flows that need this skill
    cc:{t}:skill:<skill>:logged   set    logged-in agents with this skill
    cc:{t}:skill:<skill>:logged:<media>  set  those of them that take audio calls / chats
    cc:{t}:skill:<skill>:free     zset   free agents with this skill and an audio URI, score = idle since (ms)
    cc:{t}:skill:<skill>:chat     zset   agents with this skill and a free chat slot,
                                         score = ongoing chats * 1e13 + last change (ms)
    cc:{t}:stats                  hash   global counters and the on-hold gauge
    cc:{t}:stats:flow:<flow>      hash   the same per flow, and its handle-time average
    cc:{t}:sl:<flow>:<minute>     hash   service-level counts of one minute (ms // 60000), kept 62 min
    cc:{t}:agents                 set    agent ids
    cc:{t}:agent:<id>             hash   agent definition and runtime state
    cc:{t}:agentchats:<id>        set    ids of the chats an agent holds (offered or connected)
    cc:{t}:call:<id>              hash   one call's state
    cc:{t}:calls                  set    ids of calls not yet ended
    cc:{t}:edge:<edge>:calls      set    ids of calls not yet ended that this sip-edge owns
    cc:{t}:queue:<flow>           zset   waiting audio calls of a flow, lowest score served first
    cc:{t}:chatq:<flow>           zset   waiting chats of a flow, same order
    cc:{t}:timers                 zset   due timers, member "<kind>|<id>[|<token>]", score = due (ms)
    cc:{t}:edges                  zset   sip-edge heartbeats, score = last beat (ms)
    cc:{t}:reports                stream facts reported by sip-edges, read by the dispatchers
    cc:{t}:commands:<edge>        stream commands for one sip-edge
    cc:{t}:events                 stream every state change: the product event stream
    cc:{t}:dead                   stream entries that could not be handled (dead letters)
"""

from __future__ import annotations


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

    def flow(self, flow_id: str) -> str:
        return f"{self.prefix}flow:{flow_id}"

    def agent(self, agent_id: str) -> str:
        return f"{self.prefix}agent:{agent_id}"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}call:{call_id}"

    def queue(self, flow_id: str) -> str:
        return f"{self.prefix}queue:{flow_id}"

    def chat_queue(self, flow_id: str) -> str:
        return f"{self.prefix}chatq:{flow_id}"

    def skill_chat(self, skill: str) -> str:
        return f"{self.prefix}skill:{skill}:chat"

    def agent_chats(self, agent_id: str) -> str:
        return f"{self.prefix}agentchats:{agent_id}"

    def skill_flows(self, skill: str) -> str:
        return f"{self.prefix}skill:{skill}:flows"

    def skill_logged(self, skill: str) -> str:
        return f"{self.prefix}skill:{skill}:logged"

    def skill_serving(self, skill: str, media: str) -> str:
        """Logged-in agents of a skill that take `media` (audio or chat)."""
        return f"{self.prefix}skill:{skill}:logged:{media}"

    def skill_free(self, skill: str) -> str:
        return f"{self.prefix}skill:{skill}:free"

    def edge_calls(self, edge_id: str) -> str:
        return f"{self.prefix}edge:{edge_id}:calls"

    def commands(self, edge_id: str) -> str:
        return f"{self.prefix}commands:{edge_id}"

    def flow_stats(self, flow_id: str) -> str:
        return f"{self.prefix}stats:flow:{flow_id}"

    def sl(self, flow_id: str, minute: int) -> str:
        """Service-level bucket of one minute (`minute` = ms // 60000)."""
        return f"{self.prefix}sl:{flow_id}:{minute}"
