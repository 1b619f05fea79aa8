-- report_media_answered.lua: the caller is bridged to a media server.
-- KEYS[1] any tenant key. ARGV: now_ms, entry id, msgpack report.media_answered. Returns {RC}.
--!include common.lua
--!include _report.lua

local call, rc = load_call_for_report()
if call == nil then return { rc } end
if (call.answered_ms or '') == '' then redis.call('HSET', k_call(R.call_id), 'answered_ms', NOW) end
return { RC.OK }
