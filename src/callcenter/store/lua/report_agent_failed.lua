-- report_agent_failed.lua: ringing an agent failed (rejected, busy, no answer, unreachable).
-- KEYS[1] any tenant key. ARGV: now_ms, entry id, msgpack report.agent_failed. Returns {RC}.
-- The agent gets its wrap-up (the reference's penalty); the call returns to the head of its queue.
--!include common.lua
--!include _report.lua

local call, rc = load_call_for_report()
if call == nil then return { rc } end
if call.state ~= 'offered' or call.offer ~= R.offer_id then return { RC.STALE } end
if (call.ring_all or '') ~= '' then
  -- ring-all: one phone failed; the others keep ringing. Only when all failed is the offer over.
  local rest = {}
  for _, id in ipairs(ring_all_members(call)) do if id ~= R.agent_id then rest[#rest + 1] = id end end
  if #rest == #ring_all_members(call) then return { RC.STALE } end
  if #rest > 0 then
    emit('call.agent_failed', { call_id = R.call_id, flow = call.flow, agent_id = R.agent_id,
      offer_id = R.offer_id, reason = R.reason })
    call_field_updates(R.call_id, call, { ring_all = table.concat(rest, ',') })
    release_agent(R.agent_id, hgetall(k_flow(call.flow)), false)
    return { RC.OK }
  end
  call_field_updates(R.call_id, call, { ring_all = R.agent_id })  -- the last one: the offer is over
  offer_failed(R.call_id, call, R.reason)
  return { RC.OK }
end
offer_failed(R.call_id, call, R.reason)
return { RC.OK }
