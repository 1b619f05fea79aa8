-- report_media_failed.lua: a media leg could not be set up.
-- KEYS[1] any tenant key. ARGV: now_ms, entry id, msgpack report.media_failed. Returns {RC, what}.
-- A failed welcome is skipped (the call is routed as if it had ended); a failed queue media
-- leaves a waiting caller with nothing to hear, so the call is ended (503) unless an agent is
-- already ringing.
--!include common.lua
--!include _report.lua

local call, rc = load_call_for_report()
if call == nil then return { rc } end
if call.media ~= R.purpose then return { RC.STALE, 'not playing ' .. R.purpose } end
call_field_updates(R.call_id, call, { media = '' })
local flow = hgetall(k_flow(call.flow))
if flow and R.purpose == 'welcome' and call.state == 'welcome' then
  route_call(R.call_id, call, flow, false)
  return { RC.OK, call.state }
end
if call.state == 'offered' then return { RC.OK, 'agent_ringing' } end
if flow and R.purpose == 'dissuading' and call.state == 'dissuading' and flow.dissuading_hangup ~= '1' then
  route_call(R.call_id, call, flow, false)  -- no dissuading message to play: back to the queue
  return { RC.OK, call.state }
end
command(call.edge, 'command.reject', { call_id = R.call_id, code = 503, reason = 'Media Unavailable' })
finish_call(R.call_id, call, 'failed', 'system', 'media_failed')
return { RC.OK, 'ended' }
