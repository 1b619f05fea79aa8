-- report_agent_failed.lua: ringing an agent failed (rejected, busy, no answer, unreachable).
-- KEYS[1] any tenant key. ARGV: now_ms, entry id, msgpack report.agent_failed. Returns {RC}.
-- The agent gets its wrap-up (the reference's penalty); the call returns to the head of its queue.
--!include common.lua
--!include _report.lua

local call, rc = load_call_for_report()
if call == nil then return { rc } end
if call.state ~= 'offered' or call.offer ~= R.offer_id then return { RC.STALE } end
if R.reason ~= 'cancelled' then
  redis.call('HINCRBY', k_agent(call.agent), 'missed', 1)
end
offer_failed(R.call_id, call, R.reason)
return { RC.OK }
