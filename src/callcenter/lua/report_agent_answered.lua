-- report_agent_answered.lua: the agent answered and the caller is connected to it.
-- KEYS[1] any tenant key. ARGV: now_ms, entry id, msgpack report.agent_answered. Returns {RC}.
--!include common.lua
--!include _report.lua

local call, rc = load_call_for_report()
if call == nil then return { rc } end
if call.state ~= 'offered' or call.offer ~= R.offer_id then return { RC.STALE } end
if (call.ring_all or '') ~= '' then
  -- ring-all: the first agent to answer wins (the edge has cancelled the others)
  local member = false
  for _, id in ipairs(ring_all_members(call)) do if id == R.agent_id then member = true end end
  if not member then return { RC.STALE } end
  call_field_updates(R.call_id, call, { agent = R.agent_id })
end
connect(R.call_id, call)
return { RC.OK }
