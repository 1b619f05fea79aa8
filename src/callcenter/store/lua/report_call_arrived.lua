-- report_call_arrived: a caller's INVITE reached a sip-edge.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 entry_id (stream entry id), 3 data (the report's msgpack payload)
-- READS: agent, agent_chats, call, calls, chat_queue, commands, config, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, skill_serving, timer_sleep, timer_wake, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK decision | DUPLICATE 'exists' | INVALID why | FAILED why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.arrived, call.dissuaded, call.ended, call.offered, call.queued, call.rejected
-- COMMANDS: command.hangup, command.media, command.reject, command.ring, command.ring_all
-- LIB: config, core, stats, offer, calls, report
--
-- Creates the call and decides its first step: reject (unknown flow, no agent logged in),
-- welcome media, an agent at once, or the queue.

if R.seq ~= 1 then return { RC.INVALID, 'arrival must have seq 1' } end
local fault = report_fault()
if fault then return { RC.FAILED, 'preflight: ' .. fault } end
local call_id = R.call_id
local ckey = k_call(call_id)
if redis.call('EXISTS', ckey) == 1 then
  local failed = failed_before(hgetall(ckey))
  if failed then return { RC.FAILED, failed } end
  return { RC.DUPLICATE, 'exists' }
end

local priority = tonumber(R.priority) or 0
if priority > 100 then priority = 100 elseif priority < -100 then priority = -100 end
local media_type = R.media_type or 'audio'
if media_type ~= 'audio' and media_type ~= 'chat' then return { RC.INVALID, 'media_type must be audio or chat' } end
local call = {}
call_field_updates(call_id, call, { flow = R.flow, caller = R.caller, caller_uri = R.caller_uri,
  priority = math.floor(priority), media_type = media_type, caller_display = R.caller_display or '',
  edge = R.edge, seq = 1, received_ms = NOW, state = 'arrived', media = '', rejections = 0, offers = 0,
  agent = '', offer = '', sip_call_id = R.sip_call_id })
redis.call('SADD', K.calls, call_id)
redis.call('SADD', k_edge_calls(R.edge), call_id)
emit('call.arrived', { call_id = call_id, flow = R.flow, caller = R.caller, edge = R.edge, media_type = media_type,
  sip_call_id = R.sip_call_id })

local function reject(code, phrase, reason)
  command(R.edge, 'command.reject', { call_id = call_id, code = code, reason = phrase })
  emit('call.rejected', { call_id = call_id, flow = R.flow, code = code, reason = reason })
  finish_call(call_id, call, 'rejected', 'system', reason)
end

local flow = hgetall(k_flow(R.flow))
if flow == nil then
  reject(404, 'Not Found', 'unknown_flow')
  return { RC.OK, 'rejected' }
end
if cfg('reject_on_no_agents') == 1 and redis.call('SCARD', k_skill_serving(flow.skill, media_type)) == 0 then
  reject(cfg('no_agents_code'), 'No Agents Available', 'no_agents')
  return { RC.OK, 'rejected' }
end
stat(R.flow, 'incalls')
onhold_stat(R.flow, call, 1)
sl(R.flow, 'offered')
call_field_updates(call_id, call, { onhold = '1' })
if (flow.welcome_uri or '') ~= '' then
  call_field_updates(call_id, call, { state = 'welcome', media = 'welcome' })
  command(R.edge, 'command.media', { call_id = call_id, uri = flow.welcome_uri, purpose = 'welcome' })
  return { RC.OK, 'welcome' }
end
route_call(call_id, call, flow, false)
return { RC.OK, call.state }
