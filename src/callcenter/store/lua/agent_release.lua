-- agent_release: an administrator frees an agent by force.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 agent_id
-- READS: agent, agent_chats, call, chat_queue, config, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, timer_sleep, timer_wake
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK state | ALREADY state | NOT_FOUND
-- EVENTS: agent.logged_out, agent.paused, agent.released, agent.state_changed, call.abandoned, call.ended, call.offered
-- COMMANDS: command.hangup, command.ring, command.ring_all
-- LIB: core, chat, calls
--
-- Its live call, if any, is hung up and ended (outcome failed, reason force_release), and so is
-- every chat it holds; the agent is free (or logged out / paused if that was pending) at once,
-- without wrap-up.

local agent_id = ARGV[2]
local agent = hgetall(k_agent(agent_id))
if agent == nil then return { RC.NOT_FOUND } end
local state = agent.state or 'logged_out'
if state ~= 'ringing' and state ~= 'in_call' and state ~= 'wrap_up' and state ~= 'in_chat' then
  return { RC.ALREADY, state }
end
if state == 'in_chat' then
  emit('agent.released', { agent_id = agent_id, reason = 'forced', from = state })
  for _, chat_id in ipairs(redis.call('SMEMBERS', k_agent_chats(agent_id))) do
    local chat = hgetall(k_call(chat_id))
    if chat and chat.state ~= 'ended' and chat.agent == agent_id then
      command(chat.edge, 'command.hangup', { call_id = chat_id, reason = 'force_release' })
      finish_call(chat_id, chat, 'failed', 'system', 'force_release')
    else
      redis.call('SREM', k_agent_chats(agent_id), chat_id)
    end
  end
  -- no wrap-up after a forced release; a chat offered meanwhile (the agent was freed) stays
  agent = hgetall(k_agent(agent_id))
  redis.call('ZREM', K.timers, 'wrapup|' .. agent_id)
  redis.call('HSET', k_agent(agent_id), 'wrapup_end_ms', 0)
  agent.wrapup_end_ms = '0'
  if agent.state == 'wrap_up' then release_agent(agent_id, nil, false)
  elseif agent.state == 'in_chat' then
    if redis.call('SCARD', k_agent_chats(agent_id)) == 0 then
      redis.call('HSET', k_agent(agent_id), 'chats', 0)
      release_agent(agent_id, nil, false)
    else
      chat_index(agent_id, agent)
    end
  end
  return { RC.OK, hgetall(k_agent(agent_id)).state }
end
local held = agent.call or ''
local ev = { agent_id = agent_id, reason = 'forced', from = state }
local call = (agent.call or '') ~= '' and hgetall(k_call(agent.call)) or nil
if (agent.call or '') ~= '' then ev.call_id = agent.call end
emit('agent.released', ev)
if call and call.state ~= 'ended' and call.agent == agent_id then
  command(call.edge, 'command.hangup', { call_id = agent.call, reason = 'force_release' })
  finish_call(agent.call, call, 'failed', 'system', 'force_release')
end
agent = hgetall(k_agent(agent_id))
-- finish_call may have freed the agent and handed it the next waiting call: that offer stays
if agent.state == 'wrap_up' or ((agent.state == 'ringing' or agent.state == 'in_call') and (agent.call or '') == held) then
  redis.call('ZREM', K.timers, 'wrapup|' .. agent_id)
  release_agent(agent_id, nil, false)
end
return { RC.OK, hgetall(k_agent(agent_id)).state }
