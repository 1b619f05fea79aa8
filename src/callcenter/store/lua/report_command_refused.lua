-- report_command_refused: the edge did not carry out a command; act at once instead of waiting for a lease.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 entry_id (stream entry id), 3 data (the report's msgpack payload)
-- READS: agent, agent_chats, call, calls, chat_queue, commands, config, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, skill_serving, timer_sleep, timer_wake, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK what | STALE why | DUPLICATE | OUT_OF_ORDER | INVALID why | FAILED why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.agent_failed, call.dissuaded, call.ended, call.offered, call.queued
-- COMMANDS: command.hangup, command.media, command.reject, command.ring, command.ring_all
-- LIB: core, offer, calls, report
--
-- A refused ring or ring_all of the call's current offer frees its agents at once with no penalty
-- (a ring refused `not_registered` frees its agent paused, reason unregistered) and puts the call
-- back at the head of its queue, held until its media answers or
-- refused_offer_hold_ms pass (calls.lua offer_refused); a ring refused `registered_elsewhere` (the
-- agent's contacts are connections another edge holds) also makes the call skip that agent for the
-- rest of its life: it is not offered that call again, and stays free for the others. A refused
-- media that can never play (bad_purpose, ...) is a media that failed (calls.lua media_not_played);
-- one refused because the edge is setting up another leg of the call (wrong_state) only forgets it
-- (a welcome is skipped): that other leg reports. A refused cancel_ring, reject or hangup changes nothing.
-- unknown_call: the edge has no such call. With seq > 0 it follows the call's call_ended (a no-op);
-- with seq 0 (no report stream for the call at the edge: never known, restarted, or ended long ago)
-- it is applied without the sequence check: a call still live here is over at the edge, so it
-- ends with a true record (failed, by edge, unknown_call) and its agents are freed.

local call, rc, detail
if R.seq == 0 then
  local fault = report_fault()
  if fault then return { RC.FAILED, 'preflight: ' .. fault } end
  call = hgetall(k_call(R.call_id))
  if call ~= nil and call.edge ~= R.edge then return { RC.STALE, 'not this edge' } end
elseif redis.call('EXISTS', k_call(R.call_id)) == 0 then
  call = nil  -- a refusal answers a command, so its call existed: it ended and expired
else
  call, rc, detail = load_call_for_report()
  if call == nil then return { rc, detail } end
end
if call == nil or call.state == 'ended' then return { RC.OK, 'gone' } end
if R.reason == 'unknown_call' then
  finish_call(R.call_id, call, 'failed', 'edge', 'unknown_call')
  return { RC.OK, 'ended' }
end
if R.command == 'command.ring' or R.command == 'command.ring_all' then
  if call.state ~= 'offered' or call.offer ~= R.offer_id then return { RC.STALE, 'offer over' } end
  if R.reason == 'not_registered' and (call.agent or '') ~= '' then
    -- its AOR has no live contact: it is freed as paused (unregistered), as a lapsed registration
    -- pauses it, instead of being offered the next call only to be refused again
    local akey = k_agent(call.agent)
    if (redis.call('HGET', akey, 'pause_pending') or '') == '' and redis.call('HGET', akey, 'logout_pending') ~= '1' then
      redis.call('HSET', akey, 'pause_pending', 'unregistered')
    end
  end
  return { RC.OK, offer_refused(R.call_id, call, 'refused', R.reason == 'registered_elsewhere') }
end
if R.command == 'command.media' then
  if (R.purpose or '') == '' or call.media ~= R.purpose then return { RC.STALE, 'not playing' } end
  if R.reason == 'wrong_state' and call.state ~= 'welcome' then
    call_field_updates(R.call_id, call, { media = '' })
    return { RC.OK, 'kept' }
  end
  return { RC.OK, media_not_played(R.call_id, call, R.purpose) }
end
return { RC.OK, 'noop' }
