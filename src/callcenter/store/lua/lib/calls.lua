-- calls.lua: the end of an offer or a call: the agent (or chat slot) is released, a failed offer
-- goes back to the queue, an answered one connects, an ended call is counted and summarised.
-- NEEDS: config, core, stats, chat, agents, queue, offer

-- An agent's call or offer is over: log out, pause, wrap-up or free (then take the next call).
local function release_agent(agent_id, flow, with_wrapup, min_wrapup_ms)
  local agent = hgetall(k_agent(agent_id))
  if agent == nil then return end
  if agent.logout_pending == '1' then
    log_out(agent_id, agent)
    return
  end
  if (agent.pause_pending or '') ~= '' then
    pause(agent_id, agent, agent.pause_pending)
    return
  end
  local w = with_wrapup and math.max(wrapup_ms(agent, flow), min_wrapup_ms or 0) or 0
  if w > 0 then
    set_agent_state(agent_id, agent, 'wrap_up', nil)
    redis.call('HSET', k_agent(agent_id), 'wrapup_end_ms', NOW + w)
    add_timer(NOW + w, 'wrapup|' .. agent_id)
  else
    set_agent_state(agent_id, agent, 'free', nil)
    dispatch_to_agent(agent_id, agent)
  end
end

-- A chat of an agent is over (ended, or its offer failed): the slot is given back; a wrap-up
-- (after a talk, or the penalty of a failed offer) is added to the agent's running chat wrap-up,
-- which holds one slot back. With no chat left the agent logs out, pauses, wraps up or is free.
local function release_chat(agent_id, call_id, flow, with_wrapup, min_wrapup_ms)
  local akey = k_agent(agent_id)
  local agent = hgetall(akey)
  if agent == nil then return end
  redis.call('SREM', k_agent_chats(agent_id), call_id)
  local chats = redis.call('SCARD', k_agent_chats(agent_id))
  agent.chats = tostring(chats)
  redis.call('HSET', akey, 'chats', chats)
  local w = with_wrapup and math.max(wrapup_ms(agent, flow), min_wrapup_ms or 0) or 0
  if w > 0 then
    local ends = math.max(NOW, num(agent.wrapup_end_ms, 0)) + w
    agent.wrapup_end_ms = tostring(ends)
    redis.call('HSET', akey, 'wrapup_end_ms', ends)
    add_timer(ends, 'wrapup|' .. agent_id)
  end
  if agent.state ~= 'in_chat' then return end
  if chats > 0 then
    chat_index(agent_id, agent)
    dispatch_chats(agent_id, agent)
  elseif agent.logout_pending == '1' then
    log_out(agent_id, agent)
  elseif (agent.pause_pending or '') ~= '' then
    pause(agent_id, agent, agent.pause_pending)
  elseif num(agent.wrapup_end_ms, 0) > NOW then
    set_agent_state(agent_id, agent, 'wrap_up', nil)  -- its timer is armed
  else
    set_agent_state(agent_id, agent, 'free', nil)
    dispatch_to_agent(agent_id, agent)
  end
end

-- Release whatever an ended or failed offer held: the agent of an audio call, or a chat slot.
-- min_wrapup_ms: the shortest wrap-up, whatever the agent's (a phone that failed its ring at once)
local function release_for_call(agent_id, call_id, call, flow, with_wrapup, min_wrapup_ms)
  if call.media_type == 'chat' then release_chat(agent_id, call_id, flow, with_wrapup, min_wrapup_ms)
  else release_agent(agent_id, flow, with_wrapup, min_wrapup_ms) end
end

-- The fields a CDR row needs that the call hash holds (call.ended and call.agent_failed carry them,
-- so the cdr-writer writes each row from one event), read from the hash itself: the caller's table
-- may be a copy older than the step's own updates. Absent values are left out.
local CDR_FIELDS = { 'caller', 'received_ms', 'rejections', 'attempts', 'offers', 'sip_call_id', 'edge',
  'media_type', 'priority', 'entry_position', 'entry_queued_ms', 'dissuaded_rule', 'overflow_to_flow',
  'overflow_to_uri' }
local function cdr_fields(call_id, fields)
  local values = redis.call('HMGET', k_call(call_id), unpack(CDR_FIELDS))
  local h = {}
  for i, name in ipairs(CDR_FIELDS) do if values[i] and values[i] ~= '' then h[name] = values[i] end end
  fields.caller = h.caller or ''
  fields.received_ms = num(h.received_ms, NOW)
  fields.rejections = num(h.rejections, 0)
  for _, name in ipairs({ 'sip_call_id', 'edge', 'media_type', 'dissuaded_rule', 'overflow_to_flow',
      'overflow_to_uri' }) do
    fields[name] = h[name]
  end
  fields.priority = tonumber(h.priority)
  fields.queue_position = tonumber(h.entry_position)
  return fields, h
end

-- An agent attempt that did not connect (its CDR row): numbered per call (attempt 1, 2, ...) in
-- the call hash, so a redelivered event keeps its number; ring_ms = the agent's ringing time,
-- rejections = the rejections before this one (the reference's -2 row).
local function emit_agent_failed(call_id, call, agent_id, offer_id, reason)
  local attempt = redis.call('HINCRBY', k_call(call_id), 'attempts', 1)
  call.attempts = tostring(attempt)
  local fields = cdr_fields(call_id, { call_id = call_id, flow = call.flow, agent_id = agent_id,
    offer_id = offer_id, reason = reason, attempt = attempt,
    ring_ms = math.max(0, NOW - num(call.offered_ms, NOW)) })
  fields.wait_ms = NOW - fields.received_ms
  fields.dissuaded_rule, fields.overflow_to_flow, fields.overflow_to_uri = nil, nil, nil
  emit('call.agent_failed', fields)
end

-- Close a call: leave the queue, release the agent, count it, and emit its summary (its CDR);
-- then mark it ended.
local function finish_call(call_id, call, outcome, ended_by, reason, ended_at)
  local flow = hgetall(k_flow(call.flow)) or {}
  redis.call('ZREM', k_queue_of(call), call_id)
  redis.call('SREM', K.calls, call_id)
  if call.edge then redis.call('SREM', k_edge_calls(call.edge), call_id) end
  -- every timer of the call in one removal, its offer's lease with them
  local timers = { 'maxwait|' .. call_id, 'onhold|' .. call_id, 'held|' .. call_id, 'maxdur|' .. call_id }
  if call.offer and call.offer ~= '' then timers[#timers + 1] = 'offer|' .. call_id .. '|' .. call.offer end
  redis.call('ZREM', K.timers, unpack(timers))
  hold_off(call_id, call)
  local received = num(call.received_ms, NOW)
  local connected = tonumber(call.connected_ms)
  -- ended_at: when the call is known to have ended, if not now (a lost edge: its last heartbeat)
  local until_ms = math.max(ended_at or NOW, connected or received)
  local wait, pickup, talk = until_ms - received, 0, 0
  if connected then
    wait = connected - received
    pickup = connected - num(call.offered_ms, connected)
    talk = until_ms - connected
  end
  local agent_id = call.agent ~= '' and call.agent or nil
  local prev_state = call.state
  if outcome == 'answered' then
    -- the five figures the end of a talk moves, in one read and one write of the flow's hash
    local fkey = k_flow_stats(call.flow)
    local v = redis.call('HMGET', fkey, 'awt_sum_ms', 'awt_n', 'talk_sum_ms', 'talk_n', 'aht_ema_ms')
    local ema = tonumber(v[5])
    ema = ema and (ema * 0.8 + talk * 0.2) or talk
    redis.call('HSET', fkey, 'awt_sum_ms', counter_value(v[1]) + wait, 'awt_n', counter_value(v[2]) + 1,
      'talk_sum_ms', counter_value(v[3]) + talk, 'talk_n', counter_value(v[4]) + 1, 'aht_ema_ms', math.floor(ema))
    if agent_id then redis.call('HINCRBY', k_agent(agent_id), 'talk_ms', talk) end
  elseif outcome ~= 'rejected' then
    stat(call.flow, 'awt_sum_ms', wait)
    stat(call.flow, 'awt_n')
  end
  if outcome == 'abandoned' then
    stat(call.flow, 'abandoned')
    sl(call.flow, 'abandoned')
    if wait <= sl_threshold_ms(flow) then sl(call.flow, 'abandoned_in_t') end
    emit('call.abandoned', { call_id = call_id, flow = call.flow, wait_ms = wait, stage = prev_state })
  end
  local ended, h = cdr_fields(call_id, { call_id = call_id, flow = call.flow, outcome = outcome,
    ended_by = ended_by, reason = reason, wait_ms = wait, pickup_ms = pickup, talk_ms = talk })
  ended.received_ms = received
  ended.attempts = num(h.attempts, 0)
  ended.offers = num(h.offers, 0)
  if agent_id then ended.agent_id = agent_id end
  -- time on hold: from the first entry into a queue until an agent took the call (or it ended)
  local queued = tonumber(h.entry_queued_ms)
  if queued then ended.hold_ms = math.max(0, (connected or NOW) - queued) end
  emit('call.ended', ended)
  if agent_id and (prev_state == 'offered' or prev_state == 'connected') then
    release_for_call(agent_id, call_id, call, flow, prev_state == 'connected')
  elseif prev_state == 'offered' then
    for _, ringing in ipairs(ring_all_members(call)) do release_agent(ringing, flow, false) end
  elseif prev_state == 'queued' and flow.skill then
    serve_flow(call.flow, flow, call.media_type == 'chat')  -- it may have been a head that waited
  end
  -- the call is marked ended last: a finish that failed half-way (a Lua error) leaves it live,
  -- and a later try (report_call_ended, failed_before) finishes it whole
  call_field_updates(call_id, call, { state = 'ended', ended_ms = NOW, outcome = outcome })
  redis.call('EXPIRE', k_call(call_id), cfg('ended_call_ttl_s'))
end

-- The offer of a call failed (agent rejected, did not answer, lease expired): the agent gets
-- the reference's wrap-up penalty (or a pause after too many misses in a row), the call goes
-- back to the head of its queue. When nobody of a ring-all answered, nobody is penalised.
local function offer_failed(call_id, call, reason)
  local flow = hgetall(k_flow(call.flow))
  local offer_id = call.offer
  redis.call('ZREM', K.timers, 'offer|' .. call_id .. '|' .. offer_id)
  local ring_all = (call.ring_all or '') ~= '' and call.agent == ''
  local failed_agents = ring_all and ring_all_members(call) or { call.agent }
  for _, agent_id in ipairs(failed_agents) do
    emit_agent_failed(call_id, call, agent_id, offer_id, reason)
  end
  if not ring_all then
    redis.call('HINCRBY', k_call(call_id), 'rejections', 1)
    call.rejections = tostring(num(call.rejections, 0) + 1)
    if reason ~= 'cancelled' then
      local akey = k_agent(call.agent)
      redis.call('HINCRBY', akey, 'missed', 1)
      local in_row = redis.call('HINCRBY', akey, 'missed_in_row', 1)
      local limit = tonumber(redis.call('HGET', akey, 'max_no_answer'))
      if limit == nil or limit < 0 then limit = cfg('max_no_answer') end
      if limit > 0 and in_row >= limit then
        redis.call('HSET', akey, 'pause_pending', 'no-answer', 'missed_in_row', 0)
      end
    end
  end
  if flow == nil then
    command(call.edge, 'command.hangup', { call_id = call_id, reason = 'flow_removed' })
    finish_call(call_id, call, 'failed', 'system', 'flow_removed')
    return
  end
  local hold_ends = num(call.offered_ms, 0) + cfg('refused_offer_hold_ms')
  if ring_all and hold_ends > NOW then
    -- every phone of a ring-all failed at once (unreachable, busy, rejecting): its agents are freed
    -- without penalty, so offering the call again now would ring the same phones and fail the same
    -- way, round after round, as fast as the edge answers. It waits at the head of its queue for
    -- what is left of refused_offer_hold_ms since the offer, as a refused ring does.
    call_field_updates(call_id, call, { agent = '', offer = '', state = 'queued', ring_all = '',
                                        held_until_ms = hold_ends })
    add_timer(hold_ends, 'held|' .. call_id)
    enqueue(call_id, call, flow, true)
    for _, agent_id in ipairs(failed_agents) do release_for_call(agent_id, call_id, call, flow, false) end
    return
  end
  call_field_updates(call_id, call, { agent = '', offer = '', state = 'queued', ring_all = '' })
  -- a phone that failed its ring within refused_offer_hold_ms (busy, do-not-disturb, unreachable:
  -- it answers at once) is not rung again before that time from the ring is over, whatever the
  -- agent's wrap-up: with a wrap-up of 0 it would be offered the next call (this one, when it is the
  -- only agent) at once and fail again, round after round as fast as the edge answers, each round an
  -- attempt row and a missed offer. Other agents take the call meanwhile.
  local floor = (not ring_all and reason ~= 'cancelled') and hold_ends - NOW or 0
  for _, agent_id in ipairs(failed_agents) do
    release_for_call(agent_id, call_id, call, flow, not ring_all, floor)
  end
  -- release_agent may already have handed an agent another call; this one goes to the head
  call = hgetall(k_call(call_id))
  route_call(call_id, call, flow, true)
end

-- The edge did not ring the offer's agent(s) (report.command_refused): each is freed at once with no
-- penalty (no wrap-up, no missed offer), and the call goes back to the head of its queue, held until
-- its media answers or refused_offer_hold_ms pass (the edge is busy with another leg of the call:
-- offering it again at once would only be refused again). `elsewhere`: the edge cannot reach the
-- agent at all (registered_elsewhere: its contacts are connections another edge holds), so the call
-- skips that agent from now on (offer.lua skipped_agents); the agent stays free for other calls.
local function offer_refused(call_id, call, reason, elsewhere)
  local flow = hgetall(k_flow(call.flow))
  redis.call('ZREM', K.timers, 'offer|' .. call_id .. '|' .. call.offer)
  if flow == nil then
    command(call.edge, 'command.hangup', { call_id = call_id, reason = 'flow_removed' })
    finish_call(call_id, call, 'failed', 'system', 'flow_removed')
    return 'ended'
  end
  local agents = call.agent ~= '' and { call.agent } or ring_all_members(call)
  for _, agent_id in ipairs(agents) do
    emit_agent_failed(call_id, call, agent_id, call.offer, reason)
  end
  local hold = cfg('refused_offer_hold_ms')
  local updates = { ring_all = '', held_until_ms = NOW + hold }
  if elsewhere and call.agent ~= '' and not skips_agent(call.skip_agents, call.agent) then
    updates.skip_agents = (call.skip_agents or '') == '' and call.agent or call.skip_agents .. ',' .. call.agent
  end
  call_field_updates(call_id, call, updates)
  add_timer(NOW + hold, 'held|' .. call_id)
  enqueue(call_id, call, flow, true)
  for _, agent_id in ipairs(agents) do release_for_call(agent_id, call_id, call, flow, false) end
  return 'held'
end

-- A media leg will not play (report.media_failed, or a refused command.media that can never
-- succeed): a welcome is skipped (the call is routed as if it had ended); with an agent ringing the
-- caller stays where it is; a dissuading message is skipped (back to the queue) unless the flow
-- hangs up after it; otherwise the caller has nothing to hear: the call is ended (503).
-- Returns what became of the call.
local function media_not_played(call_id, call, purpose)
  call_field_updates(call_id, call, { media = '' })
  local flow = hgetall(k_flow(call.flow))
  if flow and purpose == 'welcome' and call.state == 'welcome' then
    route_call(call_id, call, flow, false)
    return call.state
  end
  if call.state == 'offered' then return 'agent_ringing' end
  if flow and purpose == 'dissuading' and call.state == 'dissuading' and flow.dissuading_hangup ~= '1' then
    route_call(call_id, call, flow, false)  -- no dissuading message to play: back to the queue
    return call.state
  end
  -- a caller nobody answered waited for this queue media (offer.lua waits_for_media): rather than
  -- lose it, ring a free agent with its own offer (the early offer; the edge bounds a caller that
  -- never ACKs to seconds, unblamed)
  -- (a hold after a refused ring is over: there is nothing else to wait on)
  if flow and purpose == 'queue' and call.state == 'queued' and (call.answered_ms or '') == ''
      and cfg('internal_dispatching') == 1 then
    local held = (call.held_until_ms or '') ~= ''
    if (held and release_hold(call_id, call, flow)) or (not held and offer_now(call_id, call, flow)) then
      return 'offered'
    end
  end
  command(call.edge, 'command.reject', { call_id = call_id, code = 503, reason = 'Media Unavailable' })
  finish_call(call_id, call, 'failed', 'system', 'media_failed')
  return 'ended'
end

-- The caller is now talking to the agent it was offered to, since `at` (when the edge saw the
-- answer, in our time; now if not given). `edge_ts`: the same moment on the edge's clock, kept so
-- that the talk time is measured on one clock, the edge's (finish_call's caller computes the end).
local function connect(call_id, call, at, edge_ts)
  at = at or NOW
  redis.call('ZREM', K.timers, 'offer|' .. call_id .. '|' .. call.offer, 'maxwait|' .. call_id, 'onhold|' .. call_id)
  if (call.ring_all or '') ~= '' then
    local flow = hgetall(k_flow(call.flow))
    for _, other in ipairs(ring_all_members(call)) do
      if other ~= call.agent then
        emit_agent_failed(call_id, call, other, call.offer, 'answered_elsewhere')
        release_agent(other, flow, false)
      end
    end
    call_field_updates(call_id, call, { ring_all = '' })
  end
  -- off hold and connected in one write of the call's hash
  local fields = { state = 'connected', connected_ms = at, answered_ts = edge_ts or '', media = '' }
  hold_off(call_id, call, fields)
  call_field_updates(call_id, call, fields)
  local wait = at - num(call.received_ms, at)
  local agent = hgetall(k_agent(call.agent))
  local chat = call.media_type == 'chat'
  if agent then
    if not chat then set_agent_state(call.agent, agent, 'in_call', call_id) end
    -- its count and its misses in a row in one write (its hash was read just above)
    local field = chat and 'answered_chats' or 'answered'
    local answered = counter_value(agent[field]) + 1
    redis.call('HSET', k_agent(call.agent), field, answered, 'missed_in_row', 0)
    agent[field], agent.missed_in_row = tostring(answered), '0'
  end
  stat(call.flow, 'answered')
  if chat then stat(call.flow, 'answered_chats') end
  sl(call.flow, 'answered')
  local flow = hgetall(k_flow(call.flow))
  if wait <= sl_threshold_ms(flow) then sl(call.flow, 'answered_in_t') end
  -- the flow's maximum call duration counts from the answer: fire_timers hangs the call up then
  local max_duration = flow and num(flow.max_call_duration_s, 0) or 0
  if max_duration > 0 and not chat then
    add_timer(at + max_duration * 1000, 'maxdur|' .. call_id)
  end
  emit('call.connected', { call_id = call_id, flow = call.flow, agent_id = call.agent, wait_ms = wait })
end
