-- report_agent_answered.lua: the agent answered and the caller is connected to it.
-- KEYS[1] any tenant key. ARGV: now_ms, entry id, msgpack report.agent_answered. Returns {RC}.
--!include common.lua
--!include _report.lua

local call, rc = load_call_for_report()
if call == nil then return { rc } end
if call.state ~= 'offered' or call.offer ~= R.offer_id then return { RC.STALE } end
redis.call('ZREM', K.timers, 'offer|' .. R.call_id .. '|' .. R.offer_id)
call_field_updates(R.call_id, call, { state = 'connected', connected_ms = NOW, media = '' })
local agent = hgetall(k_agent(call.agent))
if agent then
  set_agent_state(call.agent, agent, 'in_call', R.call_id)
  redis.call('HINCRBY', k_agent(call.agent), 'answered', 1)
end
emit('call.connected', { call_id = R.call_id, flow = call.flow, agent_id = call.agent,
  wait_ms = NOW - num(call.received_ms, NOW) })
return { RC.OK }
