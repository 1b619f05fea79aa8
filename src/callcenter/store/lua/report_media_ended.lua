-- report_media_ended: a media server hung up its leg; the caller is still there.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 entry_id (stream entry id), 3 data (the report's msgpack payload)
-- READS: agent, agent_chats, call, calls, chat_queue, commands, config, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, skill_serving, timer_sleep, timer_wake, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK what | STALE why | DUPLICATE | OUT_OF_ORDER | INVALID why | FAILED why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.dissuaded, call.ended, call.offered, call.queued, call.welcome_ended
-- COMMANDS: command.hangup, command.media, command.ring, command.ring_all
-- LIB: core, queue, offer, calls, report
--
-- The welcome message ended: route the call (agent or queue). The queue media hung up (it should
-- loop forever): bridge the caller to the queue media again. The dissuading message ended: hang
-- up (flow.dissuading_hangup) or back to the queue. The overflow destination hung up: hang up.

local call, rc, detail = load_live_call_for_report()
if call == nil then return { rc, detail } end
if call.media ~= R.purpose then return { RC.STALE, 'not playing ' .. R.purpose } end
call_field_updates(R.call_id, call, { media = '' })
local flow = hgetall(k_flow(call.flow))
if flow == nil then
  command(call.edge, 'command.hangup', { call_id = R.call_id, reason = 'flow_removed' })
  finish_call(R.call_id, call, 'failed', 'system', 'flow_removed')
  return { RC.OK, 'hangup' }
end
if R.purpose == 'welcome' and call.state == 'welcome' then
  emit('call.welcome_ended', { call_id = R.call_id, flow = call.flow })
  route_call(R.call_id, call, flow, false)
  return { RC.OK, call.state }
end
if R.purpose == 'queue' and (call.state == 'queued' or call.state == 'offered') then
  -- an offered call is out of the queue: ZRANK gives false, the URI then carries no position
  local position = redis.call('ZRANK', k_queue_of(call), R.call_id) or nil
  command(call.edge, 'command.media', { call_id = R.call_id, uri = queue_uri(call.flow, flow, position, call.media_type),
    purpose = 'queue' })
  call_field_updates(R.call_id, call, { media = 'queue' })
  return { RC.OK, 'requeued_media' }
end
if R.purpose == 'dissuading' and call.state == 'dissuading' then
  if flow.dissuading_hangup == '1' then
    command(call.edge, 'command.hangup', { call_id = R.call_id, reason = 'dissuaded' })
    finish_call(R.call_id, call, 'dissuaded', 'system', 'dissuaded')
    return { RC.OK, 'hangup' }
  end
  route_call(R.call_id, call, flow, false)
  return { RC.OK, call.state }
end
if R.purpose == 'overflow' and call.state == 'overflow' then
  command(call.edge, 'command.hangup', { call_id = R.call_id, reason = 'overflow_ended' })
  finish_call(R.call_id, call, 'overflowed', 'system', 'overflow_ended')
  return { RC.OK, 'hangup' }
end
return { RC.OK, 'ignored' }
