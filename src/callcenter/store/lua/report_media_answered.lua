-- report_media_answered: the caller is bridged to a media server.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 entry_id (stream entry id), 3 data (the report's msgpack payload)
-- READS: agent, agent_chats, call, calls, chat_queue, commands, config, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, timer_sleep, timer_wake, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK state (the call's, 'offered' if this answer offered it) | STALE | DUPLICATE | OUT_OF_ORDER | INVALID why | FAILED why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.ended, call.offered
-- COMMANDS: command.hangup, command.ring, command.ring_all
-- LIB: config, core, offer, report
--
-- The first answer marks the caller answered: the edge reports it once the caller's ACK confirmed
-- its dialog, so the caller is on our media. A queued call that waited for it (offer.lua
-- waits_for_media) is offered now if an agent is free, and so is a call held since the edge
-- refused its ring (it was busy with this leg: offer.lua release_hold).

local call, rc, detail = load_live_call_for_report()
if call == nil then return { rc, detail } end
local flow = hgetall(k_flow(call.flow))
local first = (call.answered_ms or '') == ''
if first then call_field_updates(R.call_id, call, { answered_ms = NOW }) end
if release_hold(R.call_id, call, flow) then return { RC.OK, 'offered' } end
-- a queued call waited for this answer (offer.lua waits_for_media)
if first and flow and call.state == 'queued' and R.purpose == 'queue'
    and cfg('internal_dispatching') == 1 and offer_now(R.call_id, call, flow) then
  return { RC.OK, 'offered' }
end
return { RC.OK, call.state }
