-- report_agent_answered: the agent answered and the caller is connected to it.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 entry_id (stream entry id), 3 data (the report's msgpack payload)
-- READS: agent, agent_chats, call, calls, chat_queue, commands, config, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, timer_sleep, timer_wake, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK | OK 'adopted' | STALE | STALE 'hung_up' | DUPLICATE | OUT_OF_ORDER | INVALID why | FAILED why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.agent_failed, call.connected, call.ended, call.offered
-- COMMANDS: command.cancel_ring, command.hangup, command.ring, command.ring_all
-- LIB: core, agents, offer, calls, report
--
-- An answer for an offer already taken back (its lease expired while the report sat with a dead
-- dispatcher) describes what the edge really did: the caller talks to that agent. It is adopted
-- when the agent is not busy with another call (a newer offer of the call is cancelled); otherwise
-- the call is hung up, so Redis and the edge never disagree.

local call, rc, detail = load_live_call_for_report()
if call == nil then return { rc, detail } end
local function adopt_late_answer()
  local agent = hgetall(k_agent(R.agent_id))
  local chat = call.media_type == 'chat'
  local idle = agent ~= nil and (agent.state == 'free' or agent.state == 'wrap_up' or agent.state == 'paused'
    or (chat and agent.state == 'in_chat'))
  -- an agent re-provisioned meanwhile may no longer take this kind of call
  local uri = agent and ((chat and agent.chat_uri) or (not chat and agent.uri)) or ''
  if uri == '' then idle = false end
  if not idle then
    command(call.edge, 'command.hangup', { call_id = R.call_id, reason = 'late_answer' })
    finish_call(R.call_id, call, 'failed', 'system', 'late_answer')
    return { RC.STALE, 'hung_up' }
  end
  local flow = hgetall(k_flow(call.flow))
  if call.state == 'offered' then
    command(call.edge, 'command.cancel_ring', { call_id = R.call_id, offer_id = call.offer })
    redis.call('ZREM', K.timers, 'offer|' .. R.call_id .. '|' .. call.offer)
    local ringing = ring_all_members(call)
    if call.agent ~= '' then ringing = { call.agent } end
    for _, other in ipairs(ringing) do
      emit_agent_failed(R.call_id, call, other, call.offer, 'answered_elsewhere')
      release_for_call(other, R.call_id, call, flow, false)
    end
    -- releasing may have changed this very agent (it rang for the newer offer): read it again
    agent = hgetall(k_agent(R.agent_id)) or agent
  end
  redis.call('ZREM', k_queue_of(call), R.call_id)
  redis.call('ZREM', K.timers, 'wrapup|' .. R.agent_id)
  call_field_updates(R.call_id, call, { state = 'offered', agent = R.agent_id, offer = R.offer_id, ring_all = '' })
  -- replay the offer on the stream (free -> ringing -> in call) so consumers see a coherent story
  if agent.state == 'paused' then  -- the pause resumes when this call ends
    agent.pause_pending = agent.pause_reason or 'paused'  -- the chat index below reads it
    redis.call('HSET', k_agent(R.agent_id), 'pause_pending', agent.pause_pending)
  end
  if agent.state ~= 'free' and agent.state ~= 'in_chat' then set_agent_state(R.agent_id, agent, 'free', nil) end
  if chat then
    take_chat_slot(R.agent_id, agent, R.call_id)
  else
    redis.call('ZREM', K.timers, 'wrapup|' .. R.agent_id)
    set_agent_state(R.agent_id, agent, 'ringing', R.call_id)
  end
  emit('call.offered', { call_id = R.call_id, flow = call.flow, agent_id = R.agent_id, offer_id = R.offer_id })
  connect(R.call_id, call, nil, tonumber(R.ts))
  return { RC.OK, 'adopted' }
end

if call.offer ~= R.offer_id and (call.state == 'queued' or call.state == 'offered') then
  return adopt_late_answer()
end
if call.state ~= 'offered' or call.offer ~= R.offer_id then return { RC.STALE } end
if (call.ring_all or '') ~= '' then
  -- ring-all: the first agent to answer wins (the edge has cancelled the others)
  local member = false
  for _, id in ipairs(ring_all_members(call)) do if id == R.agent_id then member = true end end
  if not member then return { RC.STALE } end
  call_field_updates(R.call_id, call, { agent = R.agent_id })
end
-- talk time runs from the edge's answer (a report held across an outage is applied late)
connect(R.call_id, call, reported_at(num(call.offered_ms, num(call.received_ms, 0))), tonumber(R.ts))
return { RC.OK }
