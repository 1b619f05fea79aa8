-- agent_logout.lua: log an agent out. Free, paused or in wrap-up: at once. Ringing, in a call or in
-- chats: when that call (the last chat) ends; the agent stops counting as logged in for new calls
-- and chats right away.
-- KEYS[1] any tenant key. ARGV: now_ms, agent_id.
-- Returns {RC.OK, 'logged_out' | 'pending'} | {RC.ALREADY, 'logged_out'} | {RC.NOT_FOUND}.
--!include common.lua

local agent_id = ARGV[2]
local agent = hgetall(k_agent(agent_id))
if agent == nil then return { RC.NOT_FOUND } end
local state = agent.state or 'logged_out'
if state == 'logged_out' then return { RC.ALREADY, 'logged_out' } end
if state == 'free' or state == 'wrap_up' or state == 'paused' then
  log_out(agent_id, agent)
  return { RC.OK, 'logged_out' }
end
set_logged(agent_id, agent, false)
redis.call('HSET', k_agent(agent_id), 'logout_pending', '1')
agent.logout_pending = '1'
chat_index(agent_id, agent)
return { RC.OK, 'pending' }
