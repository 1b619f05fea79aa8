-- agent_pause: pause an agent with a reason code.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 agent_id, 3 reason
-- READS: agent, config
-- WRITES: agent, events, skill_chat, skill_free, timers
-- RETURNS: OK 'paused' | OK 'pending' | ALREADY reason | NOT_FOUND | INVALID why
-- EVENTS: agent.paused, agent.state_changed
-- COMMANDS: -
-- LIB: core, chat, agents
--
-- Free or in wrap-up: at once. Ringing, in a call or in chats: when that call (the last chat) ends
-- (it then skips its wrap-up). A paused agent stays logged in and gets no calls.

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
