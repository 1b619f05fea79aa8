-- report_agent_failed: ringing an agent failed (rejected, busy, no answer, unreachable).
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 entry_id (stream entry id), 3 data (the report's msgpack payload)
-- READS: agent, agent_chats, call, calls, chat_queue, commands, config, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, skill_serving, timer_sleep, timer_wake, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK | STALE | DUPLICATE | OUT_OF_ORDER | INVALID why | FAILED why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.agent_failed, call.dissuaded, call.ended, call.offered, call.queued
-- COMMANDS: command.hangup, command.media, command.ring, command.ring_all
-- LIB: core, calls, report
--
-- The agent gets its wrap-up (the reference's penalty); the call returns to the head of its queue.

local call, rc, detail = load_live_call_for_report()
if call == nil then return { rc, detail } end
if call.state ~= 'offered' or call.offer ~= R.offer_id then return { RC.STALE } end
if (call.ring_all or '') ~= '' then
  -- ring-all: one phone failed; the others keep ringing. Only when all failed is the offer over.
  local rest = {}
  for _, id in ipairs(ring_all_members(call)) do if id ~= R.agent_id then rest[#rest + 1] = id end end
  if #rest == #ring_all_members(call) then return { RC.STALE } end
  if #rest > 0 then
    emit_agent_failed(R.call_id, call, R.agent_id, R.offer_id, R.reason)
    call_field_updates(R.call_id, call, { ring_all = table.concat(rest, ',') })
    release_agent(R.agent_id, hgetall(k_flow(call.flow)), false)
    return { RC.OK }
  end
  call_field_updates(R.call_id, call, { ring_all = R.agent_id })  -- the last one: the offer is over
  offer_failed(R.call_id, call, R.reason)
  return { RC.OK }
end
offer_failed(R.call_id, call, R.reason)
return { RC.OK }
