-- report_call_ended: every leg of a call is down.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 entry_id (stream entry id), 3 data (the report's msgpack payload)
-- READS: agent, agent_chats, call, calls, chat_queue, commands, config, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, timer_sleep, timer_wake, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK outcome | DUPLICATE | OUT_OF_ORDER | INVALID why | FAILED why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.ended, call.offered
-- COMMANDS: command.hangup, command.ring, command.ring_all
-- LIB: calls, report
--
-- Releases the agent (wrap-up after a talk, free after an unanswered offer) and emits call.ended.

local call, rc, detail = load_call_for_report()
if call == nil then return { rc, detail } end
if call.state == 'ended' then return { RC.OK, call.outcome or '' } end
local outcome
if call.state == 'connected' then outcome = 'answered'
elseif call.state == 'overflow' then outcome = 'overflowed'
elseif R.by == 'caller' then outcome = 'abandoned'
else outcome = 'failed' end
-- a talk ends when the edge saw it end (its BYE), not when this report is applied
finish_call(R.call_id, call, outcome, R.by, R.reason, call.state == 'connected' and reported_end(call) or nil)
return { RC.OK, outcome }
