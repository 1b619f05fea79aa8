-- report_agent_answered.lua: the agent answered and the caller is connected to it.
-- KEYS[1] any tenant key. ARGV: now_ms, entry id, msgpack report.agent_answered. Returns {RC}.
--!include common.lua
--!include _report.lua

local call, rc = load_call_for_report()
if call == nil then return { rc } end
if call.state ~= 'offered' or call.offer ~= R.offer_id then return { RC.STALE } end
connect(R.call_id, call)
return { RC.OK }
