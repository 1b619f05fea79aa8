-- report_media_failed: a media leg could not be set up.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 entry_id (stream entry id), 3 data (the report's msgpack payload)
-- READS: agent, agent_chats, call, calls, chat_queue, commands, config, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, skill_serving, timer_sleep, timer_wake, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK what | STALE why | DUPLICATE | OUT_OF_ORDER | INVALID why | FAILED why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.dissuaded, call.ended, call.offered, call.queued
-- COMMANDS: command.hangup, command.media, command.reject, command.ring, command.ring_all
-- LIB: calls, report
--
-- A failed welcome is skipped (the call is routed as if it had ended); a failed queue media
-- leaves a waiting caller with nothing to hear, so the call is ended (503) unless an agent is
-- already ringing, or the caller, nobody having answered it yet, rings a free agent with its own
-- offer (calls.lua media_not_played).

local call, rc, detail = load_live_call_for_report()
if call == nil then return { rc, detail } end
if call.media ~= R.purpose then return { RC.STALE, 'not playing ' .. R.purpose } end
return { RC.OK, media_not_played(R.call_id, call, R.purpose) }
