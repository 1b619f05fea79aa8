-- agent_unpause: end an agent's pause (or cancel a pending one); a free agent may get a waiting call in the same step.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 agent_id
-- READS: agent, agent_chats, call, chat_queue, config, flow, queue, skill_flows, skill_free, timer_sleep, timer_wake
-- WRITES: agent, agent_chats, call, chat_queue, commands, events, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, timer_wake, timers
-- RETURNS: OK state | ALREADY state | NOT_FOUND
-- EVENTS: agent.logged_out, agent.state_changed, agent.unpaused, call.offered
-- COMMANDS: command.ring, command.ring_all
-- LIB: core, chat, agents, offer

local agent_id = ARGV[2]
local agent = hgetall(k_agent(agent_id))
if agent == nil then return { RC.NOT_FOUND } end
if (agent.pause_pending or '') ~= '' then
  redis.call('HSET', k_agent(agent_id), 'pause_pending', '')
  agent.pause_pending = ''
  if agent.state == 'in_chat' then
    chat_index(agent_id, agent)
    dispatch_chats(agent_id, agent)
  end
  return { RC.OK, agent.state }
end
if agent.state ~= 'paused' then return { RC.ALREADY, agent.state or 'logged_out' } end
redis.call('HSET', k_agent(agent_id), 'pause_reason', '', 'missed_in_row', 0)
emit('agent.unpaused', { agent_id = agent_id })
if agent.logout_pending == '1' then  -- asked for during the call that preceded the pause
  log_out(agent_id, agent)
  return { RC.OK, 'logged_out' }
end
set_agent_state(agent_id, agent, 'free', nil)
dispatch_to_agent(agent_id, agent)
return { RC.OK, agent.state }
