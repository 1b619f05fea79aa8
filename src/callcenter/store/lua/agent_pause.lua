-- agent_pause.lua: pause an agent with a reason code. Free or in wrap-up: at once. Ringing, in a
-- call or in chats: when that call (the last chat) ends (it then skips its wrap-up). A paused agent stays logged in and gets
-- no calls. KEYS[1] any tenant key. ARGV: now_ms, agent_id, reason.
-- Returns {RC.OK, 'paused' | 'pending'} | {RC.ALREADY, reason} | {RC.NOT_FOUND} | {RC.INVALID, why}.
--!include common.lua

local agent_id, reason = ARGV[2], ARGV[3]
if reason == nil or reason == '' then return { RC.INVALID, 'a reason is required' } end
local agent = hgetall(k_agent(agent_id))
if agent == nil then return { RC.NOT_FOUND } end
local state = agent.state or 'logged_out'
if state == 'logged_out' or agent.logout_pending == '1' then return { RC.INVALID, 'agent is not logged in' } end
if state == 'paused' then
  if agent.pause_reason == reason then return { RC.ALREADY, reason } end
  pause(agent_id, agent, reason)  -- a new reason: say so
  return { RC.OK, 'paused' }
end
if state == 'free' or state == 'wrap_up' then
  pause(agent_id, agent, reason)
  return { RC.OK, 'paused' }
end
redis.call('HSET', k_agent(agent_id), 'pause_pending', reason)
agent.pause_pending = reason
chat_index(agent_id, agent)  -- an agent in chats takes no new one
return { RC.OK, 'pending' }
