-- reconcile.lua: free agents that no live call holds (the peers' most common bug: an agent stuck
-- busy). An agent ringing or in a call must be the agent of a live call in the matching state; an
-- agent in wrap-up must have its wrap-up timer. Any replica may run it at any time.
-- KEYS[1] any tenant key. ARGV: now_ms. Returns {RC.OK, number released}.
--!include common.lua

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
