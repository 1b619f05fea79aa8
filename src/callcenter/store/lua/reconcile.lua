-- reconcile: free agents that no live call holds (the peers' most common bug: an agent stuck busy).
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms
-- READS: agent, agent_chats, agents, call, chat_queue, config, flow, queue, skill_flows, skill_free, timers
-- WRITES: agent, agent_chats, call, chat_queue, commands, events, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, stats, timers
-- RETURNS: OK number_released
-- EVENTS: agent.logged_out, agent.paused, agent.released, agent.state_changed, call.offered
-- COMMANDS: command.ring, command.ring_all
-- LIB: core, chat, calls
--
-- An agent ringing or in a call must be the agent of a live call in the matching state; an agent
-- in wrap-up must have its wrap-up timer. Any replica may run it at any time.

local released = 0
for _, agent_id in ipairs(redis.call('SMEMBERS', K.agents)) do
  local agent = hgetall(k_agent(agent_id))
  if agent then
    local stuck = false
    if agent.state == 'ringing' or agent.state == 'in_call' then
      local call = (agent.call or '') ~= '' and hgetall(k_call(agent.call)) or nil
      local want = agent.state == 'ringing' and 'offered' or 'connected'
      local holds = call ~= nil and call.agent == agent_id
      if call ~= nil and not holds and agent.state == 'ringing' then
        for _, id in ipairs(ring_all_members(call)) do if id == agent_id then holds = true end end
      end
      stuck = not holds or call.state ~= want
    elseif agent.state == 'wrap_up' then
      stuck = redis.call('ZSCORE', K.timers, 'wrapup|' .. agent_id) == false
    elseif agent.state == 'in_chat' then
      -- every chat slot must be held by a live chat of this agent; drop the others
      for _, chat_id in ipairs(redis.call('SMEMBERS', k_agent_chats(agent_id))) do
        local chat = hgetall(k_call(chat_id))
        if chat == nil or chat.agent ~= agent_id or (chat.state ~= 'offered' and chat.state ~= 'connected') then
          redis.call('SREM', k_agent_chats(agent_id), chat_id)
        end
      end
      local chats = redis.call('SCARD', k_agent_chats(agent_id))
      if tostring(chats) ~= (agent.chats or '0') then
        redis.call('HSET', k_agent(agent_id), 'chats', chats)
        agent.chats = tostring(chats)
        chat_index(agent_id, agent)
      end
      stuck = chats == 0
    end
    if stuck then
      released = released + 1
      local ev = { agent_id = agent_id, reason = 'no_live_call', from = agent.state }
      if (agent.call or '') ~= '' then ev.call_id = agent.call end
      emit('agent.released', ev)
      release_agent(agent_id, nil, false)
    end
  end
end
return { RC.OK, released }
