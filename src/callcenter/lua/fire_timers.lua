-- fire_timers.lua: run the timers that are due (wrap-up ends, expired offer leases).
-- KEYS[1] any tenant key. ARGV: now_ms, limit. Any dispatcher may call it at any time: each timer
-- is removed and handled in the same atomic step, so it fires exactly once.
-- Returns {RC.OK, number fired}.
--!include common.lua

local limit = tonumber(ARGV[2]) or 100
local due = redis.call('ZRANGEBYSCORE', K.timers, '-inf', NOW, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  redis.call('ZREM', K.timers, member)
  local kind, id, token = string.match(member, '^([^|]+)|([^|]+)|?(.*)$')
  if kind == 'wrapup' then
    local agent = hgetall(k_agent(id))
    if agent and agent.state == 'wrap_up' then
      if agent.logout_pending == '1' then
        log_out(id, agent)
      else
        set_agent_state(id, agent, 'free', nil)
        dispatch_to_agent(id, agent)
      end
    end
  elseif kind == 'offer' then
    local call = hgetall(k_call(id))
    if call and call.state == 'offered' and call.offer == token then
      command(call.edge, 'command.cancel_ring', { call_id = id, offer_id = token })
      offer_failed(id, call, 'lease_expired')
    end
  end
end
return { RC.OK, #due }
