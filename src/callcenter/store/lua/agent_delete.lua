-- agent_delete.lua: remove an agent from the Redis cache. Refused unless it is logged out.
-- KEYS[1] any tenant key. ARGV: now_ms, agent_id. Returns {RC.OK} | {RC.NOT_FOUND} | {RC.INVALID, why}.
--!include common.lua

local agent_id = ARGV[2]
local agent = hgetall(k_agent(agent_id))
if agent == nil then return { RC.NOT_FOUND } end
if (agent.state or 'logged_out') ~= 'logged_out' then return { RC.INVALID, 'agent is logged in' } end
redis.call('SREM', K.agents, agent_id)
redis.call('DEL', k_agent(agent_id), k_agent_chats(agent_id))
return { RC.OK }
