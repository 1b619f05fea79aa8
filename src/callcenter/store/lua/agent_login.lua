-- agent_login: log an agent in; it may get a waiting call in the same step.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 agent_id
-- READS: agent, agent_chats, aor, call, chat_queue, config, flow, queue, sip_auth, skill_flows, skill_free, timer_sleep, timer_wake
-- WRITES: agent, agent_chats, call, chat_queue, commands, events, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, timer_wake, timers
-- RETURNS: OK state | ALREADY state | NOT_FOUND | INVALID 'not_registered'
-- EVENTS: agent.logged_in, agent.state_changed, call.offered
-- COMMANDS: command.ring, command.ring_all
-- LIB: core, chat, agents, offer

local agent_id = ARGV[2]
local agent = hgetall(k_agent(agent_id))
if agent == nil then return { RC.NOT_FOUND } end
local state = agent.state or 'logged_out'
if state ~= 'logged_out' then
  if agent.logout_pending == '1' then
    redis.call('HSET', k_agent(agent_id), 'logout_pending', '0')
    agent.logout_pending = '0'
    set_logged(agent_id, agent, true)
    if state == 'in_chat' then
      chat_index(agent_id, agent)
      dispatch_chats(agent_id, agent)
    elseif state == 'free' then
      if (agent.chat_uri or '') ~= '' then chat_index(agent_id, agent) end
      dispatch_to_agent(agent_id, agent)
    end
    return { RC.OK, state }
  end
  return { RC.ALREADY, state }
end
-- an agent whose setting asks for it logs in only with a live registration (sip_register.lua)
if redis.call('HGET', k_sip_auth(agent_id), 'registration_required') == '1'
    and redis.call('ZCOUNT', k_aor(agent_id), '(' .. NOW, '+inf') == 0 then
  return { RC.INVALID, 'not_registered' }
end
set_logged(agent_id, agent, true)
redis.call('HSET', k_agent(agent_id), 'logged_in_ms', NOW, 'logout_pending', '0')
emit('agent.logged_in', { agent_id = agent_id })
set_agent_state(agent_id, agent, 'free', nil)
dispatch_to_agent(agent_id, agent)
return { RC.OK, agent.state }
