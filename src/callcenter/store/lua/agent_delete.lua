-- agent_delete: remove an agent from the Redis cache. Refused unless it is logged out.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 agent_id
-- READS: agent
-- WRITES: agent, agent_chats, agents
-- RETURNS: OK | NOT_FOUND | INVALID why
-- EVENTS: -
-- COMMANDS: -
-- LIB: core

local agent_id = ARGV[2]
local agent = hgetall(k_agent(agent_id))
if agent == nil then return { RC.NOT_FOUND } end
if (agent.state or 'logged_out') ~= 'logged_out' then return { RC.INVALID, 'agent is logged in' } end
redis.call('SREM', K.agents, agent_id)
redis.call('DEL', k_agent(agent_id), k_agent_chats(agent_id))
return { RC.OK }
