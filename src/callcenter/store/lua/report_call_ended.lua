-- report_call_ended.lua: every leg of a call is down.
-- KEYS[1] any tenant key. ARGV: now_ms, entry id, msgpack report.call_ended. Returns {RC, outcome}.
-- Releases the agent (wrap-up after a talk, free after an unanswered offer) and emits call.ended.
--!include common.lua
--!include _report.lua

local call, rc = load_call_for_report()
if call == nil then return { rc } end
if call.state == 'ended' then return { RC.OK, call.outcome or '' } end
local outcome
if call.state == 'connected' then outcome = 'answered'
elseif call.state == 'overflow' then outcome = 'overflowed'
elseif R.by == 'caller' then outcome = 'abandoned'
else outcome = 'failed' end
finish_call(R.call_id, call, outcome, R.by, R.reason)
return { RC.OK, outcome }
