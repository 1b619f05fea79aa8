-- agent_logout: log an agent out.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 agent_id
-- READS: agent, config
-- WRITES: agent, events, skill_chat, skill_free, skill_logged, skill_serving, timers
-- RETURNS: OK 'logged_out' | OK 'pending' | ALREADY 'logged_out' | NOT_FOUND
-- EVENTS: agent.logged_out, agent.state_changed
-- COMMANDS: -
-- LIB: core, chat, agents
--
-- Free, paused or in wrap-up: at once. Ringing, in a call or in chats: when that call (the last
-- chat) ends; the agent stops counting as logged in for new calls and chats right away.

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
