-- report_media_answered: the caller is bridged to a media server.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 entry_id (stream entry id), 3 data (the report's msgpack payload)
-- READS: agent, agent_chats, call, calls, chat_queue, commands, config, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, stats, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, stats, timers
-- RETURNS: OK | OK 'offered' | STALE | DUPLICATE | OUT_OF_ORDER | INVALID why | FAILED why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.ended, call.offered
-- COMMANDS: command.hangup, command.ring, command.ring_all
-- LIB: config, core, chat, offer, report
--
-- The first answer marks the caller answered; a call of a flow with a flow-id message that was
-- queued for it is offered now if an agent is free.

local call, rc, detail = load_live_call_for_report()
if call == nil then return { rc, detail } end
if (call.answered_ms or '') ~= '' then return { RC.OK } end
call_field_updates(R.call_id, call, { answered_ms = NOW })
-- a call of a flow with a flow-id message waited for this answer (common.lua waits_for_media)
local flow = hgetall(k_flow(call.flow))
if flow and (flow.flow_id_uri or '') ~= '' and call.state == 'queued' and R.purpose == 'queue'
    and cfg('internal_dispatching') == 1 then
  local agent_id, agent
  if call.media_type == 'chat' then agent_id, agent = pick_chat_agent(flow)
  elseif flow.strategy ~= 'ring-all' then agent_id, agent = pick_agent(call.flow, flow) end
  if agent_id then
    offer(R.call_id, call, flow, agent_id, agent)
    return { RC.OK, 'offered' }
  elseif flow.strategy == 'ring-all' then
    local agents = free_agents_of(flow)
    if #agents > 0 then
      offer_all(R.call_id, call, flow, agents)
      return { RC.OK, 'offered' }
    end
  end
end
return { RC.OK }
